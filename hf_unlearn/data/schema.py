"""The common row schema shared by every benchmark split (synthetic, MLLMU-Bench, CLEAR, TOFU, MUSE, FIUBench,
UMU-Bench, SafeEraser, CoVUBench).

Collators, trainers and the evaluator only ever see these columns:

=============  ==========================  ===============================================================
column         type                        meaning
=============  ==========================  ===============================================================
``person_id``  int                         the person (CoVUBench: the concept) the row is about; ``-1`` for
                                           rows tied to no person
``kind``       str                         ``"vqa"`` (image + question), ``"qa"`` (text only), ``"general"``, or
                                           ``"text"``: raw text continuation (MUSE), ``question`` = the prefix
                                           (may be empty), ``answer`` = the continuation, no chat template
``image``      ``datasets.Image()``/None   PIL image once decoded; None for text-only rows
``question``   str                         VQA questions never name the person; QA questions do
``answer``     str                         ground truth, equal to ``options[label]`` when there are options
``options``    list[str] or None           >= 2 answer strings of the same attribute type (4 in the synthetic
                                           benchmark and MLLMU-Bench; CLEAR names: the true name + every
                                           perturbed name); None in generation-only splits (scored by ROUGE-L)
``label``      int or None                 index of the correct option; None when ``options`` is None
=============  ==========================  ===============================================================

A split is either multiple-choice (every row has options) or generation-only (no row has); ``has_options`` tells
which. The number of options may differ between rows of a multiple-choice split.

Text benchmarks (TOFU, the synthetic text benchmark) add ``truth_ratio_features()``: ``paraphrased_answer`` (str or
None) and ``perturbed_answers`` (list[str] or None), the answers TOFU's truth ratio compares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets

KINDS = ("vqa", "qa", "general", "text")
NUM_OPTIONS = 4  # options per question in the synthetic benchmark, and the minimum the loaders build
MIN_OPTIONS = 2
SCHEMA_COLUMNS = ("person_id", "kind", "image", "question", "answer", "options", "label")
REQUIRED_TRAIN_COLUMNS = ("question", "answer")
MCQ_COLUMNS = ("question", "answer", "options", "label")


def benchmark_features(extra: Mapping[str, Any] | None = None) -> datasets.Features:
    """The `datasets.Features` of every split in the common schema (a fresh object each call), plus ``extra``."""
    return datasets.Features(
        {
            "person_id": datasets.Value("int64"),
            "kind": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "options": datasets.List(datasets.Value("string")),
            "label": datasets.Value("int64"),
            **(extra or {}),
        }
    )


def truth_ratio_features() -> dict[str, Any]:
    """The extra features of text benchmarks: ``paraphrased_answer`` and ``perturbed_answers``."""
    return {"paraphrased_answer": datasets.Value("string"),
            "perturbed_answers": datasets.List(datasets.Value("string"))}


def rows_to_dataset(
    rows: Sequence[dict[str, Any]], extra_features: Mapping[str, Any] | None = None
) -> datasets.Dataset:
    """Build a split in the common schema from row dicts (an empty list gives an empty, typed split).

    ``image`` may be a PIL image, an encoded ``{"bytes": ..., "path": ...}`` struct, or None. ``extra_features``
    adds columns (e.g. ``truth_ratio_features()``); rows lacking one get None.
    """
    features = benchmark_features(extra_features)
    columns: dict[str, list[Any]] = {name: [row.get(name) if name not in SCHEMA_COLUMNS else row[name] for row in rows]
                                     for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


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


def has_options(dataset: datasets.Dataset) -> bool:
    """Whether a split is multiple-choice (its rows carry ``options``) rather than generation-only.

    Reads only the first row's ``options`` (no image is decoded): a split is all one or the other.
    """
    if "options" not in dataset.column_names or len(dataset) == 0:
        return False
    return dataset.select_columns(["options"])[0]["options"] is not None


def check_mcq_row(row: dict[str, Any], where: str) -> None:
    """Validate one multiple-choice row: >= 2 options, a label in range and ``answer == options[label]``.

    ``where`` locates the row (split and index); the message never quotes row text, which may be forget-set content.
    """
    options, label = row["options"], row["label"]
    if options is None or len(options) < MIN_OPTIONS:
        count = 0 if options is None else len(options)
        raise ValueError(f"{where}: expected at least {MIN_OPTIONS} options, got {count}; a generation-only row has "
                         "options=None and label=None in a split without options.")
    if label is None or not 0 <= label < len(options) or options[label] != row["answer"]:
        raise ValueError(f"{where}: label {label} does not point at the answer among the {len(options)} options.")
