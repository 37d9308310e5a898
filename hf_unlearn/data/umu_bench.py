"""UMU-Bench (a unified benchmark for multimodal unlearning, ``linbojunzi/UMU-bench``) in the common schema.

Published layout: one parquet config per subset, ``DIR/<config>/train-00000-of-00001.parquet`` (``hf download
linbojunzi/UMU-bench --repo-type dataset --local-dir DIR``; on the Hub ``load_dataset(repo, config)``): ``forget_5``,
``forget_10``, ``forget_15``, ``retain_95``, ``retain_90``, ``retain_85``, the real people (``real_person`` locally,
as UMU-Bench's ``eval.py`` reads it; the ``Real_Person_Set`` subset on the Hub) and ``Full_Set``. Columns: ``ID``,
``image``, ``Biography``, ``MM_QA``, ``UM_QA``, ``Classify``, ``Cloze``, ``Generation``.

``Classify`` is a Python-literal string (parsed with ``ast.literal_eval``, never executed) of
``{"unimodal": {key: {"question", "options": {"A".."D"}, "answer": "B. ..."}}, "muitimodal": {key: {...}}}`` (the
published spelling; ``"multimodal"`` is accepted too). As UMU-Bench's ``eval.py``, the correct letter of both
questions of a key is the **unimodal** entry's ``answer``.

Splits returned (multiple-choice, 4 options each):

* ``forget_vqa`` / ``forget_qa``: the multimodal (image + question) / unimodal (text only) ``Classify`` questions
  of ``forget_N``;
* ``retain_vqa`` / ``retain_qa``: the same on ``retain_{100-N}``;
* ``general`` / ``general_qa``: the same on the real people (utility), ``person_id`` -1, kind ``"general"``.

``person_id`` is the numeric ``ID`` (its rank in sorted order if one is not numeric), as for MLLMU-Bench. Not loaded:
``Biography``, ``MM_QA`` / ``UM_QA`` (free-form QA), ``Cloze``, ``Generation``.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from typing import Any

import datasets

from .benchmarks import letter_label, person_ids, read_benchmark_config, stored_image
from .schema import rows_to_dataset

UMU_REPO = "linbojunzi/UMU-bench"
REAL_PERSON_CONFIGS = ("real_person", "Real_Person_Set")  # eval.py's folder name, then the Hub subset's
_LETTERS = "ABCD"


def _classify(value: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (unimodal, multimodal) question dicts of one ``Classify`` cell."""
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"{where}: Classify is not a Python-literal dict ({err}); download the data again.") from err
    multimodal = next((k for k in ("muitimodal", "multimodal") if isinstance(parsed, dict) and k in parsed), None)
    if not isinstance(parsed, dict) or "unimodal" not in parsed or multimodal is None:
        found = sorted(parsed) if isinstance(parsed, dict) else type(parsed).__name__
        raise ValueError(f"{where}: Classify needs 'unimodal' and 'muitimodal' question dicts; found: {found}.")
    return parsed["unimodal"] or {}, parsed[multimodal] or {}


def _mcq(item: dict[str, Any], label: int) -> tuple[str, list[str], str]:
    options = [str((item.get("options") or {}).get(k) or "") for k in _LETTERS]
    return item["question"], options, options[label]


def _profile_rows(
    profile: dict[str, Any], person_id: int, kinds: tuple[str, str], where: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The image and text MCQ rows of one profile; ``kinds`` = (image kind, text kind)."""
    unimodal, multimodal = _classify(profile["Classify"], where)
    image = stored_image(profile["image"])
    vqa, qa = [], []
    for key, text_item in unimodal.items():
        label = letter_label(text_item.get("answer"), f"{where}, Classify unimodal {key!r}", field="answer")
        question, options, answer = _mcq(text_item, label)
        qa.append(dict(person_id=person_id, kind=kinds[1], image=None, question=question, answer=answer,
                       options=options, label=label))  # fmt: skip
        if key not in multimodal:
            raise ValueError(f"{where}: Classify has unimodal question {key!r} but no multimodal twin.")
        question, options, answer = _mcq(multimodal[key], label)
        vqa.append(dict(person_id=person_id, kind=kinds[0], image=image, question=question, answer=answer,
                        options=options, label=label))  # fmt: skip
    return vqa, qa


def _real_person_config(path_or_repo: str) -> str:
    if os.path.isdir(path_or_repo):
        return next((c for c in REAL_PERSON_CONFIGS if os.path.isdir(os.path.join(path_or_repo, c))),
                    REAL_PERSON_CONFIGS[0])
    return REAL_PERSON_CONFIGS[1]


def load_umu_bench(path_or_repo: str, forget_split: str = "forget_5") -> datasets.DatasetDict:
    """Load UMU-Bench (a snapshot directory or the Hub id) into the common schema (see the module docstring)."""
    match = re.fullmatch(r"forget_(\d+)", forget_split)
    if not match or not 0 < int(match.group(1)) < 100:
        raise ValueError(f"forget_split must look like 'forget_5', 'forget_10' or 'forget_15', got {forget_split!r}.")
    retain_split = f"retain_{100 - int(match.group(1))}"

    def read(config: str, required: Sequence[str]) -> list[dict[str, Any]]:
        return read_benchmark_config(path_or_repo, config, required, benchmark="UMU-Bench", repo=UMU_REPO).to_pylist()

    columns = ("ID", "image", "Classify")
    forget, retain = read(forget_split, columns), read(retain_split, columns)
    ids = person_ids([str(p["ID"]) for p in forget + retain])
    splits: dict[str, list[dict[str, Any]]] = {}
    for name, profiles, config in (("forget", forget, forget_split), ("retain", retain, retain_split)):
        splits[f"{name}_vqa"], splits[f"{name}_qa"] = [], []
        for n, p in enumerate(profiles):
            vqa, qa = _profile_rows(p, ids[str(p["ID"])], ("vqa", "qa"), f"config {config!r} row {n} (ID {p['ID']})")
            splits[f"{name}_vqa"] += vqa
            splits[f"{name}_qa"] += qa
    real = _real_person_config(path_or_repo)
    splits["general"], splits["general_qa"] = [], []
    for n, p in enumerate(read(real, ("image", "Classify"))):
        vqa, qa = _profile_rows(p, -1, ("general", "general"), f"config {real!r} row {n}")
        splits["general"] += vqa
        splits["general_qa"] += qa
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})
