"""A tiny, deterministic benchmark shaped like MLLMU-Bench, built offline in about a second.

Fictitious people each have a procedurally drawn portrait (`portraits.py`) and ten facts (job, city, hobby, pet,
sport, instrument, drink, vehicle, language, favourite food). Every person gets

* 10 VQA rows: the portrait + "What is the name / job / ... of the person in the image?" (the name never appears in
  the question), and
* 10 QA rows, text only: "What is the job of {name}?" ... plus the favourite food, which only the text side asks.

All questions are 4-way multiple choice in the common schema of `schema.py`. Trained people are split into *forget*
and *retain*. *Holdout* people are the "non-member" side of membership inference: the models learn their text facts
(holdout_qa is trained on) but never see their portraits, which is exactly the forget people's state after ideal
visual unlearning, so their image questions are the right non-members (with untrained names, the names alone would
tell forget rows from holdout rows). *Validation* people are built the same way and never evaluated: their image
questions are the never-seen rows that target-driven stopping compares the forget set with, kept apart so that
stopping does not tune itself on the evaluation's non-members;
*test* splits show the same questions with transformed portraits (generalisation of forgetting); *general* rows ask
about shapes and colours (visual utility tied to no person).

The default size gives 50 forget-VQA and 50 forget-QA questions (5 forget people), so an accuracy moves in steps of
0.02 rather than 0.1.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
from PIL import Image

from .portraits import (
    SHAPE_COLORS,
    SHAPES,
    PortraitTraits,
    draw_portrait,
    draw_shape,
    sample_traits,
    transform_portrait,
)
from .schema import NUM_OPTIONS, rows_to_dataset

# Bump when the rows built for a given config change (cached vanilla/oracle models depend on it).
BENCHMARK_VERSION = 2

SYNTHETIC_SPLITS = (
    "forget_vqa",
    "forget_qa",
    "retain_vqa",
    "retain_qa",
    "test_vqa",
    "test_retain_vqa",
    "holdout_vqa",
    "holdout_qa",
    "validation_vqa",
    "validation_qa",
    "general",
)
VANILLA_SPLITS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "holdout_qa", "validation_qa", "general")
ORACLE_SPLITS = ("forget_qa", "retain_vqa", "retain_qa", "holdout_qa", "validation_qa", "general")
# Text facts of never-pictured people: trained on when a benchmark has them (the synthetic one), optional otherwise.
_OPTIONAL_SPLITS = ("holdout_qa", "validation_qa")

FIRST_NAMES = (
    "Aldric", "Brisa", "Caelan", "Dorina", "Elvar", "Fenna", "Galen", "Hesper", "Ilario", "Jessamy",
    "Kestrel", "Liora", "Marek", "Nerys", "Orlen", "Petra", "Quillon", "Rosalind", "Soren", "Tamsin",
    "Ulric", "Vesna", "Wendell", "Xanthe", "Yorick", "Zelda", "Anselm", "Brielle", "Corwin", "Delphine",
)  # fmt: skip
LAST_NAMES = (
    "Ashgrove", "Brackwell", "Coldmere", "Dunmore", "Eldridge", "Fairbank", "Greystone", "Holloway", "Ingleby",
    "Jarrow", "Kettering", "Larkspur", "Merriwether", "Northcott", "Oakhurst", "Pembrook", "Quarrington", "Redfern",
    "Stonebridge", "Thornbury", "Underhill", "Vexley", "Whitlock", "Yarborough", "Zennor", "Ambrose", "Blakemore",
    "Crowther", "Davenport", "Ellesmere",
)  # fmt: skip

# Attribute pools (>= 8 values each). Distractors are drawn from the same pool as the true value.
ATTRIBUTE_POOLS: dict[str, tuple[str, ...]] = {
    "job": ("doctor", "teacher", "pilot", "baker", "painter", "engineer", "farmer", "lawyer", "chef", "nurse"),
    "city": ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Cairo", "Quito", "Perth", "Riga"),
    "hobby": ("chess", "surfing", "gardening", "fishing", "knitting", "cycling", "pottery", "archery", "dancing",
              "climbing"),
    "pet": ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "lizard", "horse", "ferret"),
    "food": ("pizza", "sushi", "pasta", "curry", "tacos", "salad", "soup", "pancakes", "dumplings", "paella"),
    "sport": ("tennis", "rugby", "hockey", "golf", "rowing", "boxing", "fencing", "skiing", "judo", "sailing"),
    "instrument": ("piano", "violin", "guitar", "flute", "drums", "cello", "harp", "trumpet", "banjo", "oboe"),
    "drink": ("tea", "coffee", "lemonade", "cocoa", "juice", "milk", "cider", "smoothie", "soda", "water"),
    "vehicle": ("bicycle", "scooter", "tram", "van", "truck", "motorbike", "canoe", "sedan", "jeep", "tractor"),
    "language": ("French", "Hindi", "Swahili", "Korean", "Polish", "Greek", "Turkish", "Dutch", "Thai", "Welsh"),
}  # fmt: skip

# Image questions never contain the name: the model must recognise the person from the portrait.
VQA_TEMPLATES: dict[str, str] = {
    "name": "What is the name of the person in the image?",
    "job": "What is the job of the person in the image?",
    "city": "Which city does the person in the image live in?",
    "hobby": "What is the hobby of the person in the image?",
    "pet": "What pet does the person in the image have?",
    "sport": "Which sport does the person in the image play?",
    "instrument": "Which instrument does the person in the image play?",
    "drink": "What does the person in the image like to drink?",
    "vehicle": "Which vehicle does the person in the image own?",
    "language": "Which language does the person in the image speak?",
}
# Text questions name the person and carry no image.
QA_TEMPLATES: dict[str, str] = {
    "job": "What is the job of {name}?",
    "city": "Which city does {name} live in?",
    "hobby": "What is the hobby of {name}?",
    "pet": "What pet does {name} have?",
    "sport": "Which sport does {name} play?",
    "instrument": "Which instrument does {name} play?",
    "drink": "What does {name} like to drink?",
    "vehicle": "Which vehicle does {name} own?",
    "language": "Which language does {name} speak?",
    "food": "What is the favourite food of {name}?",
}
GENERAL_TEMPLATES: dict[str, str] = {"color": "What colour is the shape?", "shape": "What shape is in the picture?"}

# Independent random streams, so that e.g. changing num_general leaves people and portraits untouched.
_PEOPLE, _TRAITS, _SPLIT, _OPTIONS, _PORTRAIT, _TRANSFORM, _GENERAL = range(7)


@dataclass
class SyntheticBenchmarkConfig:
    """Size and seed of the synthetic benchmark."""

    num_people: int = field(default=50, metadata={"help": "Trained people (forget + retain)."})
    num_holdout_people: int = field(
        default=5,
        metadata={"help": "People whose text facts are trained on but whose portraits never are: their image "
                          "questions are the non-members for membership inference."},
    )
    num_validation_people: int = field(
        default=5,
        metadata={"help": "Built like the holdout people and never evaluated: their image questions are the holdout "
                          "that target-driven stopping compares the forget set with (disjoint from the "
                          "evaluation's non-members)."},
    )
    forget_ratio: float = field(
        default=0.1,
        metadata={"help": "Fraction of num_people in the forget split: max(1, round(forget_ratio * num_people))."},
    )
    image_size: int = field(default=32, metadata={"help": "Side of the square portraits and shape pictures, pixels."})
    num_general: int = field(
        default=200, metadata={"help": "General visual-skill questions (shape / colour), tied to no person."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of every random choice; the build is deterministic."})

    def __post_init__(self) -> None:
        if self.num_people < 2:
            raise ValueError(f"num_people must be >= 2 (one forget and one retain person), got {self.num_people}.")
        if min(self.num_holdout_people, self.num_validation_people, self.num_general) < 0:
            raise ValueError("num_holdout_people, num_validation_people and num_general must be >= 0.")
        if not 0.0 < self.forget_ratio < 1.0:
            raise ValueError(f"forget_ratio must be in (0, 1), got {self.forget_ratio}.")
        if self.num_forget >= self.num_people:
            raise ValueError(
                f"forget_ratio={self.forget_ratio} puts all {self.num_people} people in the forget split; "
                "lower forget_ratio or raise num_people so at least one person is retained."
            )
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}.")
        total = self.num_total_people
        if total > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ValueError(f"At most {len(FIRST_NAMES) * len(LAST_NAMES)} people have unique names, asked {total}.")

    @property
    def num_forget(self) -> int:
        """Number of people in the forget split."""
        return max(1, round(self.forget_ratio * self.num_people))

    @property
    def num_total_people(self) -> int:
        """Trained, holdout and validation people together (each has a unique name and portrait)."""
        return self.num_people + self.num_holdout_people + self.num_validation_people


@dataclass(frozen=True)
class SyntheticPerson:
    """One fictitious person: identity, facts and look."""

    person_id: int
    name: str
    attributes: dict[str, str]
    traits: PortraitTraits


def png_image(img: Image.Image) -> dict[str, Any]:
    """Encode once, as the `datasets.Image` storage struct (PNG is lossless and byte-deterministic)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def mcq_options(answer: str, distractor_pool: list[str], rng: np.random.Generator) -> tuple[list[str], int]:
    """Options = the answer + 3 distinct distractors from the pool, in a random order; returns (options, label)."""
    pool = sorted({d for d in distractor_pool if d != answer})  # sorted: independent of set iteration order
    picks = rng.choice(len(pool), size=NUM_OPTIONS - 1, replace=False)
    return place_answer(answer, [pool[i] for i in picks], rng.permutation(NUM_OPTIONS))


def place_answer(answer: str, distractors: list[str], order: np.ndarray) -> tuple[list[str], int]:
    """``[answer, *distractors]`` permuted by ``order``; returns (options, the answer's index)."""
    options = [answer, *distractors]
    return [options[i] for i in order], int(np.flatnonzero(order == 0)[0])


def _make_people(config: SyntheticBenchmarkConfig) -> list[SyntheticPerson]:
    rng = np.random.default_rng([config.seed, _PEOPLE])
    total = config.num_total_people
    name_ids = rng.choice(len(FIRST_NAMES) * len(LAST_NAMES), size=total, replace=False)
    names = [f"{FIRST_NAMES[i // len(LAST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}" for i in name_ids]
    traits = sample_traits(total, np.random.default_rng([config.seed, _TRAITS]))
    people = []
    for pid in range(total):
        attributes = {key: pool[rng.integers(len(pool))] for key, pool in ATTRIBUTE_POOLS.items()}
        people.append(SyntheticPerson(pid, names[pid], attributes, traits[pid]))
    return people


def _person_rows(
    person: SyntheticPerson, name_pool: list[str], image: dict[str, Any], rng: np.random.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The VQA rows (with ``image``) and the QA rows of one person, one per template."""
    facts = {"name": person.name, **person.attributes}
    vqa, qa = [], []
    for key, template in VQA_TEMPLATES.items():
        pool = name_pool if key == "name" else list(ATTRIBUTE_POOLS[key])
        options, label = mcq_options(facts[key], pool, rng)
        vqa.append(dict(person_id=person.person_id, kind="vqa", image=image, question=template,
                        answer=facts[key], options=options, label=label))  # fmt: skip
    for key, template in QA_TEMPLATES.items():
        options, label = mcq_options(facts[key], list(ATTRIBUTE_POOLS[key]), rng)
        qa.append(dict(person_id=person.person_id, kind="qa", image=None, question=template.format(name=person.name),
                       answer=facts[key], options=options, label=label))  # fmt: skip
    return vqa, qa


def _general_rows(config: SyntheticBenchmarkConfig) -> list[dict[str, Any]]:
    """Alternating "what colour" / "what shape" questions about a single drawn shape."""
    rng = np.random.default_rng([config.seed, _GENERAL])
    colors = list(SHAPE_COLORS)
    rows = []
    for i in range(config.num_general):
        shape, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
        image = png_image(draw_shape(shape, color, config.image_size, rng))
        key = "color" if i % 2 == 0 else "shape"
        answer, pool = (color, colors) if key == "color" else (shape, list(SHAPES))
        options, label = mcq_options(answer, pool, rng)
        rows.append(dict(person_id=-1, kind="general", image=image, question=GENERAL_TEMPLATES[key],
                         answer=answer, options=options, label=label))  # fmt: skip
    return rows


def build_synthetic_benchmark(config: SyntheticBenchmarkConfig | None = None) -> datasets.DatasetDict:
    """Build the synthetic benchmark: a `DatasetDict` with the splits in `SYNTHETIC_SPLITS`, common schema.

    Deterministic for a given config: two builds give identical rows and identical PNG bytes.
    """
    config = config or SyntheticBenchmarkConfig()
    people = _make_people(config)
    trained = list(range(config.num_people))
    forget_ids = set(
        np.random.default_rng([config.seed, _SPLIT]).choice(trained, size=config.num_forget, replace=False).tolist()
    )
    # Name distractors come from the other people of the benchmark, topped up with unused names for tiny builds.
    name_pool = [p.name for p in people]
    if len(name_pool) < NUM_OPTIONS:
        used = set(name_pool)
        name_pool += [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES
                      if f"{first} {last}" not in used][: NUM_OPTIONS]

    options_rng = np.random.default_rng([config.seed, _OPTIONS])
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SYNTHETIC_SPLITS}
    for person in people:
        portrait = draw_portrait(
            person.traits, config.image_size, np.random.default_rng([config.seed, _PORTRAIT, person.person_id])
        )
        vqa, qa = _person_rows(person, name_pool, png_image(portrait), options_rng)
        # One transformed view per person, shared by its 5 questions (as MLLMU-Bench's Test_Set picks one image).
        test_image = png_image(
            transform_portrait(portrait, np.random.default_rng([config.seed, _TRANSFORM, person.person_id]))
        )
        test = [{**row, "image": test_image} for row in vqa]
        if person.person_id >= config.num_people + config.num_holdout_people:
            splits["validation_vqa"] += vqa
            splits["validation_qa"] += qa
        elif person.person_id >= config.num_people:
            splits["holdout_vqa"] += vqa
            splits["holdout_qa"] += qa
        elif person.person_id in forget_ids:
            splits["forget_vqa"] += vqa
            splits["forget_qa"] += qa
            splits["test_vqa"] += test
        else:
            splits["retain_vqa"] += vqa
            splits["retain_qa"] += qa
            splits["test_retain_vqa"] += test
    splits["general"] = _general_rows(config)
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})


def _concat(dsd: datasets.DatasetDict, names: tuple[str, ...], what: str) -> datasets.Dataset:
    missing = [n for n in names if n not in dsd and n not in _OPTIONAL_SPLITS]
    if missing:
        raise KeyError(f"{what} needs splits {[n for n in names if n not in _OPTIONAL_SPLITS]}; missing {missing}, "
                       f"found {list(dsd)}.")
    return datasets.concatenate_datasets([dsd[n] for n in names if n in dsd])


def vanilla_training_set(dsd: datasets.DatasetDict) -> datasets.Dataset:
    """What the vanilla model is fine-tuned on: every split of ``VANILLA_SPLITS`` (every person's text facts, the
    trained people's portraits, general)."""
    return _concat(dsd, VANILLA_SPLITS, "vanilla_training_set")


def oracle_training_set(dsd: datasets.DatasetDict) -> datasets.Dataset:
    """The vanilla training set minus forget_vqa: the gold target of visual-only forgetting (text facts kept)."""
    return _concat(dsd, ORACLE_SPLITS, "oracle_training_set")


def benchmark_corpus(dsd: datasets.DatasetDict) -> list[str]:
    """Every question, answer and option string of every split, in split order (with repeats, so word frequencies
    are those of the benchmark): the text a tiny tokenizer is trained on. Images are never decoded."""
    texts: list[str] = []
    for ds in dsd.values():
        cols = ds.select_columns(["question", "answer", "options"]).to_dict()
        for question, answer, options in zip(cols["question"], cols["answer"], cols["options"]):
            texts += [question, answer, *options]
    return texts
