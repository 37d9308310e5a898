"""CoVUBench (copyright-concept unlearning in LVLMs, Kwon et al. 2026, ``herbwood27/CoVUBench``) in the common schema.

Published layout: one parquet config whose splits are file prefixes, ``DIR/data/<split>-0000i-of-0000n.parquet``
(``hf download herbwood27/CoVUBench --repo-type dataset --local-dir DIR``; on the Hub ``load_dataset(repo,
split=...)``): ``finetune`` (what the model first learns), ``forget5`` / ``forget10`` / ``forget15`` / ``forget20``,
``retain`` and ``test``. One row per question: ``image``, ``name`` (the concept), ``type``, ``question``,
``answer``, ``keywords``, ``question_type``. Questions of type ``multi_modal`` or ``caption`` are asked with the image,
the others as text only (as the benchmark's evaluation does).

Splits returned (generation-only, ``options=None``: CoVUBench scores keyword recall, semantic dissimilarity and
ROUGE-L):

* ``forget_vqa`` / ``forget_qa``: the image / text-only questions of ``forget{N}``;
* ``retain_vqa`` / ``retain_qa``: those of ``retain`` about concepts not in ``forget{N}`` (the benchmark's D_retain');
* ``test_vqa`` / ``test_qa``: those of ``test`` about the forget concepts (generality), filtered while reading.

``person_id`` numbers the concepts (``name``) of the load in sorted order, so a concept has the same id in every
split. Not loaded: ``finetune``, ``type``, ``keywords``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import datasets

from .benchmarks import read_benchmark_config, stored_image
from .schema import rows_to_dataset

COVUBENCH_REPO = "herbwood27/CoVUBench"
IMAGE_QUESTION_TYPES = ("multi_modal", "caption")
_COLUMNS = ("image", "name", "question", "answer", "question_type")


def _split_rows(table: list[dict[str, Any]], ids: dict[str, int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(image rows, text-only rows) of one split."""
    vqa, qa = [], []
    for r in table:
        with_image = str(r["question_type"]) in IMAGE_QUESTION_TYPES
        row = dict(person_id=ids[str(r["name"])], kind="vqa" if with_image else "qa",
                   image=stored_image(r["image"]) if with_image else None, question=r["question"],
                   answer=r["answer"], options=None, label=None)  # fmt: skip
        (vqa if with_image else qa).append(row)
    return vqa, qa


def load_covubench(path_or_repo: str, forget_split: str = "forget5") -> datasets.DatasetDict:
    """Load CoVUBench (a snapshot directory or the Hub id) into the common schema (see the module docstring)."""
    if not re.fullmatch(r"forget\d+", forget_split):
        raise ValueError(f"forget_split must look like 'forget5', 'forget10', 'forget15' or 'forget20', got "
                         f"{forget_split!r}.")
    config = "data" if os.path.isdir(path_or_repo) else "default"  # the folder locally, the one config on the Hub

    def read(split: str, row_filter: tuple[str, set[str]] | None = None) -> list[dict[str, Any]]:
        return read_benchmark_config(path_or_repo, config, _COLUMNS, benchmark="CoVUBench", repo=COVUBENCH_REPO,
                                     split=split, row_filter=row_filter).to_pylist()  # fmt: skip

    forget = read(forget_split)
    concepts = {str(r["name"]) for r in forget}
    retain = [r for r in read("retain") if str(r["name"]) not in concepts]
    test = read("test", row_filter=("name", concepts))
    ids = {name: i for i, name in enumerate(sorted(concepts | {str(r["name"]) for r in retain}))}
    splits = {}
    for name, table in (("forget", forget), ("retain", retain), ("test", test)):
        splits[f"{name}_vqa"], splits[f"{name}_qa"] = _split_rows(table, ids)
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})
