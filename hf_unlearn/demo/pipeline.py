"""The built-in demo: synthetic benchmark -> vanilla and oracle tiny LLaVA -> every registered method -> report.

1. Build the synthetic benchmark (``SyntheticBenchmarkConfig``) and train a tokenizer on its text.
2. Train **vanilla** (all splits, forget images included) and **oracle** (the same minus the forget image questions)
   with a plain ``transformers.Trainer`` until they memorise; both are cached under
   ``<cache>/demo/<hash of settings + versions>/{vanilla,oracle}`` so later runs skip training.
3. Starting from vanilla, run each method of ``METHODS`` on forget = forget_vqa, retain = retain_vqa + retain_qa +
   forget_qa (the forget people's text knowledge must stay).
4. Evaluate vanilla, oracle and every method; write ``results.json``, ``report.md`` and ``tradeoff.png``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import datasets
import torch
import transformers
from transformers import LlavaForConditionalGeneration, LlavaProcessor, Trainer, TrainingArguments, set_seed

from ..data.collators import UnlearnDataCollator
from ..data.synthetic import (
    SyntheticBenchmarkConfig,
    benchmark_corpus,
    build_synthetic_benchmark,
    oracle_training_set,
    vanilla_training_set,
)
from ..evaluation.attacks import RelearnConfig, relearn_attack
from ..evaluation.evaluator import Evaluator
from ..evaluation.report import markdown_table, plot_tradeoff, render_report, write_text
from ..testing.models import tiny_llava
from .methods import METHODS, MethodData, MethodUnavailableError, get_method

logger = logging.getLogger(__name__)

RESULT_KEYS = (
    "forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc", "retain_qa_acc", "test_vqa_acc", "general_acc",
    "forget_rougeL", "mia_auc", "relearn_acc", "wall_time_s",
)  # fmt: skip
REFERENCE_MODELS = ("vanilla", "oracle")
CACHE_MARKER = "hf_unlearn_demo.json"
CACHE_ENV = "HF_UNLEARN_CACHE"


def _version() -> str:
    import hf_unlearn

    return hf_unlearn.__version__


@dataclass
class DemoModelConfig:
    """Size of the tiny LLaVA (``hf_unlearn.testing.tiny_llava``); the image size is the benchmark's."""

    hidden_size: int = field(default=64, metadata={"help": "Language-model hidden size."})
    num_layers: int = field(default=2, metadata={"help": "Language-model decoder layers."})
    vision_hidden_size: int = field(default=32, metadata={"help": "Vision-tower hidden size."})
    vision_layers: int = field(default=2, metadata={"help": "Vision-tower layers."})
    patch_size: int = field(default=8, metadata={"help": "Vision patch size (32x32 images -> 16 image tokens)."})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary trained on the benchmark text."})


@dataclass
class DemoTrainingConfig:
    """The recipe of the vanilla and oracle models (plain ``Trainer``, answer-only loss)."""

    num_train_epochs: int = field(default=40, metadata={"help": "Epochs over the training set."})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate (linear decay)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per step."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up steps."})


@dataclass
class DemoConfig:
    """Everything the demo's results depend on. ``DemoConfig.quick()`` is the reduced run for tests and CI."""

    benchmark: SyntheticBenchmarkConfig = field(default_factory=SyntheticBenchmarkConfig)
    model: DemoModelConfig = field(default_factory=DemoModelConfig)
    training: DemoTrainingConfig = field(default_factory=DemoTrainingConfig)
    relearn: RelearnConfig | None = field(default_factory=RelearnConfig)
    seed: int = field(default=0, metadata={"help": "Seed of the benchmark, the models and every training run."})
    eval_batch_size: int = field(default=16, metadata={"help": "Questions per evaluation forward pass."})
    max_new_tokens: int = field(default=8, metadata={"help": "Generation budget for ROUGE-L."})

    def __post_init__(self):
        # One seed governs everything, so `--seed N` changes people, portraits, initialisation and batch order.
        self.benchmark = replace(self.benchmark, seed=self.seed)
        if self.relearn is not None:
            self.relearn = replace(self.relearn, seed=self.seed)

    @classmethod
    def quick(cls, seed: int = 0) -> "DemoConfig":
        """A reduced benchmark (8 people) and recipe that finishes in about a minute on 2 cores."""
        return cls(
            benchmark=SyntheticBenchmarkConfig(num_people=8, num_holdout_people=3, forget_ratio=0.25, num_general=8),
            training=DemoTrainingConfig(num_train_epochs=40, batch_size=8),
            relearn=RelearnConfig(steps=5),
            seed=seed,
        )

    def settings(self) -> dict[str, Any]:
        """All settings as plain JSON values."""
        return {
            "benchmark": asdict(self.benchmark), "model": asdict(self.model), "training": asdict(self.training),
            "relearn": asdict(self.relearn) if self.relearn is not None else None, "seed": self.seed,
            "eval_batch_size": self.eval_batch_size, "max_new_tokens": self.max_new_tokens,
        }

    def cache_key(self) -> str:
        """Hash of what the vanilla and oracle weights depend on (settings and library versions)."""
        payload = {
            "benchmark": asdict(self.benchmark), "model": asdict(self.model), "training": asdict(self.training),
            "seed": self.seed, "hf_unlearn": _version(), "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0], "datasets": datasets.__version__,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    """``$HF_UNLEARN_CACHE`` or ``~/.cache/hf_unlearn``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "hf_unlearn")


# ------------------------------------------------------------------------------------------------------------------
# Vanilla and oracle: train once, cache
# ------------------------------------------------------------------------------------------------------------------
def train_reference_model(
    kind: str, benchmark: datasets.DatasetDict, config: DemoConfig, output_dir: str, show_progress: bool = True
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor, float]:
    """Train the ``vanilla`` or ``oracle`` tiny LLaVA from scratch; returns (model, processor, seconds)."""
    if kind not in REFERENCE_MODELS:
        raise ValueError(f"kind must be one of {REFERENCE_MODELS}, got {kind!r}.")
    start = time.perf_counter()
    train_set = vanilla_training_set(benchmark) if kind == "vanilla" else oracle_training_set(benchmark)
    # Same tokenizer and initial weights for both: only the training data differs.
    model, processor = tiny_llava(
        seed=config.seed, image_size=config.benchmark.image_size, corpus=benchmark_corpus(benchmark),
        **asdict(config.model),
    )
    recipe = config.training
    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=recipe.num_train_epochs, learning_rate=recipe.learning_rate,
        per_device_train_batch_size=recipe.batch_size, warmup_steps=recipe.warmup_steps, weight_decay=0.0,
        lr_scheduler_type="linear", seed=config.seed, data_seed=config.seed, save_strategy="no", report_to="none",
        logging_steps=50, remove_unused_columns=False, disable_tqdm=not show_progress, dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    set_seed(config.seed)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=UnlearnDataCollator(processor))
    trainer.train()
    model.eval()
    return model, processor, time.perf_counter() - start


def load_or_train_reference_models(
    benchmark: datasets.DatasetDict,
    config: DemoConfig,
    cache_dir: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """``{"vanilla": {...}, "oracle": {...}}``, each with ``model``, ``processor``, ``path``, ``cached`` (loaded
    rather than trained in this call) and ``train_time_s`` (of the original training run).

    A model is written to a temporary directory next to its final place and renamed once complete, so an
    interrupted run never leaves a half-written cache entry.
    """
    root = os.path.join(cache_dir or default_cache_dir(), "demo", config.cache_key())
    os.makedirs(root, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for kind in REFERENCE_MODELS:
        path = os.path.join(root, kind)
        marker = os.path.join(path, CACHE_MARKER)
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                info = json.load(f)
            model = LlavaForConditionalGeneration.from_pretrained(path).eval()
            processor = LlavaProcessor.from_pretrained(path)
            log(f"[demo] {kind}: loaded from cache {path}")
            out[kind] = dict(model=model, processor=processor, path=path, cached=True,
                             train_time_s=info["train_time_s"])
            continue
        log(f"[demo] {kind}: training from scratch (cached afterwards in {path})")
        tmp = tempfile.mkdtemp(prefix=f".{kind}-", dir=root)
        try:
            model, processor, seconds = train_reference_model(kind, benchmark, config, os.path.join(tmp, "trainer"),
                                                              show_progress)
            shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            info = {"kind": kind, "train_time_s": seconds, "settings": config.settings(),
                    "cache_key": config.cache_key(), "hf_unlearn_version": _version()}
            with open(os.path.join(tmp, CACHE_MARKER), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
            if os.path.isdir(path):  # a concurrent run finished first, or a stale entry without marker
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        out[kind] = dict(model=model, processor=processor, path=path, cached=False, train_time_s=seconds)
    return out


# ------------------------------------------------------------------------------------------------------------------
# Methods and evaluation
# ------------------------------------------------------------------------------------------------------------------
def method_data(benchmark: datasets.DatasetDict) -> MethodData:
    """Forget = forget_vqa; retain = retain_vqa + retain_qa + forget_qa; preserve sets for saliency masks."""
    text = datasets.concatenate_datasets([benchmark["retain_qa"], benchmark["forget_qa"]])
    retain = datasets.concatenate_datasets([benchmark["retain_vqa"], text])
    return MethodData(forget=benchmark["forget_vqa"], retain=retain,
                      preserve={"retain": benchmark["retain_vqa"], "text": text})


def evaluate_model(model, processor, benchmark: datasets.DatasetDict, config: DemoConfig) -> dict[str, float | None]:
    """Every metric of ``RESULT_KEYS`` except ``wall_time_s`` (``relearn_acc`` is None without a relearn config)."""
    set_seed(config.seed)
    evaluator = Evaluator(model, processor, benchmark, batch_size=config.eval_batch_size,
                          max_new_tokens=config.max_new_tokens)
    metrics: dict[str, float | None] = dict(evaluator.evaluate())
    metrics["relearn_acc"] = None
    if config.relearn is not None:
        metrics["relearn_acc"] = relearn_attack(model, processor, benchmark["forget_vqa"], config.relearn,
                                                eval_batch_size=config.eval_batch_size)["relearn_acc"]
    return metrics


def run_method(
    name: str, vanilla, processor, data: MethodData, config: DemoConfig
) -> tuple[torch.nn.Module, float, str | None]:
    """Unlearn a copy of ``vanilla`` with the registered method; returns (model, seconds, note or None).

    Raises ``MethodUnavailableError`` when the method's trainer cannot be imported.
    """
    from ..trainers.base import UnlearningDivergedError

    spec = get_method(name)
    model = copy.deepcopy(vanilla)
    set_seed(config.seed)
    note = None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hf_unlearn_{name}_") as tmp:
        # Quiet: the demo prints one table, not every method's loss log.
        trainer = spec.build_trainer(model, processor, data, tmp, config.seed, logging_strategy="no")
        try:
            trainer.train()
        except UnlearningDivergedError:
            # The diverging step never touched the weights: evaluate the model as it was before it.
            note = f"{name}: the loss diverged at step {trainer.state.global_step}; evaluated the last finite model."
        stopped = getattr(trainer, "stopped_early_at", None)
        if stopped:
            note = f"{name}: stopped early at step {stopped[0]} (forget NLL {stopped[1]:.1f})."
    seconds = time.perf_counter() - start
    model = trainer.model
    model.eval()
    del trainer
    return model, seconds, note


def _check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; registered methods: {sorted(METHODS)}.")
    return list(methods)


def run_demo(
    config: DemoConfig | None = None,
    output_dir: str = "hf_unlearn_demo",
    methods: Sequence[str] | None = None,
    cache_dir: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo end to end; returns the content of ``results.json`` (also written to ``output_dir``)."""
    config = config or DemoConfig()
    methods = _check_methods(list(METHODS) if methods is None else methods)
    total_start = time.perf_counter()
    set_seed(config.seed)
    benchmark = build_synthetic_benchmark(config.benchmark)
    refs = load_or_train_reference_models(benchmark, config, cache_dir, show_progress, log)
    vanilla, processor = refs["vanilla"]["model"], refs["vanilla"]["processor"]

    from tqdm.auto import tqdm

    results: dict[str, dict[str, float | None]] = {}
    notes: list[str] = []
    bar = tqdm(total=len(REFERENCE_MODELS) + len(methods), desc="demo", disable=not show_progress)
    for kind in REFERENCE_MODELS:
        bar.set_postfix_str(f"evaluating {kind}")
        results[kind] = {**evaluate_model(refs[kind]["model"], processor, benchmark, config),
                         "wall_time_s": refs[kind]["train_time_s"]}
        bar.update(1)
    data = method_data(benchmark)
    for name in methods:
        bar.set_postfix_str(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model, seconds, note = run_method(name, vanilla, processor, data, config)
        except MethodUnavailableError as err:
            notes.append(f"{name}: skipped, its trainer is not importable ({err}).")
            log(f"[demo] skipping {name}: {err}")
            bar.update(1)
            continue
        if note:
            notes.append(note)
        results[name] = {**evaluate_model(model, processor, benchmark, config), "wall_time_s": seconds}
        del model
        bar.update(1)
    bar.close()

    results = {name: {k: row.get(k) for k in RESULT_KEYS} for name, row in results.items()}
    settings = {**config.settings(), "hf_unlearn_version": _version(), "cache_key": config.cache_key(),
                "methods": methods}
    payload = {"benchmark": settings, "methods": results}
    total = time.perf_counter() - total_start
    write_outputs(payload, output_dir, notes=notes, total_time_s=total)
    log(markdown_table(results))
    for n in notes:
        log(f"* {n}")
    log(f"[demo] total wall time {total:.1f} s; results in {os.path.abspath(output_dir)}")
    return payload


def write_outputs(payload: dict[str, Any], output_dir: str, notes: Sequence[str] = (),
                  total_time_s: float | None = None) -> None:
    """Write ``results.json``, ``report.md`` and ``tradeoff.png`` into ``output_dir`` (each atomically)."""
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, "results.json"), json.dumps(payload, indent=2) + "\n")
    b = payload["benchmark"].get("benchmark", {})
    shown = {k: b[k] for k in ("num_people", "num_holdout_people", "forget_ratio", "image_size") if k in b}
    shown["seed"] = payload["benchmark"].get("seed")
    if total_time_s is not None:
        notes = [*notes, f"Total wall time of this run: {total_time_s:.1f} s (vanilla/oracle rows: their training "
                         "time, possibly from an earlier run whose models were cached)."]
    write_text(os.path.join(output_dir, "report.md"),
               render_report(payload["methods"], settings=shown, notes=notes, title="hf_unlearn demo"))
    plot_tradeoff(payload["methods"], os.path.join(output_dir, "tradeoff.png"))
