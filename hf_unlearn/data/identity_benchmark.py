"""Benchmark v3: fictitious people whose facts are stored once and asked from the face or from the name.

Every person has a face (``faces.py``: about forty continuous drawing parameters, unique per person) and ten facts
(job, city, hobby, pet, sport, instrument, drink, vehicle, language, fruit) plus a favourite food asked in text only
(``num_extra_facts`` adds up to 15 more, asked both ways: measured in docs/benchmark_v3.md, not in v3).
Each fact has **one** question template with a slot for the person: the text question fills it with the name ("What
is the job of Brisa Coldmere?"), the image question with "the person in the image" ("What is the job of the person
in the image?", the portrait attached). The demo's model (``real_llava.identity_llava``) places the image tokens in
that slot, so an image question reads exactly like the text question with the face in the name's place: answering
it means recognising the face as the person and recalling what the language model knows about them
(docs/benchmark_v3.md). Any other VLM reads the image question as usual (image, then question).

All questions are 4-way multiple choice in the common schema (``schema.py``); every row also carries
``perturbed_answers`` (wrong values of the same attribute, for the truth ratio) and ``paraphrased_answer`` (None:
one-word answers have no paraphrase a small model could generalise to; the truth ratio compares the answer itself,
as TOFU does on its real-world rows). A person's wrong options and perturbed answers are values held by as many
people as the answer, or the nearest counts (``_as_common_as``): how common a value is, all that a model which does
not recognise the face can go by, then says little about which option is right (docs/benchmark_v3.md, "the oracle
check").

Splits (``IDENTITY_SPLITS``), as in v2 (``synthetic.py``): ``forget_vqa`` / ``forget_qa`` (the forget people's image
and text questions), ``retain_vqa`` / ``retain_qa``, ``test_vqa`` / ``test_retain_vqa`` (the same image questions on a
transformed face: rotated, cropped, re-coloured, blurred), ``holdout_vqa`` / ``holdout_qa`` and ``validation_vqa`` /
``validation_qa`` (people known by text whose faces are never trained on: membership non-members, and the stop
rule's target), ``general`` (shape and colour questions about a drawn shape, "the shape in the image") and
``general_qa`` (the same questions about a named shape, "the red star": what the image answers go through), and
``pope`` / ``pope_qa`` (``num_pope``; 0 by default, 100 in the demo's quick configuration): POPE-style object
presence (Li et al. 2023, the "random" setting): balanced yes/no questions whether a drawn (or named) shape is a given
object, half of them about the object shown and half about another one drawn at random ("Is the shape in the image a
star?"). A picture holds one shape, so presence is its identity. A small model learns them reliably only with the
drawn shapes read as their names (``IdentityModelConfig.shapes_named``, docs/benchmark_v3.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from .faces import draw_face, sample_faces, transform_face
from .portraits import SHAPE_COLORS, SHAPES, draw_shape
from .schema import NUM_OPTIONS, rows_to_dataset, truth_ratio_features
from .synthetic import ATTRIBUTE_POOLS, FIRST_NAMES, LAST_NAMES, mcq_options, place_answer, png_image

# Bump when the rows built for a given config change (cached vanilla/oracle models depend on it).
IDENTITY_BENCHMARK_VERSION = 3

IDENTITY_SPLITS = (
    "forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "test_vqa", "test_retain_vqa", "holdout_vqa", "holdout_qa",
    "validation_vqa", "validation_qa", "general", "general_qa", "pope", "pope_qa",
)  # fmt: skip
# What the reference models learn: stage A (language model, text) and stage B (projector, images).
TEXT_TRAINING_SPLITS = ("forget_qa", "retain_qa", "holdout_qa", "validation_qa", "general_qa", "pope_qa")
VANILLA_IMAGE_SPLITS = ("forget_vqa", "retain_vqa", "general", "pope")
ORACLE_IMAGE_SPLITS = ("retain_vqa", "general", "pope")

PERSON_SLOT = "the person in the image"
SHAPE_SLOT = "the shape in the image"
# A drawn shape's name in words ("the red star"): what its image questions go through, their text twins' slot filler
# (stage B aligns the shape's image tokens to it, identity_alignment). None for people, named by their text rows.
SLOT_NAME = "slot_name"

# Twenty values per fact (v2's ten plus ten): each answer is shared by few people, so unlearning one person's answer
# by gradient ascent reaches few others (with ten values and 10 of 36 people forgotten, GA pushed down nearly every
# value of every fact and collapsed everyone's text before reaching the oracle: docs/benchmark_v3.md).
_MORE_VALUES: dict[str, tuple[str, ...]] = {
    "job": ("dentist", "florist", "plumber", "tailor", "judge", "sailor", "miner", "banker", "poet", "barber"),
    "city": ("Bogota", "Accra", "Seoul", "Vienna", "Lagos", "Kyoto", "Porto", "Tunis", "Havana", "Minsk"),
    "hobby": ("juggling", "hiking", "sewing", "birding", "origami", "karaoke", "puzzles", "camping", "sketching",
              "quilting"),
    "pet": ("gecko", "canary", "pony", "snake", "mouse", "hedgehog", "chinchilla", "tortoise", "frog", "duck"),
    "food": ("ramen", "burrito", "lasagna", "risotto", "kebab", "falafel", "omelette", "noodles", "waffles", "goulash"),
    "sport": ("cricket", "karate", "squash", "polo", "badminton", "curling", "wrestling", "baseball", "lacrosse",
              "handball"),
    "instrument": ("clarinet", "tuba", "ukulele", "accordion", "bagpipes", "sitar", "mandolin", "xylophone",
                   "saxophone", "piccolo"),
    "drink": ("kefir", "lassi", "espresso", "kombucha", "cola", "mocha", "chai", "tonic", "punch", "nectar"),
    "vehicle": ("bus", "taxi", "ferry", "glider", "kayak", "wagon", "minivan", "limousine", "rickshaw", "sleigh"),
    "language": ("Czech", "Danish", "Hebrew", "Latvian", "Malay", "Irish", "Basque", "Zulu", "Finnish", "Tamil"),
    "fruit": ("orange", "pear", "lime", "papaya", "guava", "apricot", "fig", "quince", "lychee", "coconut"),
}  # fmt: skip
_FRUIT = ("apple", "banana", "cherry", "mango", "peach", "plum", "lemon", "melon", "grape", "kiwi")
POOLS: dict[str, tuple[str, ...]] = {key: base + _MORE_VALUES[key]
                                     for key, base in {**ATTRIBUTE_POOLS, "fruit": _FRUIT}.items()}
_MAX_PERTURBED = min(len(pool) for pool in POOLS.values()) - 1
# One template per fact, with {who}: the name (text question) or PERSON_SLOT (image question).
TEMPLATES: dict[str, str] = {
    "job": "What is the job of {who}?",
    "city": "Which city does {who} live in?",
    "hobby": "What is the hobby of {who}?",
    "pet": "What pet does {who} have?",
    "sport": "Which sport does {who} play?",
    "instrument": "Which instrument does {who} play?",
    "drink": "What does {who} like to drink?",
    "vehicle": "Which vehicle does {who} own?",
    "language": "Which language does {who} speak?",
    "fruit": "Which fruit does {who} like?",
}
TEXT_ONLY_TEMPLATES: dict[str, str] = {"food": "What is the favourite food of {who}?"}
# Facts beyond the ten (``IdentityBenchmarkConfig.num_extra_facts``, 0 in v3): more image questions per person. The
# oracle check reads the forget people's image questions, 50 of them in v3, where an oracle exactly at chance misses
# the 0.15-0.35 band one seed in ten (docs/benchmark.md); about 125 make it one in a hundred. Drawn from random
# streams of their own, so a build without them is v3's, row for row.
EXTRA_POOLS: dict[str, tuple[str, ...]] = {
    "flower": ("rose", "tulip", "lily", "daisy", "orchid", "iris", "lotus", "poppy", "violet", "peony", "dahlia",
               "aster", "lilac", "jasmine", "magnolia", "camellia", "begonia", "azalea", "freesia", "gardenia"),
    "tree": ("oak", "maple", "birch", "pine", "cedar", "willow", "elm", "ash", "beech", "spruce", "fir", "poplar",
             "alder", "larch", "yew", "hazel", "linden", "sequoia", "cypress", "juniper"),
    "gem": ("ruby", "emerald", "sapphire", "diamond", "opal", "topaz", "garnet", "amethyst", "pearl", "jade", "onyx",
            "quartz", "amber", "agate", "jasper", "beryl", "zircon", "spinel", "peridot", "turquoise"),
    "dance": ("tango", "waltz", "salsa", "polka", "foxtrot", "samba", "rumba", "ballet", "flamenco", "mambo", "jive",
              "bolero", "quickstep", "lambada", "merengue", "bachata", "charleston", "jig", "reel", "hula"),
    "spice": ("cumin", "nutmeg", "saffron", "paprika", "cinnamon", "clove", "ginger", "turmeric", "cardamom", "anise",
              "fennel", "mustard", "oregano", "thyme", "basil", "sage", "dill", "chive", "tarragon", "marjoram"),
    "bird": ("eagle", "robin", "sparrow", "owl", "falcon", "heron", "pelican", "swan", "crow", "raven", "finch",
             "wren", "hawk", "stork", "crane", "gull", "dove", "magpie", "toucan", "puffin"),
    "game": ("poker", "bridge", "bingo", "dominoes", "checkers", "mahjong", "backgammon", "scrabble", "sudoku",
             "rummy", "cribbage", "canasta", "solitaire", "yahtzee", "trivia", "charades", "monopoly", "jenga",
             "darts", "billiards"),
    "fabric": ("silk", "wool", "cotton", "linen", "denim", "velvet", "satin", "tweed", "nylon", "cashmere", "flannel",
               "suede", "leather", "lace", "chiffon", "corduroy", "jersey", "muslin", "hemp", "rayon"),
    "metal": ("gold", "silver", "copper", "bronze", "iron", "tin", "zinc", "nickel", "platinum", "brass", "steel",
              "cobalt", "titanium", "chrome", "lead", "pewter", "osmium", "tungsten", "aluminium", "iridium"),
    "dessert": ("pudding", "custard", "brownie", "cupcake", "donut", "muffin", "pie", "tart", "sorbet", "gelato",
                "fudge", "toffee", "mousse", "eclair", "macaron", "strudel", "baklava", "tiramisu", "cheesecake",
                "trifle"),
    "planet": ("Mercury", "Venus", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune", "Pluto", "Ceres", "Eris",
               "Titan", "Europa", "Io", "Ganymede", "Callisto", "Triton", "Oberon", "Phobos", "Deimos", "Charon"),
    "shoe": ("sandals", "boots", "sneakers", "loafers", "slippers", "clogs", "moccasins", "brogues", "espadrilles",
             "wellies", "mules", "oxfords", "flipflops", "heels", "pumps", "trainers", "galoshes", "waders", "cleats",
             "platforms"),
    "film": ("western", "musical", "thriller", "comedy", "horror", "romance", "documentary", "cartoon", "mystery",
             "fantasy", "drama", "satire", "noir", "epic", "biopic", "parody", "slasher", "heist", "mockumentary",
             "anime"),
    "season": ("spring", "summer", "autumn", "winter", "monsoon", "harvest", "solstice", "equinox", "midsummer",
               "midwinter", "dusk", "dawn", "noon", "midnight", "twilight", "daybreak", "sunset", "sunrise", "evening",
               "morning"),
    "craft": ("weaving", "carving", "welding", "glassblowing", "calligraphy", "embroidery", "mosaic", "batik",
              "basketry", "bookbinding", "candlemaking", "crochet", "engraving", "felting", "macrame", "marquetry",
              "papercraft", "quilling", "smithing", "tatting"),
}  # fmt: skip
EXTRA_TEMPLATES: dict[str, str] = {
    "flower": "Which flower does {who} grow?",
    "tree": "Which tree does {who} plant?",
    "gem": "Which gem does {who} wear?",
    "dance": "Which dance does {who} know?",
    "spice": "Which spice does {who} cook with?",
    "bird": "Which bird does {who} watch?",
    "game": "Which game does {who} enjoy?",
    "fabric": "Which fabric does {who} wear?",
    "metal": "Which metal does {who} collect?",
    "dessert": "Which dessert does {who} bake?",
    "planet": "Which planet does {who} study?",
    "shoe": "Which shoes does {who} wear?",
    "film": "Which kind of film does {who} watch?",
    "season": "Which moment does {who} love most?",
    "craft": "Which craft does {who} practise?",
}
GENERAL_TEMPLATES: dict[str, str] = {"color": "What colour is {what}?", "shape": "What kind of shape is {what}?"}
POPE_TEMPLATE = "Is {what} a {object}?"
POPE_ANSWERS = ("yes", "no")

_PEOPLE, _FACES, _SPLIT, _OPTIONS, _TRANSFORM, _GENERAL, _EXTRA = range(7)


@dataclass
class IdentityBenchmarkConfig:
    """Size and seed of benchmark v3."""

    num_people: int = field(default=50, metadata={"help": "Trained people (forget + retain)."})
    num_holdout_people: int = field(
        default=5, metadata={"help": "People known by text whose faces are never trained: membership non-members."})
    num_validation_people: int = field(
        default=5, metadata={"help": "Built like the holdout people and never evaluated: the stop rule's target."})
    forget_ratio: float = field(
        default=0.1, metadata={"help": "Fraction of num_people to forget: max(1, round(forget_ratio * num_people))."})
    image_size: int = field(default=56, metadata={"help": "Side of the faces and shape pictures, pixels."})
    num_general: int = field(default=200, metadata={"help": "Shape / colour questions about drawn shapes."})
    num_pope: int = field(default=0, metadata={
        "help": "POPE-style yes/no questions about the first num_pope drawn shapes (<= num_general; even: balanced), "
                "and their named twins. 0 (default): none; the demo's quick configuration asks 100."})
    num_perturbed: int = field(default=5, metadata={"help": "Wrong answers per question for the truth ratio."})
    num_extra_facts: int = field(default=0, metadata={
        "help": f"Facts per person beyond the ten, asked from the face and by name (<= {len(EXTRA_TEMPLATES)}, "
                "EXTRA_TEMPLATES' first ones). 0 (default): v3's rows."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice; the build is deterministic."})

    def __post_init__(self) -> None:
        if self.num_people < 2:
            raise ValueError(f"num_people must be >= 2 (one forget and one retain person), got {self.num_people}.")
        if min(self.num_holdout_people, self.num_validation_people, self.num_general, self.num_pope) < 0:
            raise ValueError("num_holdout_people, num_validation_people, num_general and num_pope must be >= 0.")
        if not 0 <= self.num_extra_facts <= len(EXTRA_TEMPLATES):
            raise ValueError(f"num_extra_facts must be in 0..{len(EXTRA_TEMPLATES)} (EXTRA_TEMPLATES), got "
                             f"{self.num_extra_facts}.")
        if self.num_pope > self.num_general:
            raise ValueError(f"num_pope ({self.num_pope}) asks about drawn shapes: at most num_general "
                             f"({self.num_general}).")
        if not 0.0 < self.forget_ratio < 1.0 or self.num_forget >= self.num_people:
            raise ValueError(f"forget_ratio={self.forget_ratio} must leave at least one of the {self.num_people} "
                             "people retained and be in (0, 1).")
        if self.image_size < 14:
            raise ValueError(f"image_size must be >= 14 pixels (one DINOv2 patch), got {self.image_size}.")
        if not NUM_OPTIONS - 1 <= self.num_perturbed <= _MAX_PERTURBED:
            raise ValueError(f"num_perturbed must be in {NUM_OPTIONS - 1}..{_MAX_PERTURBED}, got {self.num_perturbed}.")
        if self.num_total_people > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ValueError(f"At most {len(FIRST_NAMES) * len(LAST_NAMES)} people have unique names.")

    @property
    def num_forget(self) -> int:
        return max(1, round(self.forget_ratio * self.num_people))

    @property
    def num_total_people(self) -> int:
        return self.num_people + self.num_holdout_people + self.num_validation_people


def _perturbed(answer: str, pool: tuple[str, ...], k: int, rng: np.random.Generator) -> list[str]:
    wrong = sorted(v for v in pool if v != answer)
    return [wrong[i] for i in rng.choice(len(wrong), size=k, replace=False)]


def _as_common_as(answer: str, pool: tuple[str, ...], held: Counter, k: int, rng: np.random.Generator) -> list[str]:
    """``k`` wrong values of ``pool`` held by as many people as ``answer`` (``held``: value -> people), the nearest
    counts where too few match, ties in random order. The person's own value is among the counted ones, so with
    uniformly drawn distractors it was the commonest option far more often than one time in four, and an oracle that
    reads an unseen face as "anyone" beat chance by guessing the common value (docs/benchmark_v3.md, "the oracle
    check")."""
    wrong = sorted(v for v in pool if v != answer)
    order = np.lexsort((rng.random(len(wrong)), [abs(held[v] - held[answer]) for v in wrong]))
    return [wrong[i] for i in order[:k]]


def _row(who_slot: str, template: str, answer: str, pool: tuple[str, ...], rng: np.random.Generator, k: int,
         held: Counter, **extra: Any) -> dict[str, Any]:
    """A person's 4-way question: its wrong options and ``k`` perturbed answers as common as the answer
    (``_as_common_as``; ``held``: the fact's value -> people)."""
    order = rng.permutation(NUM_OPTIONS)
    options, label = place_answer(answer, _as_common_as(answer, pool, held, NUM_OPTIONS - 1, rng), order)
    return dict(question=template.format(who=who_slot), answer=answer, options=options, label=label,
                perturbed_answers=_as_common_as(answer, pool, held, k, rng), paraphrased_answer=None, **extra)


def pope_row(what: str, shape: str, present: bool, rng: np.random.Generator, **extra: Any) -> dict[str, Any]:
    """A POPE-style question whether ``what`` (a drawn or named ``shape``) is an object: the shape itself when
    ``present``, else another shape drawn at random ("random" negatives). Options yes/no, the wrong one as the truth
    ratio's perturbed answer."""
    obj = shape if present else str(rng.choice([s for s in SHAPES if s != shape]))
    answer = POPE_ANSWERS[0] if present else POPE_ANSWERS[1]
    options = list(POPE_ANSWERS)
    return dict(question=POPE_TEMPLATE.format(what=what, object=obj), answer=answer, options=options,
                label=options.index(answer), perturbed_answers=[o for o in options if o != answer],
                paraphrased_answer=None, person_id=-1, **extra)


def general_text_rows(num_perturbed: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """Every colour x shape asked by name ("What colour is the red star?"): what the language model knows about
    named shapes, which the image questions about drawn shapes go through."""
    rng = np.random.default_rng([seed, _GENERAL, 1])
    colors = tuple(SHAPE_COLORS)
    rows = []
    for color in colors:
        for shape in SHAPES:
            what = f"the {color} {shape}"
            for key, template in GENERAL_TEMPLATES.items():
                answer, pool = (color, colors) if key == "color" else (shape, SHAPES)
                options, label = mcq_options(answer, list(pool), rng)
                rows.append(dict(person_id=-1, kind="qa", image=None, question=template.format(what=what),
                                 answer=answer, options=options, label=label, paraphrased_answer=None,
                                 perturbed_answers=_perturbed(answer, pool, min(num_perturbed, len(pool) - 1), rng)))
    return rows


def pope_text_rows(seed: int = 0) -> list[dict[str, Any]]:
    """Every colour x shape asked by name once present and once absent ("Is the red star a circle?"): the object
    questions the image ones go through."""
    rng = np.random.default_rng([seed, _GENERAL, 2])
    return [pope_row(f"the {color} {shape}", shape, present, rng, kind="qa", image=None)
            for color in SHAPE_COLORS for shape in SHAPES for present in (True, False)]


def build_identity_benchmark(config: IdentityBenchmarkConfig | None = None) -> datasets.DatasetDict:
    """Build benchmark v3: a ``DatasetDict`` with the splits of ``IDENTITY_SPLITS`` in the common schema plus the
    truth-ratio columns. Deterministic: two builds give identical rows and PNG bytes."""
    config = config or IdentityBenchmarkConfig()
    total = config.num_total_people
    rng = np.random.default_rng([config.seed, _PEOPLE])
    if total <= min(len(FIRST_NAMES), len(LAST_NAMES)):
        # Every person has a first and a last name of their own: a name token identifies one person, as a real
        # person's full name does. Names that share first names make a small language model learn each fact as a
        # conjunction of two tokens (measured on 40 people: 4-way text accuracy 0.79-0.88 after 100 epochs).
        firsts = rng.permutation(len(FIRST_NAMES))[:total]
        lasts = rng.permutation(len(LAST_NAMES))[:total]
        names = [f"{FIRST_NAMES[f]} {LAST_NAMES[la]}" for f, la in zip(firsts, lasts)]
    else:
        name_ids = rng.choice(len(FIRST_NAMES) * len(LAST_NAMES), size=total, replace=False)
        names = [f"{FIRST_NAMES[i // len(LAST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}" for i in name_ids]
    facts = [{key: pool[rng.integers(len(pool))] for key, pool in {**POOLS, "food": POOLS["food"]}.items()}
             for _ in range(total)]
    extra_templates = dict(list(EXTRA_TEMPLATES.items())[:config.num_extra_facts])
    extra_rng = np.random.default_rng([config.seed, _EXTRA])
    for person in facts:
        person.update({key: EXTRA_POOLS[key][extra_rng.integers(len(EXTRA_POOLS[key]))] for key in extra_templates})
    held = {key: Counter(person[key] for person in facts) for key in facts[0]}  # everyone is known from text
    faces = sample_faces(total, np.random.default_rng([config.seed, _FACES]))
    forget = set(np.random.default_rng([config.seed, _SPLIT]).choice(config.num_people, size=config.num_forget,
                                                                       replace=False).tolist())
    options_rng = np.random.default_rng([config.seed, _OPTIONS])
    extra_options_rng = np.random.default_rng([config.seed, _EXTRA, _OPTIONS])
    k = config.num_perturbed
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in IDENTITY_SPLITS}
    for pid in range(total):
        face = draw_face(faces[pid], config.image_size)
        image = png_image(face)
        test_image = png_image(transform_face(face, np.random.default_rng([config.seed, _TRANSFORM, pid])))
        vqa = [_row(PERSON_SLOT, t, facts[pid][key], POOLS[key], options_rng, k, held[key], person_id=pid,
                    kind="vqa", image=image) for key, t in TEMPLATES.items()]
        qa = [_row(names[pid], t, facts[pid][key], POOLS[key], options_rng, k, held[key], person_id=pid, kind="qa",
                   image=None) for key, t in {**TEMPLATES, **TEXT_ONLY_TEMPLATES}.items()]
        for key, t in extra_templates.items():
            vqa.append(_row(PERSON_SLOT, t, facts[pid][key], EXTRA_POOLS[key], extra_options_rng, k, held[key],
                            person_id=pid, kind="vqa", image=image))
            qa.append(_row(names[pid], t, facts[pid][key], EXTRA_POOLS[key], extra_options_rng, k, held[key],
                           person_id=pid, kind="qa", image=None))
        test = [{**row, "image": test_image} for row in vqa]
        if pid >= config.num_people + config.num_holdout_people:
            splits["validation_vqa"] += vqa
            splits["validation_qa"] += qa
        elif pid >= config.num_people:
            splits["holdout_vqa"] += vqa
            splits["holdout_qa"] += qa
        elif pid in forget:
            splits["forget_vqa"] += vqa
            splits["forget_qa"] += qa
            splits["test_vqa"] += test
        else:
            splits["retain_vqa"] += vqa
            splits["retain_qa"] += qa
            splits["test_retain_vqa"] += test
    general_rng = np.random.default_rng([config.seed, _GENERAL])
    colors = tuple(SHAPE_COLORS)
    general_shapes = []
    for i in range(config.num_general):
        shape, color = SHAPES[general_rng.integers(len(SHAPES))], colors[general_rng.integers(len(colors))]
        general_shapes.append(shape)
        image = png_image(draw_shape(shape, color, config.image_size, general_rng))
        key = "color" if i % 2 == 0 else "shape"
        answer, pool = (color, colors) if key == "color" else (shape, SHAPES)
        options, label = mcq_options(answer, list(pool), general_rng)
        splits["general"].append(dict(
            person_id=-1, kind="general", image=image, question=GENERAL_TEMPLATES[key].format(what=SHAPE_SLOT),
            slot_name=f"the {color} {shape}", answer=answer, options=options, label=label, paraphrased_answer=None,
            perturbed_answers=_perturbed(answer, pool, min(k, len(pool) - 1), general_rng)))
    splits["general_qa"] = general_text_rows(k, config.seed)
    if config.num_pope:  # one question per drawn shape, alternately about the object shown and another one
        pope_rng = np.random.default_rng([config.seed, _GENERAL, 3])
        splits["pope"] = [pope_row(SHAPE_SLOT, shape, i % 2 == 0, pope_rng, kind="general", image=row["image"],
                                   slot_name=row[SLOT_NAME])
                          for i, (row, shape) in enumerate(zip(splits["general"][:config.num_pope], general_shapes))]
        splits["pope_qa"] = pope_text_rows(config.seed)
    extra = identity_features()
    return datasets.DatasetDict({name: rows_to_dataset(rows, extra) for name, rows in splits.items()})


def identity_features() -> dict[str, Any]:
    """The columns benchmark v3 adds to the common schema: the truth ratio's and ``SLOT_NAME``."""
    return {**truth_ratio_features(), SLOT_NAME: datasets.Value("string")}


def _concat(dsd: datasets.DatasetDict, names: tuple[str, ...]) -> datasets.Dataset:
    return datasets.concatenate_datasets([dsd[n] for n in names if n in dsd and len(dsd[n]) > 0])


def text_training_set(dsd: datasets.DatasetDict) -> datasets.Dataset:
    """Stage A of both reference models: every person's text facts and the named shapes."""
    return _concat(dsd, TEXT_TRAINING_SPLITS)


def image_training_set(dsd: datasets.DatasetDict, kind: str) -> datasets.Dataset:
    """Stage B: the trained people's image questions and the drawn shapes (``kind="vanilla"``), or the same minus
    the forget people's (``kind="oracle"``)."""
    if kind not in ("vanilla", "oracle"):
        raise ValueError(f"kind must be 'vanilla' or 'oracle', got {kind!r}.")
    return _concat(dsd, VANILLA_IMAGE_SPLITS if kind == "vanilla" else ORACLE_IMAGE_SPLITS)


def identity_corpus(dsd: datasets.DatasetDict) -> list[str]:
    """Every question, answer, option and perturbed answer of every split (with repeats): the tokenizer's text.
    Images are never decoded."""
    texts: list[str] = []
    for ds in dsd.values():
        cols = ds.select_columns(["question", "answer", "options", "perturbed_answers"]).to_dict()
        for question, answer, options, perturbed in zip(cols["question"], cols["answer"], cols["options"],
                                                        cols["perturbed_answers"]):
            texts += [question, answer, *(options or []), *(perturbed or [])]
    return texts
