"""The common row schema shared by every benchmark split (synthetic, MLLMU-Bench, CLEAR).

Collators, trainers and the evaluator only ever see these columns:

=============  ==========================  ===============================================================
column         type                        meaning
=============  ==========================  ===============================================================
``person_id``  int                         the person the row is about; ``-1`` for rows tied to no person
``kind``       str                         ``"vqa"`` (image + question), ``"qa"`` (text only) or ``"general"``
``image``      ``datasets.Image()``/None   PIL image once decoded; None for text-only rows
``question``   str                         VQA questions never name the person; QA questions do
``answer``     str                         short ground truth, equal to ``options[label]``
``options``    list[str]                   exactly 4 answer strings of the same attribute type
``label``      int                         index of the correct option
=============  ==========================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import datasets

KINDS = ("vqa", "qa", "general")
NUM_OPTIONS = 4
SCHEMA_COLUMNS = ("person_id", "kind", "image", "question", "answer", "options", "label")
REQUIRED_TRAIN_COLUMNS = ("question", "answer")
MCQ_COLUMNS = ("question", "answer", "options", "label")


def benchmark_features() -> datasets.Features:
    """The `datasets.Features` of every split in the common schema (a fresh object each call)."""
    return datasets.Features(
        {
            "person_id": datasets.Value("int64"),
            "kind": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "options": datasets.List(datasets.Value("string")),
            "label": datasets.Value("int64"),
        }
    )


def rows_to_dataset(rows: Sequence[dict[str, Any]]) -> datasets.Dataset:
    """Build a split in the common schema from row dicts (an empty list gives an empty, typed split).

    ``image`` may be a PIL image, an encoded ``{"bytes": ..., "path": ...}`` struct, or None.
    """
    columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in SCHEMA_COLUMNS}
    return datasets.Dataset.from_dict(columns, features=benchmark_features())


def check_columns(dataset: Any, required: Iterable[str], split_name: str, hint: str | None = None) -> None:
    """Raise a `ValueError` when ``dataset`` lacks any of the ``required`` columns.

    ``dataset`` is anything with ``column_names`` (a `datasets.Dataset`, a `pyarrow.Table`) or a plain list of column
    names (e.g. a parquet schema's ``names``). The message names the split, the missing columns, the columns found, and
    how to fix it (``hint`` replaces the default advice to rename or add columns).
    """
    required = list(required)
    found = list(dataset.column_names) if hasattr(dataset, "column_names") else list(dataset)
    missing = [name for name in required if name not in found]
    if missing:
        hint = hint or (
            "Rename an existing column with dataset.rename_column(old, new) or add it with dataset.map(...) "
            f"so the split has all of {required}."
        )
        raise ValueError(f"Split {split_name!r} is missing column(s) {missing}; columns found: {found}. {hint}")


def check_mcq_row(row: dict[str, Any], where: str) -> None:
    """Validate one multiple-choice row: 4 options, a label in range and ``answer == options[label]``.

    ``where`` locates the row (split and index); the message never quotes row text, which may be forget-set content.
    """
    options, label = row["options"], row["label"]
    if len(options) != NUM_OPTIONS:
        raise ValueError(f"{where}: expected {NUM_OPTIONS} options, got {len(options)}.")
    if not 0 <= label < NUM_OPTIONS or options[label] != row["answer"]:
        raise ValueError(f"{where}: label {label} does not point at the answer among the {len(options)} options.")
