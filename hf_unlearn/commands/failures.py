"""How a failure ends an ``hf-unlearn`` command.

A problem the user can fix (a bad value, a missing file, a folder in use, a full disk) is one
``hf-unlearn <command>: error: ...`` line and exit status 2. Anything else is a bug until shown otherwise: one line that
says it is unexpected, names the exception type and says how to see the traceback, and exit status 1, so it is never
mistaken for a usage mistake nor swallowed. ``hf-unlearn --debug <command> ...`` re-raises both with their traceback.
"""

from __future__ import annotations

import sys

__all__ = ["report_failure", "user_error_message"]

# The exception types whose message is written for the user (names the problem and the fix), by defining module.
# Looked up in sys.modules: a module that was never imported cannot have raised its error (and importing it here
# would load torch to print one line).
_USER_ERRORS = {
    "hf_unlearn.commands.run_config": ("ConfigError",),
    "hf_unlearn.disk": ("DiskWriteError",),
    "hf_unlearn.data.collators": ("CollationError",),
    "hf_unlearn.trainers.checkpointing": ("OutputDirInUseError", "ResumeMismatchError"),
    "hf_unlearn.trainers.divergence": ("UnlearningDivergedError",),
    "hf_unlearn.saliency.errors": ("MaskFileError",),
}


def _one_line(text: str, limit: int = 2000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of a failure the user can fix, or None for an unexpected one."""
    for module_name, names in _USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(err, tuple(getattr(module, name) for name in names)):
            return _one_line(str(err))
    import errno

    from ..disk import disk_error, disk_problem

    code = disk_problem(err)
    filename = getattr(err, "filename", None)
    if code in (errno.EACCES, errno.EPERM):  # reading or writing: say which file, not which disk
        return _one_line(f"permission denied on {filename or 'a file'!r} ({err.strerror}); change its permissions "
                         "or choose another path.")
    if code is not None:  # a full or read-only disk nobody translated: name the file it was writing
        return _one_line(str(disk_error(err, filename or "the output folder", option=None)))
    return None


def report_failure(command: str, err: BaseException) -> int:
    """Print one line for ``err`` raised by ``command`` and return the exit status (2: the user's, 1: unexpected)."""
    prog = f"hf-unlearn {command}"
    if isinstance(err, KeyboardInterrupt):
        print(f"{prog}: interrupted.", file=sys.stderr)
        return 130
    message = user_error_message(err)
    if message is not None:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    detail = _one_line(str(err), 300)
    print(f"{prog}: unexpected error ({type(err).__name__}{': ' + detail if detail else ''}). This may be a bug in "
          f"hf_unlearn: rerun as `hf-unlearn --debug {command} ...` to see the traceback, and report it.",
          file=sys.stderr)
    return 1
