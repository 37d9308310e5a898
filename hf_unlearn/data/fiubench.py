"""FIUBench (Facial Identity Unlearning Benchmark, Ma et al., ICLR 2025, arXiv 2411.03554) in the common schema.

Published layout (``gray311/FIUBench``, which the upstream code clones into its ``dataset/`` folder)::

    DIR/full.json     one record per fictitious identity (a JSON array or JSON lines): ``unique_id``,
                      ``image_path`` (the face, relative to the snapshot; a leading ``./dataset/`` is the upstream
                      folder and is stripped), ``qa_list`` = [{``question``, ``answer``, ``paraphrased_answer``,
                      ``perturbed_answer`` (list), ...}], plus ``name``, ``caption``, ... (not read)
    DIR/split.json    {"forget1": [unique_id, ...], "forget5": [...], "forget10": [...], "retain5": [...], ...}
    DIR/<images>      the face images ``image_path`` names

As upstream, only the first 400 records of ``full.json`` are used. Splits returned (generation-only, scored by
ROUGE / truth ratio as FIUBench does, so ``options=None``; every question is asked with the face image):

* ``forget_vqa``: the QA pairs of the identities in ``split.json[forget_split]``.
* ``retain_vqa``: those of ``split.json["retain{N}"]`` when the file has that key (the upstream evaluation's retain
  set), otherwise every identity in no ``forget*`` list (upstream's ``retain`` training split).

Rows carry ``paraphrased_answer`` and ``perturbed_answers`` (``truth_ratio_features()``) for the truth ratio.
``person_id`` is the numeric ``unique_id`` (its rank in sorted order if one is not numeric), as for MLLMU-Bench.
"""

from __future__ import annotations

import os
import re
from typing import Any

import datasets

from .benchmarks import person_ids
from .json_snapshot import json_records, read_image_file, read_json_file, require_directory, require_fields
from .schema import rows_to_dataset, truth_ratio_features

FIUBENCH_REPO = "gray311/FIUBench"
FIRST_IDENTITIES = 400  # upstream's data_module keeps data[:400]
_FETCH = f"`hf download {FIUBENCH_REPO} --repo-type dataset --local-dir DIR`"
_DOWNLOAD = f"Download it with {_FETCH}"
_HINT = f"The FIUBench loader expects the published layout of full.json (see {FIUBENCH_REPO} on the Hub)."


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _identity_rows(root: str, record: dict[str, Any], person_id: int, where: str) -> list[dict[str, Any]]:
    """The QA rows of one identity, each with the identity's face image."""
    fix = f"The snapshot is incomplete: download it again with {_FETCH}."
    image = read_image_file(root, record["image_path"], where, fix)
    rows = []
    for i, qa in enumerate(record["qa_list"] or []):
        require_fields(qa, ("question", "answer"), f"{where}, qa_list[{i}]", _HINT)
        rows.append(dict(person_id=person_id, kind="vqa", image=image, question=qa["question"], answer=qa["answer"],
                         options=None, label=None, paraphrased_answer=qa.get("paraphrased_answer") or None,
                         perturbed_answers=_as_list(qa.get("perturbed_answer"))))  # fmt: skip
    return rows


def _split_ids(splits: Any, forget_split: str, path: str) -> tuple[set[str], set[str] | None]:
    """The forget IDs, and the retain IDs when ``split.json`` lists ``retain{N}`` (else None: the complement)."""
    if not isinstance(splits, dict) or forget_split not in splits:
        keys = sorted(splits) if isinstance(splits, dict) else type(splits).__name__
        raise ValueError(f"{path} has no {forget_split!r} list; keys found: {keys}. Pick one of the forget keys "
                         "with forget_split, or download split.json again.")
    retain_key = "retain" + forget_split[len("forget"):]
    retain = {str(i) for i in splits[retain_key]} if retain_key in splits else None
    return {str(i) for i in splits[forget_split]}, retain


def load_fiubench(path: str, forget_split: str = "forget5") -> datasets.DatasetDict:
    """Load a local FIUBench snapshot (``full.json``, ``split.json`` and the face images) into the common schema."""
    if not re.fullmatch(r"forget\d+", forget_split):
        raise ValueError(f"forget_split must look like 'forget1', 'forget5' or 'forget10', got {forget_split!r}.")
    require_directory(path, "FIUBench", _DOWNLOAD)
    records = json_records(read_json_file(path, "full.json", "FIUBench", _DOWNLOAD), os.path.join(path, "full.json"))
    records = records[:FIRST_IDENTITIES]
    for n, record in enumerate(records):
        require_fields(record, ("unique_id", "image_path", "qa_list"), f"full.json record {n}", _HINT)
    splits = read_json_file(path, "split.json", "FIUBench", _DOWNLOAD)
    forget_ids, retain_ids = _split_ids(splits, forget_split, os.path.join(path, "split.json"))
    if retain_ids is None:
        all_forget = {str(i) for key, ids in splits.items() if key.startswith("forget") for i in ids}
        retain_ids = {str(r["unique_id"]) for r in records} - all_forget
    ids = person_ids([str(r["unique_id"]) for r in records])

    def rows(wanted: set[str]) -> list[dict[str, Any]]:
        return [row for n, r in enumerate(records) if str(r["unique_id"]) in wanted
                for row in _identity_rows(path, r, ids[str(r["unique_id"])], f"full.json record {n}")]

    extra = truth_ratio_features()
    return datasets.DatasetDict({"forget_vqa": rows_to_dataset(rows(forget_ids), extra),
                                 "retain_vqa": rows_to_dataset(rows(retain_ids - forget_ids), extra)})
