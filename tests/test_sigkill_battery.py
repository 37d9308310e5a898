"""A small instance of ``scripts/sigkill_battery.py`` (issue 23): 2 SIGKILLs at random moments of a single-process
run, each resumed to the end, equal bit for bit to the uninterrupted run. The full battery (20 single-process, 5 with
one DDP rank killed) is the script: ``python scripts/sigkill_battery.py --single 20 --ddp 5``.

The killed runs are separate processes; the uninterrupted run and the resumes run in this process (same library,
same single thread: the same kernels, so the same bits), which saves two interpreter starts per trial.
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

    import fault_worker
    from distributed_worker import write_init

    work = str(tmp_path)
    write_init(work)
    straight = os.path.join(work, "straight")
    fault_worker.train(work, straight)
    window = os.path.getmtime(straight + ".fp32.safetensors") - os.path.getmtime(straight + ".started")
    rng = random.Random(0)
    for i in range(2):
        out = os.path.join(work, f"killed_{i}")
        landed = sigkill_battery.kill_and_resume(work, out, window, rng, ddp=False,
                                                 resume=lambda: fault_worker.train(work, out))
        assert sigkill_battery.same_as_uninterrupted(out, straight) == [], landed
