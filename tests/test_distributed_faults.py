"""Faults under the launchers (issue 23, item 6): 2 CPU processes, gloo, ``tests/fault_worker.py``.

* A NaN injected into the gradient at step 2 (rank 0's backward, before the reduction, which spreads it to every
  rank as a real one would be) is undone on every rank, bit for bit, and named exactly as in a single process, under
  DDP and FSDP2 (FSDP2: each rank holds a shard of the gradient, so the guard sums the norm over the ranks before it
  names the cause).
* Rank 0 is SIGKILLed while it writes checkpoint-2's ``optimizer.pt`` (half written, torchrun then stops rank 1); a
  2-process resume gives the uninterrupted 2-process run's weights, bit for bit (same data order, RNG states and
  reductions: deterministic by construction).

Two torchrun launches: (1) the uninterrupted run, the DDP NaN run, the run that is killed; (2) the resume, the FSDP2
NaN run. The single-process NaN run, the reference for the message, runs in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fault_worker.py"


def _torchrun(work: Path, *jobs: str) -> subprocess.Popen:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(free_port()), str(WORKER), str(work), *jobs], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> dict:
    import fault_worker
    from distributed_worker import write_init

    work = tmp_path_factory.mktemp("faults")
    write_init(str(work))
    killed = work / "killed"
    first = _torchrun(work, f"train:{work / 'straight'}", "nan:ddp", f"crash:{killed}")
    deadline = time.monotonic() + 420
    while not (work / "killed.ready").exists():  # an event: rank 0 is in the middle of writing optimizer.pt
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"the run to kill never reached its crash point:\n{first.communicate()[0][-6000:]}")
        time.sleep(0.05)
    rank0 = int((work / "killed.ready").read_text())
    os.kill(rank0, signal.SIGKILL)
    output = first.communicate(timeout=300)[0]
    assert first.returncode != 0 and "Signal 9 (SIGKILL) received by PID" in output
    left = sorted(os.listdir(killed))
    second = _torchrun(work, f"train:{killed}", "nan:fsdp2")
    output = second.communicate(timeout=600)[0]
    if second.returncode != 0:
        pytest.fail(f"the resume launch failed ({second.returncode}):\n{output[-6000:]}")
    fault_worker.nan(str(work), "single")
    return {"work": work, "left_at_kill": left, "resume_log": output}


@pytest.mark.parametrize("launcher", ["ddp", "fsdp2"])
def test_nan_gradient_under_a_launcher_is_undone_and_named_like_single_process(faults, launcher):
    from fault_worker import NAN_STEP

    work = faults["work"]
    single = json.loads((work / "nan_single.json").read_text())
    run = json.loads((work / f"nan_{launcher}.json").read_text())
    expected = single["messages"][0]
    assert f"step {NAN_STEP} made the weights non-finite (the gradient norm was nan)" in expected
    assert run["messages"] == [expected, expected]  # both ranks stop, with the single-process message
    assert run["restored"] == [True, True]  # each rank's weights (FSDP2: its shards) are those before the step
    assert run["injected"][0] > 0 and run["injected"][1] == 0  # only rank 0's backward was poisoned
    assert run["global_step"] == single["global_step"] == NAN_STEP - 1
    assert run["wrapper"] == {"ddp": "DistributedDataParallel", "fsdp2": "FSDPLlavaForConditionalGeneration"}[launcher]


def test_sigkill_of_a_ddp_rank_during_a_checkpoint_write_resumes_to_the_uninterrupted_run(faults):
    from hf_unlearn.hub.push import publishable_files
    from hf_unlearn.model_folder import check_publishable
    from hf_unlearn.trainers.checkpointing import LOCK_NAME, scan_checkpoints

    work = faults["work"]
    assert faults["left_at_kill"] == ["checkpoint-1", "checkpoint-2.tmp", LOCK_NAME]
    log = faults["resume_log"]
    assert "Skipping incomplete checkpoint(s) checkpoint-2.tmp" in log and "Resuming from checkpoint-1" in log
    for name in ("killed.fp32.safetensors", "killed/model.safetensors"):
        straight, resumed = load_file(str(work / name.replace("killed", "straight"))), load_file(str(work / name))
        assert straight.keys() == resumed.keys()
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), name
    killed = work / "killed"
    complete, incomplete = scan_checkpoints(str(killed))
    assert [s for s, _ in complete] == [1, 2, 3, 4] and incomplete == []
    check_publishable(str(killed), publishable_files(killed))  # one whole save
    assert not [n for n in os.listdir(killed) if n.startswith(".tmp") or n.endswith((".tmp", ".old", ".lock"))]
