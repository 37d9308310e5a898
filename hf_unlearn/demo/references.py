"""The demo's two reference models, trained once per seed and cached: vanilla (everything) and oracle (everything
except the forget people's image questions).

Both start from the same tokenizer and initial weights and follow the same recipe (plain ``transformers.Trainer``,
answer-only loss), so only the training data differs. A cached model is written to a temporary directory next to its
final place and renamed once complete: an interrupted run never leaves a half-written cache entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import datasets
from transformers import LlavaForConditionalGeneration, LlavaProcessor, Trainer, TrainingArguments, set_seed

from ..data.collators import UnlearnDataCollator
from ..data.synthetic import benchmark_corpus, oracle_training_set, vanilla_training_set
from ..testing.models import tiny_llava
from .config import DemoConfig, default_cache_dir, library_version

REFERENCE_MODELS = ("vanilla", "oracle")
CACHE_MARKER = "hf_unlearn_demo.json"


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
                    "cache_key": config.cache_key(), "hf_unlearn_version": library_version()}
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


