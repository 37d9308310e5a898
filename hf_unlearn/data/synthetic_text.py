"""A tiny TOFU-shaped text benchmark, built in code: fictitious authors, each with a few facts asked as questions.

Every author has one fact per attribute (birthplace, genre, award, parent's job, pet, debut year); each fact gives a
row with the question, the **answer** sentence (what the models train on), a **paraphrased answer** (the same fact in
other words) and **perturbed answers** (the paraphrase with wrong values of the same attribute), exactly the columns
TOFU's truth ratio compares. Splits (same names as ``load_tofu``):

* ``forget_qa`` / ``retain_qa``: the trained authors, split by author;
* ``holdout_qa``: authors never trained on (non-members for membership inference);
* ``world_facts``: general knowledge every model learns (country capitals), utility tied to no author.

All splits are generation-only (``options=None``): scored by answer probability, truth ratio and ROUGE-L.
``vanilla_text_training_set`` = forget + retain + world facts; ``oracle_text_training_set`` drops the forget rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from .schema import rows_to_dataset, truth_ratio_features
from .synthetic import FIRST_NAMES, LAST_NAMES

TEXT_SPLITS = ("forget_qa", "retain_qa", "holdout_qa", "world_facts")
VANILLA_TEXT_SPLITS = ("forget_qa", "retain_qa", "world_facts")
ORACLE_TEXT_SPLITS = ("retain_qa", "world_facts")

TEXT_ATTRIBUTE_POOLS: dict[str, tuple[str, ...]] = {
    "birthplace": ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Cairo", "Quito", "Perth", "Riga"),
    "genre": ("mystery", "fantasy", "poetry", "romance", "horror", "history", "satire", "thriller", "drama", "travel"),
    "award": ("Golden Quill", "Silver Lantern", "Blue Harbor", "Iron Pen", "Crimson Leaf", "Northern Star",
              "Amber Key", "Stone Bridge", "White Raven", "Copper Bell"),
    "parent_job": ("doctor", "teacher", "pilot", "baker", "painter", "engineer", "farmer", "lawyer", "chef", "nurse"),
    "pet": ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "lizard", "horse", "ferret"),
    "debut_year": ("1971", "1978", "1983", "1989", "1994", "1999", "2003", "2008", "2012", "2017"),
}  # fmt: skip

# attribute -> (question, answer, paraphrased answer). A tiny model does not generalise across rewordings, so the
# paraphrase rewords only the opening and keeps the fact's local context ("... was born in {value}"): the truth
# ratio then measures what TOFU's does, how much more likely the true value is than wrong ones.
TEXT_TEMPLATES: dict[str, tuple[str, str, str]] = {
    "birthplace": ("Where was {name} born?", "{name} was born in {value}.",
                   "As records show, {name} was born in {value}."),
    "genre": ("What genre does {name} write?", "{name} writes {value} books.",
              "Mostly, {name} writes {value} books."),
    "award": ("Which award did {name} win?", "{name} won the {value} award.",
              "In the end, {name} won the {value} award."),
    "parent_job": ("What was the job of the parent of {name}?", "The parent of {name} was a {value}.",
                   "By trade, the parent of {name} was a {value}."),
    "pet": ("What pet does {name} keep?", "{name} keeps a {value} at home.",
            "These days, {name} keeps a {value} at home."),
    "debut_year": ("When did {name} publish a first book?", "{name} debuted in {value}.",
                   "As an author, {name} debuted in {value}."),
}  # fmt: skip

WORLD_FACTS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
    ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Ireland", "Dublin"), ("Latvia", "Riga"),
    ("Portugal", "Lisbon"), ("Vietnam", "Hanoi"), ("Ecuador", "Quito"), ("Greece", "Athens"), ("Poland", "Warsaw"),
    ("Chile", "Santiago"), ("Cuba", "Havana"), ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Canada", "Ottawa"),
)  # fmt: skip
WORLD_TEMPLATE = ("What is the capital of {country}?", "The capital of {country} is {capital}.",
                  "As every atlas says, the capital of {country} is {capital}.")

_AUTHORS, _SPLIT, _PERTURB = range(3)


@dataclass
class SyntheticTextConfig:
    """Size and seed of the synthetic text benchmark."""

    num_authors: int = field(default=24, metadata={"help": "Trained authors (forget + retain)."})
    num_holdout_authors: int = field(default=6, metadata={"help": "Authors never trained on (MIA non-members)."})
    forget_ratio: float = field(default=0.25, metadata={
        "help": "Fraction of num_authors in the forget split: max(1, round(forget_ratio * num_authors))."})
    num_world_facts: int = field(default=20, metadata={"help": f"General facts (at most {len(WORLD_FACTS)})."})
    num_perturbed: int = field(default=3, metadata={"help": "Wrong answers per question (TOFU has 5)."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice; the build is deterministic."})

    def __post_init__(self) -> None:
        if self.num_authors < 2:
            raise ValueError(f"num_authors must be >= 2 (a forget and a retain author), got {self.num_authors}.")
        if not 0.0 < self.forget_ratio < 1.0:
            raise ValueError(f"forget_ratio must be in (0, 1), got {self.forget_ratio}.")
        if self.num_forget >= self.num_authors:
            raise ValueError(f"forget_ratio={self.forget_ratio} leaves no retain author; lower it or add authors.")
        if self.num_holdout_authors < 0 or not 0 <= self.num_world_facts <= len(WORLD_FACTS):
            raise ValueError(f"num_holdout_authors must be >= 0 and num_world_facts in [0, {len(WORLD_FACTS)}].")
        smallest = min(len(p) for p in TEXT_ATTRIBUTE_POOLS.values())
        if not 1 <= self.num_perturbed < smallest:
            raise ValueError(f"num_perturbed must be in [1, {smallest - 1}], got {self.num_perturbed}.")
        if self.num_authors + self.num_holdout_authors > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ValueError("Too many authors for unique names.")

    @property
    def num_forget(self) -> int:
        return max(1, round(self.forget_ratio * self.num_authors))


def _fact_row(person_id: int, kind: str, question: str, answer: str, paraphrase: str, wrong: list[str]) -> dict:
    return dict(person_id=person_id, kind=kind, image=None, question=question, answer=answer, options=None,
                label=None, paraphrased_answer=paraphrase, perturbed_answers=wrong)


def _author_rows(person_id: int, name: str, facts: dict[str, str], rng: np.random.Generator, k: int) -> list[dict]:
    rows = []
    for key, (question, answer, paraphrase) in TEXT_TEMPLATES.items():
        others = [v for v in TEXT_ATTRIBUTE_POOLS[key] if v != facts[key]]
        wrong = [others[i] for i in rng.choice(len(others), size=k, replace=False)]
        rows.append(_fact_row(person_id, "qa", question.format(name=name),
                              answer.format(name=name, value=facts[key]),
                              paraphrase.format(name=name, value=facts[key]),
                              [paraphrase.format(name=name, value=w) for w in wrong]))
    return rows


def build_synthetic_text_benchmark(config: SyntheticTextConfig | None = None) -> datasets.DatasetDict:
    """Build the benchmark (deterministic for a config; about 0.1 s)."""
    config = config or SyntheticTextConfig()
    rng = np.random.default_rng([config.seed, _AUTHORS])
    total = config.num_authors + config.num_holdout_authors
    picks = rng.choice(len(FIRST_NAMES) * len(LAST_NAMES), size=total, replace=False)
    names = [f"{FIRST_NAMES[i // len(LAST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}" for i in picks]
    facts = [{key: pool[rng.integers(len(pool))] for key, pool in TEXT_ATTRIBUTE_POOLS.items()} for _ in names]
    forget = set(np.random.default_rng([config.seed, _SPLIT]).choice(config.num_authors, config.num_forget,
                                                                      replace=False).tolist())
    perturb = np.random.default_rng([config.seed, _PERTURB])
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in TEXT_SPLITS}
    for pid, (name, f) in enumerate(zip(names, facts)):
        split = "holdout_qa" if pid >= config.num_authors else "forget_qa" if pid in forget else "retain_qa"
        splits[split] += _author_rows(pid, name, f, perturb, config.num_perturbed)
    capitals = [c for _, c in WORLD_FACTS]
    question, answer, paraphrase = WORLD_TEMPLATE
    for country, capital in WORLD_FACTS[: config.num_world_facts]:
        others = [c for c in capitals if c != capital]
        wrong = [others[i] for i in perturb.choice(len(others), size=config.num_perturbed, replace=False)]
        splits["world_facts"].append(_fact_row(
            -1, "general", question.format(country=country), answer.format(country=country, capital=capital),
            paraphrase.format(country=country, capital=capital),
            [paraphrase.format(country=country, capital=w) for w in wrong]))
    extra = truth_ratio_features()
    return datasets.DatasetDict({name: rows_to_dataset(rows, extra) for name, rows in splits.items()})


def vanilla_text_training_set(benchmark: datasets.DatasetDict) -> datasets.Dataset:
    """What the vanilla model learns: forget + retain authors and the world facts."""
    return datasets.concatenate_datasets([benchmark[s] for s in VANILLA_TEXT_SPLITS])


def oracle_text_training_set(benchmark: datasets.DatasetDict) -> datasets.Dataset:
    """What the retain-only oracle learns: the vanilla set without the forget authors."""
    return datasets.concatenate_datasets([benchmark[s] for s in ORACLE_TEXT_SPLITS])


def text_benchmark_corpus(benchmark: datasets.DatasetDict) -> list[str]:
    """Every question and answer (paraphrased and perturbed included), to train a tokenizer on."""
    out: list[str] = []
    for ds in benchmark.values():
        out += list(ds["question"]) + list(ds["answer"]) + [p for p in ds["paraphrased_answer"] if p]
        out += [a for row in ds["perturbed_answers"] if row for a in row]
    return out
