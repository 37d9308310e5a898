"""Reading the row sets of ``hf-unlearn run`` and ``hf-unlearn eval``: files, folders, Hub datasets, built-in splits.

Every set is checked before any model is loaded: a format the trainers read (question/answer, TRL prompt/completion or
``messages``: docs/data_formats.md), at least one row, every row trainable (``hf_unlearn.data.rows``). Problems are
``ConfigError`` lines naming the key (``data.forget``, ``eval.holdout``, ``--retain``) and the fix.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from .run_config import ConfigError

__all__ = ["DATA_FILE_BUILDERS", "first_line", "load_data", "preserve_sets"]

DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _load_local(spec: str, split: str | None, what: str):
    import datasets

    if os.path.isdir(spec):
        try:
            return datasets.load_from_disk(spec)
        except Exception as err:  # noqa: BLE001 - a folder the user named; say what the reader said, in one line
            raise ConfigError(f"{what}: {spec!r} is a folder that datasets.load_from_disk cannot read "
                              f"({type(err).__name__}: {first_line(err)}); pass a datasets.save_to_disk folder "
                              "holding rows, or data file(s).") from None
    files = sorted(glob.glob(os.path.expanduser(spec)))
    exts = {os.path.splitext(f)[1].lower() for f in files}
    if len(exts) != 1 or next(iter(exts)) not in DATA_FILE_BUILDERS:
        raise ConfigError(f"{what}: files must share one of the extensions {sorted(DATA_FILE_BUILDERS)}, "
                          f"got {sorted(exts)}.")
    builder = DATA_FILE_BUILDERS[exts.pop()]
    if all(os.path.getsize(f) == 0 for f in files):  # `datasets` fails on them with StopIteration or worse
        raise ConfigError(f"{what}: {spec!r} is empty (0 bytes): it holds no rows. Pass the file with the "
                          "rows.")
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # noqa: BLE001 - any reader failure is a file the user can fix; named, not a traceback
        if "corresponds to no data" in str(err):  # datasets' words for a file with a schema and no rows
            raise ConfigError(f"{what}: {spec!r} holds no rows.") from None
        layout = " (JSON Lines: one row object per line)" if builder == "json" else ""
        raise ConfigError(f"{what}: {spec!r} could not be read as {builder} ({type(err).__name__}: "
                          f"{first_line(err.__cause__ or err)}). Check that it is valid {builder}{layout}.") from None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_rows(loaded, spec: str, what: str) -> None:
    """At least one row, in a format the trainers read (question/answer, TRL prompt/completion or ``messages``:
    docs/data_formats.md), and every row trainable (data/rows.py)."""
    from ..data.rows import is_known_row_format, validate_rows

    columns = list(loaded.column_names)
    missing = ["answer"] if "question" in columns else ["completion"] if "prompt" in columns else None
    if not is_known_row_format(loaded) and missing:
        raise ConfigError(
            f"{what}: {spec!r} lacks column(s) {missing}; columns found: {columns}. Rows need `question` and `answer` "
            "(+ optional `image`), TRL's `prompt` and `completion`, or chat `messages` (docs/data_formats.md); rename a "
            "column with dataset.rename_column(old, new).")
    if not is_known_row_format(loaded):
        raise ConfigError(
            f"{what}: {spec!r} has no answer column; columns found: {columns}. Rows need `question` and `answer` "
            "(+ optional `image`), TRL's `prompt` and `completion`, or chat `messages` (+ optional `images`) "
            "(docs/data_formats.md); rename a column with dataset.rename_column(old, new).")
    if len(loaded) == 0:
        raise ConfigError(f"{what}: {spec!r} holds no rows.")
    try:
        validate_rows(loaded, f"{what}")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _load_hub(repo_id: str, split: str | None, what: str):
    import datasets

    from ..hub.resolve import hub_load_error

    try:
        return datasets.load_dataset(repo_id, split=split)
    except Exception as err:  # noqa: BLE001 - the message says a local folder of that name was not found either
        raise ConfigError(str(hub_load_error(f"{what}", repo_id, err))) from None


def load_data(spec: str | dict | None, what: str, benchmark, section: str = "data"):
    """One dataset from ``builtin:<split>[+<split>...]``, a ``save_to_disk`` folder, data file(s) or a Hub id.

    A name is looked up locally first (folder, file or glob), then on the Hub.
    """
    import datasets

    from ..hub.resolve import locate

    if spec is None:
        return None
    split = None
    if isinstance(spec, dict):
        spec, split = spec["path"], spec.get("split")
    name, what = what, f"{section}.{what}"  # messages name the key: data.forget, eval.holdout, ...
    if spec.startswith("builtin"):
        names = spec.partition(":")[2] or ("forget_vqa" if name == "forget" else "retain_vqa+retain_qa+forget_qa")
        parts = [n.strip() for n in names.split("+") if n.strip()]
        missing = [n for n in parts if n not in benchmark]
        if missing:
            raise ConfigError(f"{what}: unknown built-in split(s) {missing}; splits: {list(benchmark)}.")
        return datasets.concatenate_datasets([benchmark[n] for n in parts])
    if glob.glob(os.path.expanduser(spec)):
        loaded = _load_local(spec, split, what)
    else:
        try:
            source = locate(spec, f"{what}")
        except FileNotFoundError as err:
            raise ConfigError(f"{err} (a datasets.save_to_disk folder, parquet / json / jsonl / csv file(s) or a "
                              "glob, or builtin:<split>)") from None
        loaded = _load_local(source.location, split, what) if source.local else _load_hub(source.location, split,
                                                                                          what)
    if isinstance(loaded, datasets.DatasetDict) and split is None and len(loaded) == 1:
        split = next(iter(loaded))  # one split: no choice to make
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            raise ConfigError(f"{what}: {spec!r} holds splits {list(loaded)}; pick one with "
                              f"{{path: {spec}, split: <name>}}.")
        if split not in loaded:
            raise ConfigError(f"{what}: split {split!r} not in {list(loaded)}.")
        loaded = loaded[split]
    _check_rows(loaded, spec, what)
    return loaded


def preserve_sets(retain) -> dict[str, Any]:
    """Image rows and text rows of the retain set: the preserve sets a saliency mask is scored against."""
    from ..data.rows import rows_with_images

    if retain is None:
        return {}
    with_image = set(rows_with_images(retain))  # read without decoding an image, in every row format
    sets = {}
    if with_image:
        sets["retain"] = retain.select(sorted(with_image))
    if len(with_image) < len(retain):
        sets["text"] = retain.select([i for i in range(len(retain)) if i not in with_image])
    return sets
