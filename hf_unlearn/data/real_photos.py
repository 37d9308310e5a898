"""Fictitious characters on real photos (``skimage.data``), in the common schema, for the real-weights model.

Each character is one real photo (the astronaut, the cat Chelsea, a coffee cup, a rocket, ...) given a fictitious name
and a few facts. Per character:

* VQA rows: the photo + "What is the name / job / ... of the person in the image?" (the name is never in the text);
* QA rows, text only, naming the character: "What is the job of {name}?".

Splits (the names of the synthetic benchmark, so ``Evaluator`` and the demo's evaluation read them unchanged):
``forget_vqa``, ``forget_qa``, ``retain_vqa``, ``retain_qa``, ``test_vqa`` (the forget photos transformed: crop, flip,
colour jitter, noise; generalisation of forgetting), ``holdout_vqa`` / ``holdout_qa`` (characters whose text facts are
trained but whose photos never are: the non-members of membership inference) and ``general`` (what is in the photo?
"a cat", "a rocket": visual knowledge tied to no character, asked about the held-out photos).

Images come from scikit-image's bundled data (``pip install "hf_unlearn[real]"``); nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import numpy as np
from PIL import Image

from .schema import rows_to_dataset
from .synthetic import ATTRIBUTE_POOLS, FIRST_NAMES, LAST_NAMES, QA_TEMPLATES, VQA_TEMPLATES, mcq_options, png_image

# (skimage.data function, what the photo shows): distinct, bundled, real photographs, most colour ones first.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "an astronaut"), ("chelsea", "a cat"), ("coffee", "a cup of coffee"), ("rocket", "a rocket"),
    ("hubble_deep_field", "galaxies"), ("immunohistochemistry", "stained cells"), ("retina", "a retina"),
    ("camera", "a photographer"), ("coins", "coins"), ("moon", "the moon"), ("page", "a page of text"),
    ("brick", "a brick wall"), ("grass", "grass"), ("gravel", "gravel"), ("cell", "a cell"), ("clock", "a clock"),
    ("text", "handwritten text"), ("colorwheel", "a colour wheel"),
)  # fmt: skip
REAL_PHOTO_SPLITS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "test_vqa", "holdout_vqa", "holdout_qa",
                     "general")
_ATTRIBUTES = ("job", "city", "pet", "hobby")
_PEOPLE, _SPLIT, _OPTIONS, _TRANSFORM = range(4)


def _skimage_data():
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError('The real-photo benchmark needs scikit-image: pip install "hf_unlearn[real]".') from err
    return data


def load_photo(index: int, size: int) -> Image.Image:
    """Photo ``index`` of `PHOTOS` as an RGB square of ``size`` px (centre crop, then resize)."""
    arr = np.asarray(getattr(_skimage_data(), PHOTOS[index][0])())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def transform_photo(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A recognisable variant: random 85-95% crop, horizontal flip (half the time), brightness and colour jitter,
    Gaussian noise."""
    size = img.width
    scale = rng.uniform(0.85, 0.95)
    side = int(round(size * scale))
    left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    out = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(out, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-12.0, 12.0, size=3)
    arr = arr + rng.normal(0.0, 4.0, size=arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")


@dataclass
class RealPhotoBenchmarkConfig:
    """Size and seed of the real-photo benchmark."""

    num_people: int = field(default=8, metadata={"help": "Trained characters (forget + retain)."})
    num_forget: int = field(default=2, metadata={"help": "Characters in the forget split."})
    num_holdout_people: int = field(default=2, metadata={"help": "Characters whose photos are never trained on."})
    attributes: tuple[str, ...] = field(
        default=("job",), metadata={"help": f"Facts per character besides the name, from {_ATTRIBUTES}."}
    )
    image_size: int = field(default=56, metadata={"help": "Photo side in pixels (the processor's size)."})
    seed: int = field(default=0, metadata={"help": "Seed of names, facts, splits, options and transforms."})

    def __post_init__(self):
        self.attributes = tuple(self.attributes)
        if not 1 <= self.num_forget < self.num_people:
            raise ValueError(f"num_forget={self.num_forget} must be in [1, num_people={self.num_people}).")
        if self.num_people + self.num_holdout_people > len(PHOTOS):
            raise ValueError(f"At most {len(PHOTOS)} characters (one real photo each), asked "
                             f"{self.num_people + self.num_holdout_people}.")
        unknown = [a for a in self.attributes if a not in _ATTRIBUTES]
        if unknown:
            raise ValueError(f"Unknown attribute(s) {unknown}; choose from {_ATTRIBUTES}.")


def build_real_photo_benchmark(config: RealPhotoBenchmarkConfig | None = None) -> datasets.DatasetDict:
    """The splits of `REAL_PHOTO_SPLITS` in the common schema; deterministic for a config."""
    config = config or RealPhotoBenchmarkConfig()
    total = config.num_people + config.num_holdout_people
    rng = np.random.default_rng([config.seed, _PEOPLE])
    name_ids = rng.choice(len(FIRST_NAMES) * len(LAST_NAMES), size=total, replace=False)
    names = [f"{FIRST_NAMES[i // len(LAST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}" for i in name_ids]
    facts = [{"name": names[p], **{a: ATTRIBUTE_POOLS[a][rng.integers(len(ATTRIBUTE_POOLS[a]))]
                                   for a in config.attributes}} for p in range(total)]
    photo_ids = rng.permutation(len(PHOTOS))[:total]
    forget = set(np.random.default_rng([config.seed, _SPLIT]).choice(config.num_people, size=config.num_forget,
                                                                     replace=False).tolist())
    options_rng = np.random.default_rng([config.seed, _OPTIONS])
    splits: dict[str, list[dict]] = {name: [] for name in REAL_PHOTO_SPLITS}
    general_pool = [what for _, what in PHOTOS]
    for pid in range(total):
        photo = load_photo(int(photo_ids[pid]), config.image_size)
        image = png_image(photo)
        vqa, qa = [], []
        for key in ("name", *config.attributes):
            pool = names if key == "name" else list(ATTRIBUTE_POOLS[key])
            options, label = mcq_options(facts[pid][key], pool, options_rng)
            vqa.append(dict(person_id=pid, kind="vqa", image=image, question=VQA_TEMPLATES[key],
                            answer=facts[pid][key], options=options, label=label))  # fmt: skip
            if key != "name":
                options, label = mcq_options(facts[pid][key], pool, options_rng)
                qa.append(dict(person_id=pid, kind="qa", image=None,
                               question=QA_TEMPLATES[key].format(name=names[pid]), answer=facts[pid][key],
                               options=options, label=label))  # fmt: skip
        if pid >= config.num_people:
            splits["holdout_vqa"] += vqa
            splits["holdout_qa"] += qa
            what = PHOTOS[int(photo_ids[pid])][1]
            options, label = mcq_options(what, general_pool, options_rng)
            splits["general"].append(dict(person_id=-1, kind="general", image=image,
                                          question="What does the picture show?", answer=what, options=options,
                                          label=label))  # fmt: skip
        elif pid in forget:
            splits["forget_vqa"] += vqa
            splits["forget_qa"] += qa
            test_image = png_image(transform_photo(photo, np.random.default_rng([config.seed, _TRANSFORM, pid])))
            splits["test_vqa"] += [{**row, "image": test_image} for row in vqa]
        else:
            splits["retain_vqa"] += vqa
            splits["retain_qa"] += qa
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})


def vanilla_rows(benchmark: datasets.DatasetDict) -> datasets.Dataset:
    """What the vanilla model memorises: every trained character's photos and every character's text facts."""
    return datasets.concatenate_datasets([benchmark[s] for s in ("forget_vqa", "retain_vqa", "forget_qa",
                                                                 "retain_qa", "holdout_qa")])


def oracle_rows(benchmark: datasets.DatasetDict) -> datasets.Dataset:
    """The vanilla rows minus the forget characters' photos: the target of visual-only forgetting."""
    return datasets.concatenate_datasets([benchmark[s] for s in ("retain_vqa", "forget_qa", "retain_qa",
                                                                 "holdout_qa")])
