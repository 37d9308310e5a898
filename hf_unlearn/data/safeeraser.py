"""SafeEraser (safety unlearning for MLLMs, Chen et al., ACL Findings 2025, arXiv 2502.12520) in the common schema.

Published layout: ``safeeraser_dataset.zip`` (Google Drive, linked from github.com/yuu250/SafeEraser), unzipped to
``DIR``::

    DIR/all_train.json   the forget set: a JSON array of records, one per harmful image
    DIR/all_val.json     the evaluation set (SafeEraser's generality and SARR), same record layout
    DIR/<images>         the files the records name

A record holds ``image_path`` (``image_id`` in some copies; relative to ``DIR``, a leading ``dataset/`` is the
upstream folder and is stripped), ``unsafe_pairs`` = [{``question``, ``model_response``, ``sd_response``, ...}] and
up to four harmless pairs ``UnharmPair_text1``, ``UnharmPair_text2``, ``UnharmPair_image1``, ``UnharmPair_image2`` =
{``Question``, ``Prediction`` (the vanilla model's answer, SafeEraser's retain target; ``Answer`` when absent)}.

Splits returned (generation-only, ``options=None``; every question is asked with the record's image, as upstream):

* ``forget_vqa``: the ``unsafe_pairs`` of ``all_train.json`` (question, ``model_response``: the harmful answer to
  unlearn);
* ``retain_vqa``: the harmless pairs of ``all_train.json`` (what SafeEraser's retain loss trains on);
* ``test_vqa`` / ``test_retain_vqa``: the same two kinds of pair from ``all_val.json``.

Rows are tied to no person: ``person_id`` is -1. Not loaded: ``SDImage_path`` / ``sd_response`` (the Prompt
Decouple loss's safe image and answer) and ``category``.
"""

from __future__ import annotations

from typing import Any

import datasets

from .json_snapshot import json_records, read_image_file, read_json_file, require_directory, require_fields
from .schema import rows_to_dataset

SAFEERASER_DOWNLOAD = ("Download safeeraser_dataset.zip from the SafeEraser README (github.com/yuu250/SafeEraser, "
                       "Google Drive) and unzip it into DIR")
UNHARM_KEYS = ("UnharmPair_text1", "UnharmPair_text2", "UnharmPair_image1", "UnharmPair_image2")
IMAGE_FIELDS = ("image_path", "image_id")
_HINT = "The SafeEraser loader expects the published record layout of all_train.json / all_val.json."


def _record_image(root: str, record: dict[str, Any], where: str) -> dict[str, Any]:
    field = next((f for f in IMAGE_FIELDS if record.get(f)), None)
    if field is None:
        raise ValueError(f"{where} has no image field (one of {list(IMAGE_FIELDS)}); fields found: {list(record)}. "
                         f"{_HINT}")
    return read_image_file(root, record[field], where, f"{SAFEERASER_DOWNLOAD} (images included).")


def _row(image: dict[str, Any], question: str, answer: str) -> dict[str, Any]:
    return dict(person_id=-1, kind="vqa", image=image, question=question, answer=answer, options=None, label=None)


def _unsafe_rows(record: dict[str, Any], image: dict[str, Any], where: str) -> list[dict[str, Any]]:
    rows = []
    for i, pair in enumerate(record["unsafe_pairs"] or []):
        require_fields(pair, ("question", "model_response"), f"{where}, unsafe_pairs[{i}]", _HINT)
        rows.append(_row(image, pair["question"], pair["model_response"]))
    return rows


def _unharm_rows(record: dict[str, Any], image: dict[str, Any], where: str) -> list[dict[str, Any]]:
    rows = []
    for key in (k for k in UNHARM_KEYS if isinstance(record.get(k), dict)):
        pair = record[key]
        answer = next((pair[f] for f in ("Prediction", "Answer") if pair.get(f)), None)
        if not pair.get("Question") or answer is None:
            raise ValueError(f"{where}, {key}: needs 'Question' and 'Prediction' (or 'Answer'); fields found: "
                             f"{list(pair)}. {_HINT}")
        rows.append(_row(image, pair["Question"], answer))
    return rows


def _file_rows(root: str, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(unsafe rows, harmless rows) of one JSON file."""
    records = json_records(read_json_file(root, name, "SafeEraser", SAFEERASER_DOWNLOAD), name)
    unsafe, unharm = [], []
    for n, record in enumerate(records):
        where = f"{name} record {n}"
        require_fields(record, ("unsafe_pairs",), where, _HINT)
        image = _record_image(root, record, where)
        unsafe += _unsafe_rows(record, image, where)
        unharm += _unharm_rows(record, image, where)
    return unsafe, unharm


def load_safeeraser(path: str) -> datasets.DatasetDict:
    """Load a local SafeEraser snapshot (``all_train.json``, ``all_val.json`` and the images) into the common schema."""
    require_directory(path, "SafeEraser", SAFEERASER_DOWNLOAD)
    forget, retain = _file_rows(path, "all_train.json")
    test, test_retain = _file_rows(path, "all_val.json")
    splits = {"forget_vqa": forget, "retain_vqa": retain, "test_vqa": test, "test_retain_vqa": test_retain}
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})
