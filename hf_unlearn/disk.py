"""A read-only or full disk: one error that names the folder and what to free or change.

What surfaces otherwise depends on the writer: Python's ``OSError: [Errno 28]``, safetensors' ``SafetensorError: ...
No space left on device (os error 28)``, or torch's ``[enforce fail at inline_container.cc:672] . unexpected pos 704
vs 598`` from ``torch.save`` (optimizer states, ``training_args.bin``), which names neither the disk nor the folder.
``check_output_folder`` looks before anything is written (it writes nothing itself); ``explain_disk_errors`` turns
a failure during writing into ``DiskWriteError``.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager

__all__ = ["DiskWriteError", "check_output_folder", "disk_error", "disk_problem", "explain_disk_errors"]

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
# How writers that are not Python's own report the same errors.
_NO_SPACE_TEXT = ("unexpected pos", "PytorchStreamWriter failed writing", "No space left on device", "os error 28",
                  "Disk quota exceeded", "os error 122")
_READ_ONLY_TEXT = ("Read-only file system", "os error 30")


class DiskWriteError(OSError):
    """The disk under a folder is full, read-only or not writable; the message names the folder and the fix."""

    def __init__(self, message: str, code: int):
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"


def _existing(folder: str) -> str:
    """``folder`` or its nearest existing parent: where a new file or folder would go."""
    path = os.path.abspath(os.path.expanduser(folder))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _read_only(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _free(folder: str) -> int | None:
    try:
        return shutil.disk_usage(_existing(folder)).free
    except OSError:
        return None


def disk_problem(err: BaseException) -> int | None:
    """The errno a write failure amounts to (``ENOSPC``, ``EROFS``, ...), or None when it is not a disk problem."""
    if isinstance(err, OSError) and err.errno in NO_SPACE + NOT_WRITABLE:
        return err.errno
    if type(err).__name__ in ("RuntimeError", "SafetensorError"):  # torch.save and safetensors: only the text tells
        text = str(err)
        if any(marker in text for marker in _NO_SPACE_TEXT):
            return errno.ENOSPC
        if any(marker in text for marker in _READ_ONLY_TEXT):
            return errno.EROFS
    return None


def disk_error(err: BaseException | int, folder: str, option: str | None = "output_dir") -> DiskWriteError:
    """The ``DiskWriteError`` for ``err`` (an exception or an errno) while writing under ``folder``, which the user
    chose with ``option`` (None: not known)."""
    code = err if isinstance(err, int) else disk_problem(err)
    chosen_with = f" ({option})" if option else ""
    if code in NO_SPACE:
        free = _free(folder)
        return DiskWriteError(
            f"the disk holding {folder!r} is full ({_size(free) if free is not None else 'no space'} free) while "
            f"writing there. Free space on that disk, or choose a folder on another disk{chosen_with}; files already "
            "in the folder were not replaced.", errno.ENOSPC)
    reason = "on a read-only file system" if code == errno.EROFS else "not writable by this user"
    return DiskWriteError(f"{folder!r} is {reason}. Choose a writable folder{chosen_with}, or make it writable.",
                          code or errno.EACCES)


@contextmanager
def explain_disk_errors(folder: str, option: str = "output_dir"):
    """Re-raise a full, read-only or unwritable disk met inside the block as ``DiskWriteError`` naming ``folder``."""
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as err:
        filename = getattr(err, "filename", None)
        if disk_problem(err) is None or (filename and not _inside(filename, folder)):
            raise  # not a disk problem; or one with another file (a model read, a cache written), named elsewhere
        raise disk_error(err, folder, option) from err


def _inside(path, folder: str) -> bool:
    path, folder = os.path.abspath(os.fspath(path)), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folder(folder: str, needed_bytes: int = 0, what: str = "the run", option: str = "output_dir") -> None:
    """Before anything is written: ``folder`` (or the parent it would be created in) is on a writable disk with at
    least ``needed_bytes`` free. Writes nothing (``statvfs`` and ``access``, no probe file)."""
    existing = _existing(folder)
    if _read_only(existing):
        raise disk_error(errno.EROFS, folder, option)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise disk_error(errno.EACCES, folder, option)
    free = _free(folder)
    if free is not None and free < needed_bytes:
        raise DiskWriteError(
            f"the disk holding {folder!r} has {_size(free)} free, but {what} needs at least {_size(needed_bytes)}. "
            f"Free space on that disk, or choose a folder on another disk ({option}).", errno.ENOSPC)
