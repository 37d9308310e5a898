"""Reading a benchmark published as JSON files next to image files (FIUBench, SafeEraser) from a local directory.

Each helper raises one clear error that names the file or record, what is missing, and the fix. Images are read as
encoded bytes (``{"bytes": ..., "path": None}``, decoded to PIL by ``datasets.Image``); nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .benchmarks import check_not_lfs_pointer
from .schema import check_columns


def require_directory(path: str, benchmark: str, download: str) -> None:
    """These benchmarks ship image files next to their JSON: only a local snapshot directory can be read."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path!r} is not a directory (relative paths start at {os.getcwd()}). The {benchmark} loader reads a "
            f"local snapshot (its JSON files and the image files they name). {download}, and pass that directory."
        )


def read_json_file(root: str, name: str, benchmark: str, download: str) -> Any:
    """``<root>/<name>`` parsed: a JSON document (array or object) or JSON lines (one object per line)."""
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        found = sorted(f for f in os.listdir(root) if f.endswith((".json", ".jsonl")))
        raise FileNotFoundError(f"{benchmark} file {name!r} not found in {root}; JSON files found: {found}. "
                                f"{download}, and pass that directory.")
    check_not_lfs_pointer(path, root)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is neither a JSON document nor JSON lines ({err}); download it again.") from err


def json_records(value: Any, path: str) -> list[dict[str, Any]]:
    """A parsed JSON file that must be a list of objects (one record each)."""
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ValueError(f"{path}: expected a JSON array (or JSON lines) of objects, one per record; got "
                         f"{type(value).__name__}.")
    return value


def require_fields(record: dict[str, Any], fields: Sequence[str], where: str, hint: str) -> None:
    """A record (or nested pair) lacking a field the loader reads: name the record, the fields missing and found."""
    check_columns(list(record), fields, where, hint=hint)


def read_image_file(root: str, relative: str, where: str, fix: str) -> dict[str, Any]:
    """The image a record names, relative to the snapshot (a leading ``./`` or ``dataset/`` is the upstream code's
    own folder and is tried without it), as encoded bytes."""
    clean = str(relative).replace("\\", "/")
    while clean.startswith("./"):
        clean = clean[2:]
    candidates = [os.path.join(root, clean)]
    if clean.startswith("dataset/"):
        candidates.append(os.path.join(root, clean[len("dataset/"):]))
    for candidate in candidates:
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                return {"bytes": f.read(), "path": None}
    raise FileNotFoundError(f"{where}: image {relative!r} not found (looked for {candidates}). {fix}")
