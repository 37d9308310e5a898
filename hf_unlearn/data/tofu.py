"""TOFU (``locuslab/TOFU``, Maini et al. 2024) in the common schema, with the answers its truth ratio compares.

Published layout: one JSON(-lines) file per config at the repository root (``full.json``, ``forget10.json``,
``forget10_perturbed.json``, ``retain90.json``, ``retain_perturbed.json``, ``real_authors_perturbed.json``,
``world_facts_perturbed.json``, ``holdout10.json``, ...), loaded on the Hub with ``load_dataset("locuslab/TOFU",
config)``. A local directory may hold those files (``hf download locuslab/TOFU --repo-type dataset --local-dir DIR``)
or ``<config>/*.parquet`` re-exports.

Splits returned (the names the Evaluator and the demo use):

===============  ===============================  =========================================================
split            source config                    columns used
===============  ===============================  =========================================================
``forget_qa``    ``{forget}_perturbed``           question, answer, paraphrased_answer, perturbed_answer
``retain_qa``    ``retain_perturbed``             the same (TOFU's retain evaluation rows)
``holdout_qa``   ``holdout{NN}`` (if published)   question, answer: authors never trained on (MIA non-members)
``real_authors`` ``real_authors_perturbed``       question, answer, perturbed_answer (kind "general")
``world_facts``  ``world_facts_perturbed``        the same
``retain_train`` ``retain{100-NN}``               question, answer: the retain set to train on
===============  ===============================  =========================================================

Every split is generation-only (``options=None``: TOFU scores ROUGE-L recall and answer probabilities). ``person_id``
is the author's index in ``full`` (TOFU lists each author's 20 questions consecutively), found by question;
holdout authors are numbered after the ``full`` ones, and real-authors/world-facts rows get -1.
"""

from __future__ import annotations

import re
from typing import Any

import datasets

from .benchmarks import read_benchmark_config
from .schema import rows_to_dataset, truth_ratio_features

TOFU_REPO = "locuslab/TOFU"
QUESTIONS_PER_AUTHOR = 20
_PERTURBED = ("question", "answer", "paraphrased_answer", "perturbed_answer")


def _read(path_or_repo: str, config: str, required, optional=()) -> list[dict[str, Any]]:
    return read_benchmark_config(path_or_repo, config, required, optional, benchmark="TOFU", repo=TOFU_REPO).to_pylist()


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _rows(records: list[dict[str, Any]], kind: str, person_of, paraphrased: bool) -> list[dict[str, Any]]:
    return [
        dict(person_id=person_of(r, n), kind=kind, image=None, question=r["question"], answer=r["answer"], options=None,
             label=None, paraphrased_answer=r.get("paraphrased_answer") if paraphrased else None,
             perturbed_answers=_as_list(r.get("perturbed_answer")))
        for n, r in enumerate(records)
    ]


def load_tofu(path_or_repo: str = TOFU_REPO, forget_split: str = "forget10") -> datasets.DatasetDict:
    """Load TOFU into the common schema plus ``paraphrased_answer`` / ``perturbed_answers`` (see the module doc).

    Args:
        path_or_repo: a local snapshot directory or the Hub id (online only).
        forget_split: ``"forget01"``, ``"forget05"`` or ``"forget10"``; the retain and holdout configs follow.
    """
    match = re.fullmatch(r"forget(\d\d)", forget_split)
    if not match or not 0 < int(match.group(1)) < 100:
        raise ValueError(f"forget_split must look like 'forget01', 'forget05' or 'forget10', got {forget_split!r}.")
    pct = int(match.group(1))

    full = _read(path_or_repo, "full", ("question", "answer"))
    author_of = {r["question"]: i // QUESTIONS_PER_AUTHOR for i, r in enumerate(full)}
    num_authors = -(-len(full) // QUESTIONS_PER_AUTHOR)

    def in_full(r: dict[str, Any], n: int) -> int:
        return author_of.get(r["question"], -1)

    splits = {
        "forget_qa": _rows(_read(path_or_repo, f"{forget_split}_perturbed", _PERTURBED), "qa", in_full, True),
        "retain_qa": _rows(_read(path_or_repo, "retain_perturbed", _PERTURBED), "qa", in_full, True),
    }
    try:
        holdout = _read(path_or_repo, f"holdout{pct:02d}", ("question", "answer"))
    except FileNotFoundError:  # holdout configs were published after the first release
        holdout = None
    if holdout is not None:
        splits["holdout_qa"] = _rows(holdout, "qa", lambda r, n: num_authors + n // QUESTIONS_PER_AUTHOR, False)
    for name in ("real_authors", "world_facts"):
        records = _read(path_or_repo, f"{name}_perturbed", ("question", "answer", "perturbed_answer"))
        splits[name] = _rows(records, "general", lambda r, n: -1, False)
    splits["retain_train"] = _rows(_read(path_or_repo, f"retain{100 - pct:02d}", ("question", "answer")), "qa",
                                   in_full, False)
    extra = truth_ratio_features()
    return datasets.DatasetDict({name: rows_to_dataset(rows, extra) for name, rows in splits.items()})
