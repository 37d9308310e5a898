"""SIGKILL at random moments, resume, compare with an uninterrupted run: single process and one DDP rank.

    python scripts/sigkill_battery.py --single 20 --ddp 5 [--seed 0] [--workdir DIR]

Each trial starts ``tests/fault_worker.py train:OUT`` (tiny LLaVA, ``GATrainer``, 4 steps, a checkpoint every step,
then ``save_model()``; DDP: ``torchrun --nproc_per_node 2``, gloo, CPU), waits until training has started, sleeps a
uniformly random time within the uninterrupted run's window from the start of training to the end of its final
save, and SIGKILLs the process (DDP: one
rank, chosen at random; torchrun then stops the other). It then runs the same command again, which resumes from the
last complete checkpoint (or starts over when there is none) and saves. The trial passes when:

* the final weights in memory and the saved ``model.safetensors`` are bit for bit those of an uninterrupted run of the
  same launcher (the code path is deterministic: same data order, same RNG states, same reductions);
* the output folder is one whole save that ``hf-unlearn push`` would accept (``check_publishable``), and no
  temporary file, staging folder or lock is left.

Prints one line per trial (where the kill landed: which checkpoints were complete, what was half written) and
``single: N/N, ddp: M/M``; exits 1 if any trial failed. Runs on CPU; about 30 s per single-process trial and 60 s per
DDP trial on 2 shared cores.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "fault_worker.py")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(workdir: str, out: str, ddp: bool) -> list[str]:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(_free_port())] if ddp else [sys.executable]
    return prefix + [WORKER, workdir, f"train:{out}"]


def run_to_end(workdir: str, out: str, ddp: bool) -> None:
    for leftover in (f"{out}.started",):
        if os.path.exists(leftover):
            os.remove(leftover)
    proc = subprocess.run(command(workdir, out, ddp), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"run of {out} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")


def timed_run(workdir: str, out: str, ddp: bool) -> float:
    """An uninterrupted run; returns its window (s) from the start of training to the end of its final save (the
    final weights are written right after it; the interpreter's exit after that is not worth killing)."""
    run_to_end(workdir, out, ddp)
    return os.path.getmtime(f"{out}.fp32.safetensors") - os.path.getmtime(f"{out}.started")


def state_at_kill(out: str) -> str:
    """Where a kill landed, from what it left: complete checkpoints, half-written ones, a staged save."""
    from hf_unlearn.trainers.checkpointing import SAVE_STAGING, scan_checkpoints

    if not os.path.isdir(out):
        return "before anything was written"
    complete, incomplete = scan_checkpoints(out)
    parts = [f"complete: {','.join(str(s) for s, _ in complete) or '-'}"]
    if incomplete:
        parts.append("half written: " + ",".join(os.path.basename(p) for p, _ in incomplete))
    if os.path.isdir(os.path.join(out, SAVE_STAGING)):
        parts.append("model save staged")
    if os.path.isfile(os.path.join(out, "model.safetensors")):
        parts.append("model saved")
    return "; ".join(parts)


def kill_and_resume(workdir: str, out: str, window: float, rng: random.Random, ddp: bool,
                    resume=None) -> str:
    """One trial: start, SIGKILL at a random moment of the training window, resume to the end. Returns where the
    kill landed. ``resume`` (default: the worker again, in a new process) runs the resumed run."""
    for leftover in (f"{out}.started",):
        if os.path.exists(leftover):
            os.remove(leftover)
    proc = subprocess.Popen(command(workdir, out, ddp), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not os.path.exists(f"{out}.started") and proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError("the run never started training")
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, window))
    if proc.poll() is not None:
        landed = "after the run ended"
    else:
        victim = rng.randrange(2) if ddp else 0
        pid = int(open(f"{out}.rank{victim}.pid").read()) if ddp else proc.pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=300)  # torchrun stops the other rank
        landed = (f"rank {victim}: " if ddp else "") + state_at_kill(out)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (resume or (lambda: run_to_end(workdir, out, ddp)))()
    return landed


def same_as_uninterrupted(out: str, straight: str) -> list[str]:
    """Why the resumed run ``out`` differs from the uninterrupted ``straight`` ([] when it does not)."""
    import torch
    from safetensors.torch import load_file

    from hf_unlearn.hub.push import publishable_files
    from hf_unlearn.model_folder import publish_problems

    problems = []
    for name in (".fp32.safetensors", "/model.safetensors"):
        a, b = load_file(straight + name), load_file(out + name)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            problems.append(f"{name.strip('/.')} differs")
    problems += publish_problems(out, publishable_files(out))
    leftovers = [n for n in os.listdir(out) if n.startswith(".tmp") or n.endswith((".tmp", ".old", ".lock"))]
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    return problems


def battery(single: int, ddp: int, seed: int = 0, workdir: str | None = None, log=print) -> dict[str, tuple[int, int]]:
    from distributed_worker import write_init

    workdir = workdir or tempfile.mkdtemp(prefix="sigkill-battery-")
    if not os.path.isdir(os.path.join(workdir, "init")):
        write_init(workdir)
    rng = random.Random(seed)
    counts = {}
    for launcher, trials in (("single", single), ("ddp", ddp)):
        if not trials:
            continue
        is_ddp = launcher == "ddp"
        straight = os.path.join(workdir, f"{launcher}_straight")
        window = timed_run(workdir, straight, is_ddp)
        log(f"{launcher}: uninterrupted run, training and saving window {window:.1f} s")
        passed = 0
        for i in range(trials):
            out = os.path.join(workdir, f"{launcher}_{i}")
            landed = kill_and_resume(workdir, out, window, rng, is_ddp)
            problems = same_as_uninterrupted(out, straight)
            passed += not problems
            log(f"{launcher} #{i + 1}: killed {landed} -> {'equal' if not problems else '; '.join(problems)}")
        counts[launcher] = (passed, trials)
    log(", ".join(f"{k}: {p}/{n}" for k, (p, n) in counts.items()))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=20, help="single-process trials (default 20)")
    parser.add_argument("--ddp", type=int, default=5, help="DDP trials, one rank killed (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and ranks")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a new temporary folder)")
    args = parser.parse_args()
    counts = battery(args.single, args.ddp, args.seed, args.workdir)
    return 0 if all(p == n for p, n in counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
