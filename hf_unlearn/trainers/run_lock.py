"""One run per ``output_dir``: ``output_dir/hf_unlearn.lock``, held with an OS file lock for the whole run.

The lock is ``flock`` (``LockFileEx`` on Windows) through ``filelock.lock_descriptor``: the kernel gives it to exactly
one of any number of processes that ask at the same moment, and takes it back when its holder dies, however it dies.
So a dead run's lock needs no takeover logic that two starters could both run: whoever gets the OS lock owns the
file, whatever it holds (a dead run's record, nothing at all after a kill during start-up, garbage). The file holds
the holder's host, pid and start time, for the message of those refused; it is deleted on release (while still
locked, and a starter checks after locking that the path still names the file it locked, so two starters can never
hold two different files).

Where the file system has no ``flock`` (some network or FUSE mounts), the lock falls back to an exclusive create of a
file that holds its record from the first byte (written aside, then hard-linked into place): still one winner, but a
dead run's lock cannot be told from a live one there, so the message says to delete it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings

from filelock import lock_descriptor, unlock_descriptor

LOCK_NAME = "hf_unlearn.lock"
# A starter that lost reads the winner's record; the winner writes it right after locking.
_READ_RECORD_FOR_S = 1.0


class OutputDirInUseError(RuntimeError):
    """Another run holds ``output_dir``'s lock file."""


def _no_flock(err: OSError) -> bool:
    return err.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK)


class RunLock:
    """``output_dir/hf_unlearn.lock``, held from ``acquire()`` to ``release()`` (see the module docstring)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.held = False
        self._fd: int | None = None
        self._exclusive_create = False

    def acquire(self) -> None:
        """Hold the lock, or raise ``OutputDirInUseError`` naming the run that holds it."""
        os.makedirs(self.output_dir, exist_ok=True)
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        while True:
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:  # released in between
                    continue
            try:
                locked = lock_descriptor(fd, blocking=False)
            except OSError as err:
                os.close(fd)
                if not _no_flock(err):
                    raise
                if created:  # the empty file just created would look like a lock
                    os.remove(self.path)
                self._acquire_by_exclusive_create(record)
                return
            if not locked:
                owner = self._read_record(fd, wait=True)
                os.close(fd)
                raise self._in_use(owner)
            try:  # a run that released unlinked the file after we opened it: lock the file at the path instead
                current = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                unlock_descriptor(fd)
                os.close(fd)
                continue
            self._take(fd, record)
            return

    def _take(self, fd: int, record: dict) -> None:
        left = self._read_record(fd, wait=False)
        size = os.fstat(fd).st_size
        if left is not None:  # released locks are deleted: a record here is a dead run's
            warnings.warn(f"output_dir's {LOCK_NAME} was left by a run that is no longer running (pid "
                          f"{left.get('pid')}); taking it over.", stacklevel=4)
        elif size:
            warnings.warn(f"output_dir's {LOCK_NAME} was left unreadable by a run that was killed; taking it over.",
                          stacklevel=4)
        data = json.dumps(record).encode("utf-8")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.fsync(fd)
        self._fd, self.held = fd, True

    def _read_record(self, fd: int, wait: bool) -> dict | None:
        deadline = time.monotonic() + (_READ_RECORD_FOR_S if wait else 0.0)
        while True:
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                data = json.loads(os.read(fd, 4096).decode("utf-8"))
                if isinstance(data, dict):
                    return data
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def _in_use(self, owner: dict | None, delete_hint: bool = False) -> OutputDirInUseError:
        who = (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
               if owner else "an unknown process")
        hint = (f" This file system has no file locks, so a lock left by a killed run cannot be told from a live one: "
                f"if no run is using it, delete {self.path}.") if delete_hint else ""
        return OutputDirInUseError(
            f"output_dir {self.output_dir!r} is in use by another run ({who}): two runs in one folder would "
            f"interleave and rotate away each other's checkpoints. Use another output_dir, or wait for that run to "
            f"end.{hint}"
        )

    def _acquire_by_exclusive_create(self, record: dict) -> None:
        aside = f"{self.path}.{os.getpid()}.{time.monotonic_ns()}"
        with open(aside, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(aside, self.path)  # fails if the lock exists: never an empty lock file
        except FileExistsError:
            try:
                with open(self.path, encoding="utf-8") as f:
                    owner = json.load(f)
            except (OSError, ValueError):
                owner = None
            raise self._in_use(owner if isinstance(owner, dict) else None, delete_hint=True) from None
        finally:
            os.remove(aside)
        self._exclusive_create, self.held = True, True

    def release(self) -> None:
        if not self.held:
            return
        try:
            os.remove(self.path)  # while still locked: a starter that opened it sees that it is gone
        except (FileNotFoundError, PermissionError):  # Windows cannot delete an open file; left for the next run
            pass
        if self._fd is not None:
            try:
                unlock_descriptor(self._fd)
            finally:
                os.close(self._fd)
            self._fd = None
        self.held = False
