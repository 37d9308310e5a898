"""Where a named model, reference, teacher, mask or dataset comes from: a local folder first, then the Hub.

``transformers`` and ``huggingface_hub`` already load either; what they cannot do is tell a user who mistyped a
*local* path that the path is missing: ``runs/npo`` is also a valid Hub id, so the error that comes back talks about
the Hub or offline mode. ``locate`` decides first, and names the missing path when the name can only be a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__ = ["Source", "hub_load_error", "locate"]


@dataclass(frozen=True)
class Source:
    """A resolved name: ``location`` is an existing local path when ``local``, else a Hub repo id."""

    location: str
    local: bool


def _looks_like_a_path(name: str) -> bool:
    """True when ``name`` cannot be meant as a Hub id: absolute, ``./``, ``~``, several ``/``, a backslash, or a first
    component that is an existing local folder (``runs/npo`` when ``runs/`` exists)."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") != 1:
        return True
    return os.path.isdir(name.split("/", 1)[0])


def locate(name: str | os.PathLike, what: str = "model") -> Source:
    """Resolve ``name``: an existing local file or folder wins; else a Hub repo id; else ``FileNotFoundError``.

    Args:
        name: a local path or a Hub repo id (``org/name``).
        what: what is named, for the message (``"model"``, ``"data.forget"``, ``"mask"``, ...).
    """
    raw = os.fspath(name)
    path = os.path.expanduser(raw)
    if os.path.exists(path):
        return Source(path, local=True)
    if _looks_like_a_path(raw):
        raise FileNotFoundError(
            f"{what}: {raw!r} does not exist (looked for the local path {os.path.abspath(path)!r}); pass an existing "
            "folder or file, or a Hub id such as 'org/name'."
        )
    try:
        validate_repo_id(raw)
    except HFValidationError:
        raise FileNotFoundError(
            f"{what}: {raw!r} is neither an existing local path nor a valid Hub id; pass a folder or 'org/name'."
        ) from None
    return Source(raw, local=False)


def hub_load_error(what: str, repo_id: str, err: BaseException) -> OSError:
    """The error for a Hub id that did not load: it says that no local folder of that name exists either."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    hint = " HF_HUB_OFFLINE is set: unset it to download, or pass a local folder." if offline else (
        " Check the id, your network and your token (`hf auth login`), or pass a local folder.")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OSError(f"{what}: no local folder {repo_id!r}, and loading it from the Hub failed "
                   f"({type(err).__name__}: {first_line}).{hint}")
