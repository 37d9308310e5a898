"""A small instance of ``scripts/sigkill_battery.py`` (issue 23): a SIGKILL at a random moment of a single-process
run, resumed to the end, equal bit for bit to the uninterrupted run. The full battery (20 single-process, 5 with one
DDP rank killed) is the script: ``python scripts/sigkill_battery.py --single 20 --ddp 5``.

Every run is a fresh process of the worker, as in the script: runs inside this test process would share whatever
earlier tests changed in torch's global state (thread count, deterministic algorithms), and need not give the same
bits as a fresh process.
"""

import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

pytestmark = pytest.mark.slow


def test_random_sigkills_resume_to_the_uninterrupted_run(tmp_path):
    import sigkill_battery

    from distributed_worker import write_init

    work = str(tmp_path)
    write_init(work)
    straight = os.path.join(work, "straight")
    window = sigkill_battery.timed_run(work, straight, ddp=False)
    out = os.path.join(work, "killed")
    landed = sigkill_battery.kill_and_resume(work, out, window, random.Random(0), ddp=False)
    assert sigkill_battery.same_as_uninterrupted(out, straight) == [], landed
