"""Benchmark v3's reference models (issue 25): knowledge stored once in the language model, reached from the face.

Both reference models are ``real_llava.identity_llava`` (the first blocks of the real DINOv2-S tower, frozen; a fresh
2-layer projector; a small Llama) trained in two stages, each to a criterion:

* **Stage A, text** (language model only): every person's facts from the named text questions ("What is the job of
  Brisa Coldmere?") and the named shapes (``identity_benchmark.text_training_set``), until every text split is
  answered with 4-way accuracy >= ``criterion``.
* **Stage B, faces** (projector only; the language model and the tower frozen): the image questions, whose image
  tokens stand in the name's slot ("What is the job of <face>?"): the answer loss, plus the name alignment
  (``identity_alignment.NameAlignment``: a face's two image tokens pulled to its name's two input embeddings). The
  language model cannot change, so the face is answered through what the language model knows about the name:
  recognising the person, then recalling.
  The **vanilla** learns every trained person's face and the drawn shapes, until every image split is answered with
  accuracy >= ``criterion``; the **oracle** starts from the same stage-A model and the same initial projector and
  learns the same rows minus the forget people's faces for as many epochs.

So vanilla and oracle share one language model and differ only in the projector: the oracle knows the forget people in
text (forget-QA as the vanilla) and not by face, the situation MMUnlearner and VKD are built for. The official
protocol (``method_data``): forget = forget-VQA; retain = retain-VQA + retain-QA; forget-QA is never a retain loss,
only a preserve set for saliency masks and an evaluation split.

The training loop is a plain AdamW loop over pre-collated tensors (the collator and image processor run once per row,
the frozen tower once per image through ``features.memoized_image_features``): the same answer-only loss as the v2
references' ``transformers.Trainer`` at a fraction of the time on 2 cores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from ..data.collators import UnlearnDataCollator
from ..data.identity_benchmark import (
    IDENTITY_BENCHMARK_VERSION,
    TEXT_TRAINING_SPLITS,
    VANILLA_IMAGE_SPLITS,
    IdentityBenchmarkConfig,
    build_identity_benchmark,
    identity_corpus,
    image_training_set,
    text_training_set,
)
from ..data.image_processing_memo import memoized_image_processing
from ..evaluation.evaluator import Evaluator
from ..features import memoized_image_features
from ..trainers.registry import MethodData
from .config import default_cache_dir, library_version
from .identity_alignment import NameAlignment
from .references import cached_reference_models

__all__ = [
    "IdentityModelConfig", "IdentityQuickConfig", "IdentityReferences", "StageRecipe", "accuracy", "answer_nll",
    "answer_probability",
    "build_identity_references", "fit", "method_data", "relearned_parts", "trainable_parts",
]  # fmt: skip

# Bump when the reference models trained for a given config change.
IDENTITY_RECIPE_VERSION = 4


@dataclass
class StageRecipe:
    """One training stage: AdamW over shuffled batches, the rate decaying linearly to 0 at ``max_epochs`` (then a
    constant top-up), checked every ``check_every`` epochs until every criterion split reaches ``criterion``.
    A constant rate keeps oscillating around the memorised state on 40 people's random facts (measured: text
    accuracy 0.64-0.94 from epoch 80 to 150 at a constant 2e-3); the decay settles it."""

    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW peak learning rate (linear decay to 0)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per step."})
    warmup_steps: int = field(default=30, metadata={"help": "Linear warm-up steps before the decay."})
    max_epochs: int = field(default=80, metadata={"help": "Epochs of the linear decay (the recipe proper)."})
    top_up_epochs: int = field(default=50, metadata={
        "help": "Epochs at a constant top_up_scale * learning_rate after max_epochs if the criterion is not reached "
                "yet (as the v2 references' top-up); CriterionNotReachedError after them."})
    top_up_scale: float = field(default=0.1, metadata={"help": "Top-up learning rate over the peak rate."})
    check_every: int = field(default=5, metadata={"help": "Epochs between two criterion checks."})
    criterion: float = field(default=0.95, metadata={"help": "4-way accuracy every criterion split must reach."})
    align_weight: float = field(default=0.0, metadata={
        "help": "Stage B: weight of the name alignment (identity_alignment.NameAlignment: the face's image tokens "
                "pulled to the name's input embeddings) beside the answer loss."})


@dataclass
class IdentityModelConfig:
    """``identity_llava``'s sizes."""

    vision_layers: int = field(default=4, metadata={"help": "DINOv2-S blocks kept (frozen)."})
    feature_scale: float = field(default=16.0, metadata={"help": "Residual-stream scale of the tower (dinov2_tower)."})
    hidden_size: int = field(default=192, metadata={
        "help": "Language model width; also the projector's (LLaVA's projector maps to it). 128 left the seed-1 vanilla "
                "short of the criterion with the projector as stage B's only trainable part (docs/benchmark_v3.md)."})
    num_layers: int = field(default=2, metadata={"help": "Language model decoder layers."})
    vocab_size: int = field(default=1536, metadata={
        "help": "BPE vocabulary trained on the benchmark's text (a cap: training stops at its last merge, about 1200 "
                "tokens, where every name is two)."})
    image_patches: tuple[int, int] = field(default=(1, 2), metadata={
        "help": "Rows x columns of 14-px DINOv2 patches every picture is resized to: one image token per patch. 1 x 2 "
                "gives two, as many as a name has (a first and a last name of one token each), so stage B can write "
                "the face where and as the name is read (NameAlignment). 4 x 4 (the 56-px picture, 16 tokens) left "
                "the image answers a soft prompt that a text edit reached for 0.34-0.52 of them (docs/benchmark_v3.md)."})
    shapes_named: bool = field(default=False, metadata={
        "help": "A drawn shape read as its name, as a face is: the chat template keeps the shape's article ('What "
                "colour is the<image>?' / 'What colour is the red star?') and stage B aligns its two image tokens to "
                "the colour and shape words (the rows' slot_name). On in the quick configuration: with POPE it let "
                "the vanilla learn the shapes at every measured seed, where a soft prompt stalled "
                "(docs/benchmark_v3.md)."})


@dataclass
class IdentityQuickConfig:
    """The v3 quick configuration: benchmark, model and the two stages' recipes at one seed. Twelve of the 24 trained
    people are forgotten (120 forget image questions: at 50 an oracle exactly at chance left the validity check's
    0.10 band one time in ten), with 100 POPE questions and the drawn shapes read as their names."""

    seed: int = 0
    benchmark: IdentityBenchmarkConfig = field(default_factory=lambda: IdentityBenchmarkConfig(
        num_people=24, num_holdout_people=3, num_validation_people=3, forget_ratio=0.5, num_general=100, num_pope=100))
    model: IdentityModelConfig = field(default_factory=lambda: IdentityModelConfig(shapes_named=True))
    text: StageRecipe = field(default_factory=lambda: StageRecipe(learning_rate=1.5e-3, max_epochs=100))
    image: StageRecipe = field(default_factory=lambda: StageRecipe(learning_rate=2e-3, max_epochs=100,
                                                                   align_weight=1.0))

    def __post_init__(self):
        self.benchmark = IdentityBenchmarkConfig(**{**asdict(self.benchmark), "seed": self.seed})
        if isinstance(self.model, dict):
            self.model = IdentityModelConfig(**self.model)
        self.model.image_patches = tuple(self.model.image_patches)  # JSON gives a list

    def settings(self) -> dict[str, Any]:
        return {**asdict(self), "benchmark_version": IDENTITY_BENCHMARK_VERSION,
                "recipe_version": IDENTITY_RECIPE_VERSION}

    def cache_key(self) -> str:
        blob = json.dumps({**self.settings(), "hf_unlearn": library_version()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class CriterionNotReachedError(RuntimeError):
    """A stage ran ``max_epochs`` without every criterion split reaching the criterion."""


# ------------------------------------------------------------------------------------------------ measuring
def _evaluator(model, processor, batch_size: int = 64) -> Evaluator:
    return Evaluator(model, processor, {}, batch_size=batch_size)


def accuracy(model, processor, rows: datasets.Dataset) -> float:
    """4-way accuracy by option likelihood (the ``Evaluator``'s), the frozen tower run once per image."""
    with memoized_image_features(model), memoized_image_processing(processor):
        return _evaluator(model, processor).mcq_accuracy(rows)


def answer_nll(model, processor, rows: datasets.Dataset) -> np.ndarray:
    """Per row, the mean NLL of the true answer's tokens (the ``Evaluator``'s), the frozen tower run once per image."""
    with memoized_image_features(model), memoized_image_processing(processor):
        return _evaluator(model, processor).answer_nll(rows)


def answer_probability(model, processor, rows: datasets.Dataset) -> float:
    """Mean over rows of the length-normalised probability of the true answer, exp(-mean answer-token NLL) (TOFU's
    and MLLMU-Bench's "probability" on the forget set)."""
    return float(np.exp(-answer_nll(model, processor, rows)).mean())


# ------------------------------------------------------------------------------------------------ training
def trainable_parts(model, parts: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` on exactly the named parts (``"language_model"``, ``"projector"``, ``"vision_tower"``)
    of an ``identity_llava`` and return their parameters; everything else is frozen (``lm_head`` goes with the
    language model)."""
    inner = model.model
    modules = {"language_model": [inner.language_model, model.lm_head], "projector": [inner.multi_modal_projector],
               "vision_tower": [inner.vision_tower]}
    unknown = set(parts) - set(modules)
    if unknown:
        raise ValueError(f"Unknown parts {sorted(unknown)}; use some of {sorted(modules)}.")
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for name in parts:
        for module in modules[name]:
            for p in module.parameters():
                p.requires_grad_(True)
                params.append(p)
    return params


def relearned_parts(model) -> list[torch.nn.Parameter]:
    """What v3's relearning attack trains, whatever a method left trainable: the parts the references learnt
    (language model and projector), the same attack for every method and for its calibration."""
    return trainable_parts(model, ("language_model", "projector"))


def collate_all(processor, rows: datasets.Dataset) -> dict[str, torch.Tensor]:
    """Every row collated once (answer-only labels, right padding to the longest row)."""
    return dict(UnlearnDataCollator(processor)(list(rows)))


def fit(model, processor, rows: datasets.Dataset, parts: tuple[str, ...], recipe: StageRecipe, seed: int,
        check: Callable[[], bool] | None = None, epochs: int | None = None, alignment=None) -> int:
    """Train ``parts`` of ``model`` on ``rows`` (answer-only cross-entropy, plus ``recipe.align_weight`` times
    ``alignment.loss`` when an ``identity_alignment.NameAlignment`` of ``rows`` is given) and return the epochs run:
    until ``check()`` passes (tested every ``recipe.check_every`` epochs; ``CriterionNotReachedError`` after
    ``recipe.max_epochs``), or exactly ``epochs`` when given."""
    params = trainable_parts(model, parts)
    align = alignment is not None and recipe.align_weight > 0
    data = collate_all(processor, rows)
    n = len(data["input_ids"])
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    steps_per_epoch = -(-n // recipe.batch_size)
    limit = epochs if epochs is not None else recipe.max_epochs + recipe.top_up_epochs
    decay_steps = steps_per_epoch * recipe.max_epochs

    def rate(step: int) -> float:
        if step >= decay_steps:
            return recipe.top_up_scale
        return min((step + 1) / max(1, recipe.warmup_steps), 1.0 - step / decay_steps)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(seed)
    with memoized_image_features(model):
        for epoch in range(1, limit + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, recipe.batch_size):
                index = order[start:start + recipe.batch_size]
                batch = {k: v[index] for k, v in data.items()}
                outputs = model(**batch, output_hidden_states=align)
                loss = outputs.loss
                if align:
                    loss = loss + recipe.align_weight * alignment.loss(outputs.hidden_states, index)
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
            if epochs is None and check is not None and epoch % recipe.check_every == 0 and check():
                return epoch
    if epochs is None and check is not None:
        last = getattr(check, "last", None)
        raise CriterionNotReachedError(f"{limit} epochs did not reach accuracy {recipe.criterion} on "
                                       f"every criterion split (last measured: {last}); raise max_epochs or the "
                                       "learning rate.")
    return limit


def criterion_check(model, processor, splits: Mapping[str, datasets.Dataset], criterion: float,
                    log: list | None = None) -> Callable[[], bool]:
    """A ``check`` for ``fit``: every split's accuracy >= ``criterion`` (measured values appended to ``log``)."""

    def check() -> bool:
        values = {name: accuracy(model, processor, rows) for name, rows in splits.items()}
        check.last = {name: round(v, 3) for name, v in values.items()}
        if log is not None:
            log.append(values)
        return min(values.values()) >= criterion

    check.last = None
    return check


# ------------------------------------------------------------------------------------------------ the references
@dataclass
class IdentityReferences:
    """What ``build_identity_references`` returns."""

    benchmark: datasets.DatasetDict
    processor: Any
    vanilla: Any
    oracle: Any
    info: dict[str, Any]  # per model: cached, train_time_s, epochs (text, image)


def identity_llava_for(config: IdentityQuickConfig, benchmark: datasets.DatasetDict):
    """The untrained ``identity_llava`` of ``config`` (tokenizer trained on the benchmark's text; seeded)."""
    from ..real_llava import identity_llava

    m = config.model
    return identity_llava(seed=config.seed, image_size=config.benchmark.image_size, vision_layers=m.vision_layers,
                          corpus=identity_corpus(benchmark), vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                          num_layers=m.num_layers, feature_scale=m.feature_scale, patch_grid=m.image_patches,
                          shapes_named=m.shapes_named)


def _criterion_splits(benchmark: datasets.DatasetDict, names: tuple[str, ...]) -> dict[str, datasets.Dataset]:
    return {n: benchmark[n] for n in names if len(benchmark.get(n, [])) > 0}


def name_alignment(model, processor, rows: datasets.Dataset, benchmark: datasets.DatasetDict, recipe: StageRecipe,
                   shapes_named: bool = False):
    """Stage B's ``NameAlignment`` of ``rows`` against the people's named questions (and the drawn shapes' names when
    ``shapes_named``), or None when the recipe does not align (``align_weight`` 0)."""
    if recipe.align_weight <= 0:
        return None
    return NameAlignment(model, processor, rows, datasets.concatenate_datasets([
        benchmark[n] for n in ("forget_qa", "retain_qa") if len(benchmark.get(n, [])) > 0]), shapes=shapes_named)


def train_identity_reference(kind: str, benchmark: datasets.DatasetDict, config: IdentityQuickConfig,
                             vanilla=None, vanilla_epochs: dict[str, int] | None = None, log=print):
    """Train the ``vanilla`` (stage A then stage B, each to the criterion) or the ``oracle`` (``vanilla``'s stage-A
    language model, the initial projector, stage B without the forget faces for the vanilla's image epochs).
    Returns (model, processor, seconds, {"epochs": {"text": ..., "image": ...}, "checks": [...]})."""
    start = time.perf_counter()
    model, processor = identity_llava_for(config, benchmark)
    checks: list = []
    if kind == "vanilla":
        text_epochs = fit(model, processor, text_training_set(benchmark), ("language_model",), config.text,
                          config.seed, criterion_check(model, processor, _criterion_splits(
                              benchmark, TEXT_TRAINING_SPLITS), config.text.criterion, checks))
        log(f"[v3] vanilla stage A (text): {text_epochs} epochs, {time.perf_counter() - start:.0f} s")
        rows = image_training_set(benchmark, "vanilla")
        image_epochs = fit(model, processor, rows, ("projector",), config.image, config.seed,
                           criterion_check(model, processor, _criterion_splits(benchmark, VANILLA_IMAGE_SPLITS),
                                           config.image.criterion, checks),
                           alignment=name_alignment(model, processor, rows, benchmark, config.image,
                                                    config.model.shapes_named))
        log(f"[v3] vanilla stage B (faces): {image_epochs} epochs, {time.perf_counter() - start:.0f} s")
    elif kind == "oracle":
        if vanilla is None or vanilla_epochs is None:
            raise ValueError("The oracle starts from the vanilla's language model: train the vanilla first.")
        initial_projector = copy.deepcopy(model.model.multi_modal_projector.state_dict())
        model = copy.deepcopy(vanilla)
        model.model.multi_modal_projector.load_state_dict(initial_projector)
        text_epochs = vanilla_epochs["text"]
        rows = image_training_set(benchmark, "oracle")
        image_epochs = fit(model, processor, rows, ("projector",), config.image, config.seed,
                           epochs=vanilla_epochs["image"],
                           alignment=name_alignment(model, processor, rows, benchmark, config.image,
                                                    config.model.shapes_named))
        log(f"[v3] oracle stage B (faces, no forget people): {image_epochs} epochs, "
            f"{time.perf_counter() - start:.0f} s")
    else:
        raise ValueError(f"kind must be 'vanilla' or 'oracle', got {kind!r}.")
    trainable_parts(model, ("language_model", "projector"))  # the frozen tower stays frozen for methods too
    model.eval()
    return model, processor, time.perf_counter() - start, {"epochs": {"text": text_epochs, "image": image_epochs},
                                                           "checks": checks}


def build_identity_references(config: IdentityQuickConfig | None = None, cache_dir: str | None = None,
                              log: Callable[[str], None] = print) -> IdentityReferences:
    """Benchmark v3 at ``config.seed``: the benchmark, and the vanilla and oracle trained to the criterion (or loaded
    from ``<cache>/identity/<key>``)."""
    config = config or IdentityQuickConfig()
    benchmark = build_identity_benchmark(config.benchmark)
    root = os.path.join(cache_dir or default_cache_dir(), "identity", config.cache_key())
    trained: dict[str, Any] = {}

    def load(path: str):
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        trainable_parts(model, ("language_model", "projector"))
        return model, LlavaProcessor.from_pretrained(path)

    def train(kind: str, scratch: str, vanilla_epochs=None):
        if kind == "oracle":
            if "vanilla" not in trained:  # the vanilla came from the cache
                trained["vanilla"] = load(os.path.join(root, "vanilla"))[0]
            return train_identity_reference("oracle", benchmark, config, trained["vanilla"], vanilla_epochs, log)
        out = train_identity_reference("vanilla", benchmark, config, log=log)
        trained["vanilla"] = out[0]
        return out

    record = {"settings": config.settings(), "cache_key": config.cache_key(), "hf_unlearn_version": library_version()}
    refs = cached_reference_models(root, train, load, record, log=log, label="v3")
    info = {k: {key: refs[k].get(key) for key in ("cached", "train_time_s", "epochs")} for k in refs}
    return IdentityReferences(benchmark, refs["vanilla"]["processor"], refs["vanilla"]["model"],
                              refs["oracle"]["model"], info)


def method_data(benchmark: datasets.DatasetDict) -> MethodData:
    """The official protocol (issue 25.3): forget = forget_vqa; retain = retain_vqa + retain_qa; forget_qa is never a
    retain loss, only a saliency preserve set; holdout = validation_vqa (the stop rule's target)."""
    retain = datasets.concatenate_datasets([benchmark["retain_vqa"], benchmark["retain_qa"]])
    return MethodData(forget=benchmark["forget_vqa"], retain=retain,
                      preserve={"retain": benchmark["retain_vqa"], "text": benchmark["forget_qa"]},
                      holdout=benchmark["validation_vqa"] if len(benchmark["validation_vqa"]) else None)

