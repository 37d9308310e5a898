"""``hf-unlearn demo --real``: the built-in benchmark on real pretrained weights and real photos.

The model is ``hf_unlearn.real_llava`` (SmolLM2-135M-Instruct + DINOv2-S/14, 157 M parameters); the
characters are fictitious names and facts on real photos from ``skimage.data`` (``data/real_photos.py``), with
transformed photos as the test split. Per seed:

1. **vanilla** memorises every trained character's photo questions and every character's text facts, **oracle** the
   same minus the forget characters' photo questions (plain ``transformers.Trainer``; both cached like the tiny
   demo's references). Only the last ``train_layers`` decoder layers train: a full fine-tune of the 135 M language
   model costs about 10 s a step on 2 cores, and these layers alone memorise the rows in about ten steps.
2. Each registered method runs from vanilla with its registered hyperparameters (its "defaults"), on the same
   trainable set (``trainable_part``: the last decoder layers; the vision tower and projector for MMUnlearner, whose
   mask covers them; VKD picks its own).
3. Every model is evaluated by the demo's ``evaluate_rows`` and summarised by ``summarise_seeds`` /
   ``write_outputs``, so the report has the same columns as the tiny demo's.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
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
from transformers import AutoProcessor, LlavaForConditionalGeneration, Trainer, TrainingArguments, set_seed

from ..data.collators import UnlearnDataCollator
from ..data.real_photos import RealPhotoBenchmarkConfig, build_real_photo_benchmark, oracle_rows, vanilla_rows
from ..evaluation.report import results_table
from ..evaluation.stats import RowValues
from ..models import PROJECTOR, VISION, parameter_group
from ..trainers.registry import METHODS, MethodData, MethodUnavailableError
from .config import default_cache_dir, library_version
from .evaluation import evaluate_rows, reference_nll
from .pipeline import RESULT_KEYS, SeedResult, deterministic, machine_info, summarise_seeds, write_outputs
from .recipe import build_demo_trainer, demo_hyperparameters
from .references import CACHE_MARKER, REFERENCE_MODELS

# Which parameters a method trains on the real model (anything else is frozen before its trainer is built).
TRAINABLE_PART = {"mmunlearner": "vision", "vkd": None}  # None: the trainer chooses (VKD freezes the LLM itself)
REAL_RECIPE_VERSION = 1


@dataclass
class RealDemoConfig:
    """Everything the real-weights demo's results depend on."""

    benchmark: RealPhotoBenchmarkConfig = field(default_factory=RealPhotoBenchmarkConfig)
    image_size: int = field(default=56, metadata={"help": "Processor / model input size (56 px: 16 image tokens)."})
    train_layers: int = field(default=2, metadata={"help": "Last decoder layers that train (memorising, unlearning)."})
    memorise_steps: int = field(default=40, metadata={"help": "Plain-Trainer steps of vanilla and oracle."})
    memorise_learning_rate: float = field(default=1e-3, metadata={"help": "Their constant learning rate."})
    batch_size: int = field(default=8, metadata={"help": "Rows per memorisation step."})
    method_steps: int | None = field(
        default=None, metadata={"help": "Cap on every method's registered max_steps (None: the registry's)."})
    method_batch_size: int = field(default=4, metadata={"help": "Rows per unlearning step (the registry's)."})
    seed: int = field(default=0, metadata={"help": "Seed of the benchmark, the projector and every run."})
    eval_batch_size: int = field(default=8, metadata={"help": "Questions per evaluation forward pass."})
    max_new_tokens: int = field(default=8, metadata={"help": "Generation budget for ROUGE-L."})

    def __post_init__(self):
        self.benchmark = replace(self.benchmark, seed=self.seed, image_size=self.image_size)

    @classmethod
    def quick(cls, seed: int = 0) -> RealDemoConfig:
        """4 trained characters (1 forget), 1 holdout, name questions only (no text facts), 4 steps per method: a
        first look that fits in a CI-sized budget, not a result (one forget question)."""
        return cls(benchmark=RealPhotoBenchmarkConfig(num_people=4, num_forget=1, num_holdout_people=1, attributes=()),
                   memorise_steps=12, batch_size=4, method_steps=4, seed=seed)

    def settings(self) -> dict[str, Any]:
        return {**asdict(self), "benchmark": asdict(self.benchmark)}

    def cache_key(self) -> str:
        from ..real_llava import cache_key as model_key

        payload = {k: v for k, v in self.settings().items() if k not in ("method_steps", "method_batch_size",
                                                                         "eval_batch_size", "max_new_tokens")}
        payload.update(recipe=REAL_RECIPE_VERSION, model=model_key(self.image_size, self.seed),
                       hf_unlearn=library_version())
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Trainable sets and memorisation (shared with the slow test tier)
# ----------------------------------------------------------------------------------------------------------------
def set_trainable(model: torch.nn.Module, part: str | None, train_layers: int = 2) -> list[str]:
    """``part="last_layers"``: only the last ``train_layers`` decoder layers; ``"vision"``: vision tower and projector;
    ``None``: leave as is. Returns the trainable names."""
    if part is not None:
        num = model.config.text_config.num_hidden_layers
        last = tuple(f"language_model.layers.{i}." for i in range(num - train_layers, num))
        for name, p in model.named_parameters():
            if part == "last_layers":
                p.requires_grad_(any(s in name for s in last))
            elif part == "vision":
                p.requires_grad_(parameter_group(name) in (VISION, PROJECTOR))
            else:
                raise ValueError(f"part={part!r}; use 'last_layers', 'vision' or None.")
    return [name for name, p in model.named_parameters() if p.requires_grad]


def memorise(model, processor, rows: datasets.Dataset, output_dir: str, steps: int, learning_rate: float,
             batch_size: int, seed: int, train_layers: int = 2) -> float:
    """Fine-tune the last decoder layers on ``rows`` with a plain ``Trainer`` (answer-only loss); returns seconds."""
    start = time.perf_counter()
    set_trainable(model, "last_layers", train_layers)
    args = TrainingArguments(
        output_dir=output_dir, max_steps=steps, learning_rate=learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=batch_size, weight_decay=0.0, seed=seed, data_seed=seed, save_strategy="no",
        report_to="none", logging_steps=1, remove_unused_columns=False, disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0,
    )
    set_seed(seed)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=UnlearnDataCollator(processor))
    trainer.train()
    model.eval()
    return time.perf_counter() - start


def method_data(benchmark: datasets.DatasetDict) -> MethodData:
    """Forget = the forget characters' photo questions; retain = other characters' photos + all text facts."""
    text = datasets.concatenate_datasets([benchmark["retain_qa"], benchmark["forget_qa"]])
    retain = datasets.concatenate_datasets([benchmark["retain_vqa"], text])
    preserve = {"retain": benchmark["retain_vqa"], "text": text}
    return MethodData(forget=benchmark["forget_vqa"], retain=retain,
                      preserve={k: v for k, v in preserve.items() if len(v) > 0})


def run_real_method(name: str, vanilla, processor, data: MethodData, output_dir: str, seed: int,
                    train_layers: int = 2, **overrides: Any):
    """A copy of ``vanilla`` unlearned by the registered method ``name``; returns (model, trainer, seconds)."""
    model = copy.deepcopy(vanilla)
    set_trainable(model, TRAINABLE_PART.get(name, "last_layers"), train_layers)
    set_seed(seed)
    start = time.perf_counter()
    trainer = build_demo_trainer(name, model, processor, data, output_dir, seed, logging_strategy="no", use_cpu=True,
                                 **overrides)
    trainer.train()
    model = trainer.model.eval()
    return model, trainer, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# Reference models (cached)
# ----------------------------------------------------------------------------------------------------------------
def load_or_train_real_references(benchmark, config: RealDemoConfig, cache_dir: str | None = None,
                                  log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """``{"vanilla": {...}, "oracle": {...}}`` like the tiny demo's ``load_or_train_reference_models``."""
    from ..real_llava import real_llava_path

    base = real_llava_path(config.image_size, config.seed, cache_dir)
    root = os.path.join(cache_dir or default_cache_dir(), "demo_real", config.cache_key())
    os.makedirs(root, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for kind in REFERENCE_MODELS:
        path = os.path.join(root, kind)
        if not os.path.isfile(os.path.join(path, CACHE_MARKER)):
            log(f"[demo --real] {kind}: memorising from the real model (cached afterwards in {path})")
            model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
            processor = AutoProcessor.from_pretrained(base)
            rows = vanilla_rows(benchmark) if kind == "vanilla" else oracle_rows(benchmark)
            tmp = tempfile.mkdtemp(prefix=f".{kind}-", dir=root)
            try:
                seconds = memorise(model, processor, rows, os.path.join(tmp, "trainer"), config.memorise_steps,
                                   config.memorise_learning_rate, config.batch_size, config.seed, config.train_layers)
                shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
                model.save_pretrained(tmp)
                processor.save_pretrained(tmp)
                with open(os.path.join(tmp, CACHE_MARKER), "w", encoding="utf-8") as f:
                    json.dump({"kind": kind, "train_time_s": seconds, "settings": config.settings()}, f, indent=2)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            cached = False
        else:
            log(f"[demo --real] {kind}: loaded from cache {path}")
            cached = True
        with open(os.path.join(path, CACHE_MARKER), encoding="utf-8") as f:
            info = json.load(f)
        out[kind] = dict(model=LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval(),
                         processor=AutoProcessor.from_pretrained(path), path=path, cached=cached,
                         train_time_s=info["train_time_s"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------------------------
def run_real_seed(config: RealDemoConfig, methods: Sequence[str], cache_dir: str | None = None,
                  log: Callable[[str], None] = print) -> SeedResult:
    set_seed(config.seed)
    benchmark = build_real_photo_benchmark(config.benchmark)
    refs = load_or_train_real_references(benchmark, config, cache_dir, log)
    vanilla, processor = refs["vanilla"]["model"], refs["vanilla"]["processor"]
    result = SeedResult(seed=config.seed, num_questions={k: len(v) for k, v in benchmark.items()},
                        cached={k: refs[k]["cached"] for k in REFERENCE_MODELS})
    # No relearning attack: it fine-tunes every evaluated model again, too slow for a 157 M model on 2 cores.
    common = dict(seed=config.seed, relearn=None, batch_size=config.eval_batch_size,
                  max_new_tokens=config.max_new_tokens)
    reference = reference_nll(refs["oracle"]["model"], processor, benchmark, config.eval_batch_size)
    for kind in REFERENCE_MODELS:
        result.rows[kind] = {**evaluate_rows(refs[kind]["model"], processor, benchmark, reference=reference, **common),
                             "wall_time_s": RowValues.of([refs[kind]["train_time_s"]])}
    data = method_data(benchmark)
    for name in methods:
        overrides: dict[str, Any] = {"per_device_train_batch_size": config.method_batch_size}
        if config.method_steps is not None:
            overrides["max_steps"] = min(config.method_steps, demo_hyperparameters(name).get("max_steps", 10**9))
        log(f"[demo --real] {name} ...")
        try:
            with tempfile.TemporaryDirectory(prefix=f"hf_unlearn_real_{name}_") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model, trainer, seconds = run_real_method(name, vanilla, processor, data, tmp, config.seed,
                                                          config.train_layers, **overrides)
                del trainer
        except MethodUnavailableError as err:
            result.notes.append(f"{name}: skipped, its trainer is not importable ({err}).")
            continue
        result.rows[name] = {**evaluate_rows(model, processor, benchmark, reference=reference, **common),
                             "wall_time_s": RowValues.of([seconds])}
        del model
    return result


def run_real_demo(config: RealDemoConfig | None = None, output_dir: str = "hf_unlearn_demo_real",
                  methods: Sequence[str] | None = None, cache_dir: str | None = None,
                  seeds: Sequence[int] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the real-weights demo at each seed; returns (and writes to ``output_dir``) the results payload."""
    config = config or RealDemoConfig()
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; registered methods: {sorted(METHODS)}.")
    seeds = list(seeds) if seeds is not None else [config.seed]
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with deterministic():
        seed_results = [run_real_seed(replace(config, seed=s), methods, cache_dir, log) for s in seeds]
    summary = summarise_seeds(seed_results)
    total = time.perf_counter() - start
    settings = {**config.settings(), "seeds": seeds, "hf_unlearn_version": library_version(), "methods": methods,
                "model": "real_llava (SmolLM2-135M-Instruct + DINOv2-S/14, 157M)",
                "hyperparameters": {m: demo_hyperparameters(m) for m in methods}}
    settings.pop("seed")
    payload = {
        "benchmark": settings,
        "methods": {m: {k: summary["means"][m].get(k) for k in RESULT_KEYS} for m in summary["means"]},
        "intervals": summary["intervals"], "paired": summary["paired"], "distance": summary.get("distance", {}),
        "distance_paired": summary.get("distance_paired", {}),
        "per_seed": {str(r.seed): r.points() for r in seed_results},
        "num_questions": seed_results[0].num_questions,
        "notes": list(dict.fromkeys(n for r in seed_results for n in r.notes)),
        "run": {"date": started, "wall_time_s": round(total, 1), "machine": machine_info(),
                "cached": {str(r.seed): r.cached for r in seed_results}},
    }
    write_outputs(payload, output_dir)
    log(results_table(payload))
    log(f"[demo --real] seeds {seeds}: total wall time {total:.1f} s; results in {os.path.abspath(output_dir)}")
    return payload
