"""The demo's two reference models, trained once per seed and cached: vanilla (everything) and oracle (everything
except the forget people's image questions).

Both start from the same tokenizer and initial weights and follow the same recipe (plain ``transformers.Trainer``,
answer-only loss), so only the training data differs: the vanilla trains until it has memorised every person's
questions (``memorisation.py``), the oracle as many epochs. A cached model is written to a temporary directory next to its
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
from ..data.schema import has_options
from ..data.synthetic import benchmark_corpus, oracle_training_set, vanilla_training_set
from ..evaluation.evaluator import Evaluator
from ..tiny_models import tiny_llava
from .config import DemoConfig, default_cache_dir, library_version
from .memorisation import MemorisationBar, MemorisationCheck

REFERENCE_MODELS = ("vanilla", "oracle")
# The splits the vanilla must have memorised (MemorisationBar): every person's questions it was trained on. The general
# split (drawn shapes) is a utility measure, not a memorisation target: the vanilla reaches 0.8-0.95 there.
MEMORISED_SPLITS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "holdout_qa", "validation_qa")
CACHE_MARKER = "hf_unlearn_demo.json"


def fit_reference_model(model, processing_class, train_set: datasets.Dataset, recipe, seed: int, output_dir: str,
                        show_progress: bool = False, epochs: int | None = None, learning_rate: float | None = None,
                        check: MemorisationCheck | None = None) -> None:
    """The recipe every demo trains its vanilla and oracle with: a plain ``transformers.Trainer``, answer-only loss,
    AdamW with linear decay over ``recipe.num_train_epochs`` and no checkpoints. With ``learning_rate`` (a top-up)
    the rate is constant for ``epochs`` and ``check`` may end it early (``memorisation.py``)."""
    top_up = learning_rate is not None
    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs or recipe.num_train_epochs,
        learning_rate=learning_rate if top_up else recipe.learning_rate, per_device_train_batch_size=recipe.batch_size,
        warmup_steps=0 if top_up else recipe.warmup_steps, weight_decay=0.0,
        lr_scheduler_type="constant" if top_up else "linear", seed=seed, data_seed=seed, save_strategy="no",
        report_to="none", logging_steps=50, remove_unused_columns=False, disable_tqdm=not show_progress,
        dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    set_seed(seed)
    Trainer(model=model, args=args, train_dataset=train_set, data_collator=UnlearnDataCollator(processing_class),
            callbacks=[check] if check is not None else None).train()
    model.eval()


def memorisation_check(model, processing_class, splits: dict[str, datasets.Dataset], bar: MemorisationBar,
                       batch_size: int = 32) -> MemorisationCheck:
    """``splits`` measured by the ``Evaluator``: mean answer NLL, and multiple-choice accuracy where rows have
    options (generation-only splits are held to the NLL bar alone)."""

    def measure(name: str, rows: datasets.Dataset, accuracy: bool) -> dict[str, float]:
        evaluator = Evaluator(model, processing_class, {name: rows}, batch_size=batch_size)
        values = {"nll": float(evaluator.answer_nll(rows).mean())}
        if accuracy and has_options(rows):
            values["accuracy"] = evaluator.mcq_accuracy(rows)
        return values

    return MemorisationCheck(splits, measure, bar)


def train_to_criterion(kind: str, model, processing_class, train_set: datasets.Dataset,
                       memorised: dict[str, datasets.Dataset], recipe, seed: int, output_dir: str,
                       vanilla_epochs: int | None = None, show_progress: bool = False) -> int:
    """Train a reference model by ``recipe`` and return its epochs: the vanilla tops up until ``memorised`` clears
    ``recipe.memorisation`` (``MemorisationError`` if it cannot), the oracle trains ``vanilla_epochs`` in the same
    two phases. ``recipe.memorisation=None``: the recipe alone, unchecked (pipeline tests)."""
    fit_reference_model(model, processing_class, train_set, recipe, seed, output_dir, show_progress)
    bar, base = recipe.memorisation, recipe.num_train_epochs
    if bar is None:
        return base
    top_up_rate = recipe.learning_rate * bar.top_up_learning_rate_scale
    if kind == "oracle":
        if vanilla_epochs is None:
            raise ValueError("The oracle trains as many epochs as the vanilla needed: train the vanilla first.")
        if vanilla_epochs > base:
            fit_reference_model(model, processing_class, train_set, recipe, seed, output_dir, show_progress,
                                epochs=vanilla_epochs - base, learning_rate=top_up_rate)
        return vanilla_epochs
    check = memorisation_check(model, processing_class, memorised, bar)
    if check.passes(model):
        return base
    fit_reference_model(model, processing_class, train_set, recipe, seed, output_dir, show_progress,
                        epochs=bar.max_top_up_epochs, learning_rate=top_up_rate, check=check)
    if check.reached_at_epoch is None:
        raise check.error(kind, seed, base)
    return base + check.reached_at_epoch


def train_reference_model(
    kind: str, benchmark: datasets.DatasetDict, config: DemoConfig, output_dir: str, show_progress: bool = True,
    vanilla_epochs: int | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor, float, dict[str, Any]]:
    """Train the ``vanilla`` (to the memorisation bar) or ``oracle`` (as many epochs) tiny LLaVA from scratch;
    returns (model, processor, seconds, {"epochs": ...})."""
    if kind not in REFERENCE_MODELS:
        raise ValueError(f"kind must be one of {REFERENCE_MODELS}, got {kind!r}.")
    start = time.perf_counter()
    train_set = vanilla_training_set(benchmark) if kind == "vanilla" else oracle_training_set(benchmark)
    # Same tokenizer and initial weights for both: only the training data differs.
    model, processor = tiny_llava(
        seed=config.seed, image_size=config.benchmark.image_size, corpus=benchmark_corpus(benchmark),
        **asdict(config.model),
    )
    memorised = {name: benchmark[name] for name in MEMORISED_SPLITS if len(benchmark.get(name, [])) > 0}
    epochs = train_to_criterion(kind, model, processor, train_set, memorised, config.training, config.seed,
                                output_dir, vanilla_epochs, show_progress)
    return model, processor, time.perf_counter() - start, {"epochs": epochs}


def cached_reference_models(
    root: str,
    train: Callable[..., tuple[Any, Any, float, dict[str, Any]]],
    load: Callable[[str], tuple[Any, Any]],
    record: dict[str, Any],
    marker_name: str = CACHE_MARKER,
    log: Callable[[str], None] = print,
    label: str = "demo",
) -> dict[str, dict[str, Any]]:
    """``{"vanilla": {...}, "oracle": {...}}``, each with ``model``, ``processor``, ``path``, ``cached`` (loaded
    rather than trained in this call), ``train_time_s`` (of the original training run) and ``epochs``.

    ``train(kind, scratch_dir, vanilla_epochs=...) -> (model, processor, seconds, {"epochs": ...})`` builds a missing
    one (the oracle gets the vanilla's epochs); ``load(path) -> (model, processor)`` reads a cached one; ``record``
    goes into the marker file. A model is written to a temporary directory next to its final place and renamed once
    complete (the marker last), so an interrupted run never leaves a half-written cache entry.
    """
    os.makedirs(root, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for kind in REFERENCE_MODELS:
        path = os.path.join(root, kind)
        marker = os.path.join(path, marker_name)
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                info = json.load(f)
            model, processor = load(path)
            log(f"[{label}] {kind}: loaded from cache {path}")
            out[kind] = dict(model=model, processor=processor, path=path, cached=True,
                             train_time_s=info["train_time_s"], epochs=info.get("epochs"))
            continue
        log(f"[{label}] {kind}: training from scratch (cached afterwards in {path})")
        tmp = tempfile.mkdtemp(prefix=f".{kind}-", dir=root)
        try:
            vanilla_epochs = out["vanilla"]["epochs"] if kind == "oracle" else None
            model, processor, seconds, info = train(kind, os.path.join(tmp, "trainer"), vanilla_epochs=vanilla_epochs)
            shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            with open(os.path.join(tmp, marker_name), "w", encoding="utf-8") as f:
                json.dump({"kind": kind, "train_time_s": seconds, **info, **record}, f, indent=2)
            if os.path.isdir(path):  # a concurrent run finished first, or a stale entry without marker
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        out[kind] = dict(model=model, processor=processor, path=path, cached=False, train_time_s=seconds, **info)
    return out


def load_or_train_reference_models(
    benchmark: datasets.DatasetDict,
    config: DemoConfig,
    cache_dir: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """The VLM demo's vanilla and oracle at ``config.seed`` (see ``cached_reference_models``), cached under
    ``<cache>/demo/<hash of settings and versions>``."""
    root = os.path.join(cache_dir or default_cache_dir(), "demo", config.cache_key())

    def load(path: str):
        return LlavaForConditionalGeneration.from_pretrained(path).eval(), LlavaProcessor.from_pretrained(path)

    def train(kind: str, scratch: str, vanilla_epochs: int | None = None):
        return train_reference_model(kind, benchmark, config, scratch, show_progress, vanilla_epochs)

    record = {"settings": config.settings(), "cache_key": config.cache_key(), "hf_unlearn_version": library_version()}
    return cached_reference_models(root, train, load, record, log=log)
