"""The run lock (issue 23): one winner among simultaneous starters, a dead run's lock free whatever it holds.

Starters are forked processes released together by a barrier: the race the issue measured (two starters that both
find a dead run's lock both held it in 21/203 trials) happens within microseconds of each other, which a barrier
gives and a process start per trial would not.
"""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import warnings

import pytest

from hf_unlearn.trainers import run_lock
from hf_unlearn.trainers.checkpointing import LOCK_NAME, OutputDirInUseError, RunLock

STARTERS, TRIALS = 6, 120


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _starter(out: str, barrier, results, index: int) -> None:
    warnings.simplefilter("ignore")
    for trial in range(TRIALS):
        barrier.wait()  # the parent has planted the dead run's lock
        lock = RunLock(out)
        try:
            lock.acquire()
            outcome = 1
        except OutputDirInUseError:
            outcome = 0
        except BaseException:  # noqa: BLE001 - any other error is a failure of the lock (e.g. FileNotFoundError)
            outcome = 2
        results[trial * STARTERS + index] = outcome
        barrier.wait()  # every starter has tried while the winner still holds the lock
        lock.release()
        barrier.wait()  # released: the parent plants the next trial's lock


def test_simultaneous_starters_on_a_dead_runs_lock_exactly_one_wins(tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    dead = json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "started": "2024-01-01T00:00:00"})
    left_by_kill = [dead, "", "{not json"]  # a dead run's record, a kill during start-up, garbage
    context = multiprocessing.get_context("fork")  # the starters need nothing but the lock code already imported
    barrier = context.Barrier(STARTERS + 1)
    results = context.Array("i", [-1] * (STARTERS * TRIALS))
    procs = [context.Process(target=_starter, args=(out, barrier, results, i), daemon=True) for i in range(STARTERS)]
    for p in procs:
        p.start()
    try:
        for trial in range(TRIALS):
            with open(os.path.join(out, LOCK_NAME), "w") as f:
                f.write(left_by_kill[trial % len(left_by_kill)])
            barrier.wait(timeout=60)
            barrier.wait(timeout=60)
            barrier.wait(timeout=60)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    outcomes = [list(results[t * STARTERS:(t + 1) * STARTERS]) for t in range(TRIALS)]
    winners = [row.count(1) for row in outcomes]
    assert [row.count(2) for row in outcomes] == [0] * TRIALS  # no starter failed with anything but InUse
    assert winners == [1] * TRIALS, f"trials without exactly one winner: {sum(w != 1 for w in winners)}/{TRIALS}"
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # the last winner released it


@pytest.mark.parametrize("left", ["dead_run", "empty", "garbage"])
def test_a_dead_runs_lock_is_taken_over_whatever_it_holds(left, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    content = {"dead_run": json.dumps({"host": socket.gethostname(), "pid": pid, "started": "x"}),
               "empty": "", "garbage": "\x00{"}[left]
    (out / LOCK_NAME).write_text(content)
    lock = RunLock(str(out))
    expected = {"dead_run": rf"left by a run that is no longer running \(pid {pid}\); taking it over",
                "garbage": "left unreadable by a run that was killed; taking it over"}
    if left in expected:
        with pytest.warns(UserWarning, match=expected[left]):
            lock.acquire()
    else:  # an empty file is what a kill between creating and writing it leaves: nothing to say
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lock.acquire()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK_NAME).exists()


def _hold(out: str, ready) -> None:
    RunLock(out).acquire()
    ready.set()
    signal.pause()


def test_a_live_holder_is_named_and_its_lock_is_free_once_it_is_killed(tmp_path):
    out = str(tmp_path / "run")
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold, args=(out, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(timeout=60)
        with pytest.raises(OutputDirInUseError, match=rf"output_dir '{out}' is in use by another run \(pid "
                                                      rf"{holder.pid} on {socket.gethostname()}, started .*Use another "
                                                      r"output_dir, or wait for that run to end\.$"):
            RunLock(out).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no release runs: the file still names it, the OS lock is gone
        holder.join()
    lock = RunLock(out)
    with pytest.warns(UserWarning, match=rf"no longer running \(pid {holder.pid}\)"):
        lock.acquire()
    lock.release()


def test_without_flock_the_lock_is_an_exclusive_create_that_says_to_delete_it(tmp_path, monkeypatch):
    def no_flock(fd, blocking=True):
        raise OSError(38, "Function not implemented")  # ENOSYS, as on a file system without flock

    monkeypatch.setattr(run_lock, "lock_descriptor", no_flock)
    out = str(tmp_path / "run")
    first = RunLock(out)
    first.acquire()
    assert json.loads(open(os.path.join(out, LOCK_NAME)).read())["pid"] == os.getpid()  # whole from the first byte
    with pytest.raises(OutputDirInUseError, match=rf"in use by another run \(pid {os.getpid()} .*no file locks, so a "
                                                  rf"lock left by a killed run cannot be told from a live one: if no "
                                                  rf"run is using it, delete {os.path.join(out, LOCK_NAME)}"):
        RunLock(out).acquire()
    first.release()
    assert os.listdir(out) == []
