"""The registry of unlearning methods the demo (and ``hf-unlearn run``) can apply.

An entry is a ``MethodSpec``: a name, a description, its config class, its hyper-parameters and
``build_trainer(model, processor, data, output_dir, seed, *, mask=None, ref_model=None, **overrides) -> Trainer``.
The demo calls ``trainer.train()`` on what it returns and evaluates ``trainer.model`` afterwards. Add a tuned entry with ``register_method(MethodSpec(...))``.

Trainers are imported inside ``build_trainer``, so an entry whose trainer does not exist (yet) raises
``MethodUnavailableError`` when built and the demo skips it with a note.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import datasets
from transformers import Trainer

from ..config import GAConfig, MMUnlearnerConfig, NPOConfig, UnlearnConfig, VKDConfig


class MethodUnavailableError(ImportError):
    """The method's trainer (or a dependency) cannot be imported in this installation."""


@dataclass
class MethodData:
    """What an unlearning run gets.

    Attributes:
        forget: rows to unlearn (the demo: forget_vqa, the forget people's image questions).
        retain: rows to keep (the demo: retain_vqa + retain_qa + forget_qa; the forget people's *text* knowledge is
            part of what must be kept: the MMUnlearner framing).
        preserve: named preserve sets for saliency masks (``{"retain": image rows, "text": text rows}``, the names of
            ``SaliencyMaskConfig.preserve_sets``).
        holdout: never-seen rows of the same kind as ``forget`` (the demo: validation_vqa, people never trained on
            and never evaluated), for target-driven stopping.
    """

    forget: datasets.Dataset
    retain: datasets.Dataset | None = None
    preserve: dict[str, datasets.Dataset] = field(default_factory=dict)
    holdout: datasets.Dataset | None = None

    @property
    def retain_images(self) -> datasets.Dataset | None:
        """The retain rows that carry an image (for methods whose retain term acts on the vision side only)."""
        if self.retain is None or "kind" not in self.retain.column_names:
            return self.retain
        keep = [i for i, kind in enumerate(self.retain["kind"]) if kind != "qa"]
        return self.retain.select(keep) if keep else None


BuildTrainer = Callable[..., Trainer]


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        name: registry key (``--methods`` accepts it).
        build_trainer: ``(model, processor, data, output_dir, seed, *, mask=None, ref_model=None, **overrides) ->
            Trainer`` ready to ``train()``; ``overrides`` are values of ``config_class`` that replace the entry's
            (``hf-unlearn run``'s flat keys and flags); ``mask`` is a ``SaliencyMask`` or ``SaliencyMaskConfig``
            keyword arguments (``saliency_mask_for``); ``ref_model`` a reference / teacher model or its path or Hub
            id. It may raise ``MethodUnavailableError``.
        description: one line for listings and reports.
        hyperparameters: the entry's defaults, recorded in results for reproducibility (the trainer's ``args`` hold
            the values actually used).
        config_class: the training-arguments class ``build_trainer`` builds (``hf-unlearn run`` parses its fields).
    """

    name: str
    build_trainer: BuildTrainer
    description: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    config_class: type = UnlearnConfig


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, overwrite: bool = False) -> MethodSpec:
    """Add ``spec`` to ``METHODS`` (``overwrite=True`` replaces an entry of the same name)."""
    if spec.name in METHODS and not overwrite:
        raise ValueError(f"Method {spec.name!r} is already registered; pass overwrite=True to replace it.")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``; the error lists the known names."""
    if name not in METHODS:
        raise KeyError(f"Unknown method {name!r}; registered methods: {sorted(METHODS)}.")
    return METHODS[name]


def import_symbol(name: str, module: str) -> Any:
    """``hf_unlearn.<name>`` if exported, else ``<module>.<name>``; ``MethodUnavailableError`` if neither exists."""
    top = importlib.import_module("hf_unlearn")
    if hasattr(top, name):
        return getattr(top, name)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise MethodUnavailableError(f"{name} is not available in this version of hf_unlearn ({err}).") from err


# ------------------------------------------------------------------------------------------------------------------
# Built-in entries. Budgets are fixed step counts (the tiny demo models memorise in minutes and collapse in seconds).
# ------------------------------------------------------------------------------------------------------------------
def common_args(output_dir: str, seed: int, **overrides: Any) -> dict[str, Any]:
    """Training arguments shared by the built-in entries: a step budget, constant lr, no checkpoints, quiet. With a
    holdout set (the demo's validation people) the stop rule ends a run once the forget set looks like the holdout:
    it is checked every 5 steps, so ``max_steps`` is a cap."""
    args = dict(
        output_dir=output_dir, seed=seed, data_seed=seed, per_device_train_batch_size=4, max_steps=20,
        learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, logging_steps=5,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        probe_steps=5,
    )
    args.update(overrides)
    return args


TUNED_FILE = os.path.join(os.path.dirname(__file__), "tuned.json")


@functools.lru_cache(maxsize=8)
def _picks(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    # Every registry entry reads its pick at import: parse the (large) record once per version of the file.
    with open(path, encoding="utf-8") as f:
        return {name: dict(entry.get("picked", {})) for name, entry in json.load(f).get("methods", {}).items()}


def tuned_hyperparameters(name: str, path: str = TUNED_FILE) -> dict[str, Any]:
    """The tuning protocol's pick for ``name`` (``hf-unlearn tune``, recorded in ``tuned.json``); {} if never tuned."""
    if not os.path.isfile(path):
        return {}
    return dict(_picks(path, os.stat(path).st_mtime_ns).get(name, {}))


UNTUNED: dict[str, dict[str, Any]] = {}  # each method's starting point before the tuning protocol's pick


def demo_defaults(name: str, untuned: Mapping[str, Any]) -> dict[str, Any]:
    """A method's demo hyperparameters: the tuning protocol's pick over the untuned starting point."""
    UNTUNED[name] = dict(untuned)
    return {**untuned, **tuned_hyperparameters(name)}


def untuned_overrides(name: str, path: str = TUNED_FILE) -> dict[str, Any]:
    """Overrides that undo ``name``'s recorded pick: each picked key at its untuned value (the entry's starting
    point, else the config's default). The tuning protocol scores every grid point from the same starting point,
    never from an earlier pick, so re-running it reproduces the record."""
    config_cls = METHODS[name].config_class
    defaults = {f.name: f.default for f in fields(config_cls) if f.default is not MISSING} if config_cls else {}
    return {k: UNTUNED.get(name, {}).get(k, defaults.get(k)) for k in tuned_hyperparameters(name, path)}


# Untuned starting points; `hf-unlearn tune` (demo/tuning.py) picks the values the demo uses on validation seeds.
GA_HPARAMS = demo_defaults("ga", dict(max_steps=10, learning_rate=5e-4))
GA_DIFF_HPARAMS = demo_defaults("ga_diff", dict(max_steps=10, learning_rate=5e-4))
KL_MIN_HPARAMS = demo_defaults("kl_min", dict(max_steps=10, learning_rate=5e-4))
NPO_HPARAMS = demo_defaults("npo", dict(max_steps=30, learning_rate=5e-4, beta=0.4))
MMUNLEARNER_HPARAMS = demo_defaults("mmunlearner", dict(max_steps=60, learning_rate=1e-3, schedule="joint",
                                                        mask_threshold=1.0))
VKD_HPARAMS = demo_defaults("vkd", dict(max_steps=80, learning_rate=2e-3))


def saliency_mask_for(model, processor, data: MethodData, mask, defaults: Mapping[str, Any] | None = None):
    """The saliency mask of a run: ``mask`` itself when it is a ``SaliencyMask``; else one computed on the forget set
    and ``data.preserve`` from ``SaliencyMaskConfig(**{**defaults, **mask})``; ``None`` when neither is given."""
    if mask is None and defaults is None:
        return None
    if mask is not None and not isinstance(mask, Mapping):
        return mask
    from ..data.collators import UnlearnDataCollator
    from ..saliency import SaliencyMaskConfig, compute_saliency_mask

    config = SaliencyMaskConfig(**{**(defaults or {}), **(mask or {})})
    return compute_saliency_mask(model, config, data.forget, data.preserve, UnlearnDataCollator(processor),
                                 show_progress=False)


def _ga_builder(retain_loss_type: str, hparams: Mapping[str, Any]) -> BuildTrainer:
    def build(model, processor, data: MethodData, output_dir: str, seed: int, *, mask=None, ref_model=None,
              **overrides: Any) -> Trainer:
        from ..trainers import GATrainer

        args = GAConfig(**common_args(output_dir, seed, **{"retain_loss_type": retain_loss_type, **hparams,
                                                            **overrides}))
        retain = data.retain if args.retain_loss_type != "none" else None
        return GATrainer(model, args=args, train_dataset=data.forget, retain_dataset=retain,
                         processing_class=processor, saliency_mask=saliency_mask_for(model, processor, data, mask),
                         ref_model=ref_model, holdout_dataset=data.holdout)

    return build


def _build_npo(model, processor, data: MethodData, output_dir: str, seed: int, *, mask=None, ref_model=None,
               **overrides: Any) -> Trainer:
    from ..trainers import NPOTrainer

    args = NPOConfig(**common_args(output_dir, seed, **{"retain_loss_type": "nll", "precompute_ref_log_probs": True,
                                                        **NPO_HPARAMS, **overrides}))
    return NPOTrainer(model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                      processing_class=processor, saliency_mask=saliency_mask_for(model, processor, data, mask),
                      ref_model=ref_model, holdout_dataset=data.holdout)


def _build_mmunlearner(model, processor, data: MethodData, output_dir: str, seed: int, *, mask=None, ref_model=None,
                       **overrides: Any) -> Trainer:
    trainer_cls = import_symbol("MMUnlearnerTrainer", "hf_unlearn.trainers.mmunlearner")
    hp = {"schedule": "alternate", "retain_loss_type": "nll", **MMUNLEARNER_HPARAMS, **overrides}
    default_mask = dict(target_modules="vision", score="fisher_ratio", threshold=hp.pop("mask_threshold"))
    args = MMUnlearnerConfig(**common_args(output_dir, seed, **hp))  # bad values fail before the mask is computed
    return trainer_cls(model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                       processing_class=processor, saliency_mask=saliency_mask_for(model, processor, data, mask,
                                                                                   default_mask),
                       ref_model=ref_model, holdout_dataset=data.holdout)


def _build_vkd(model, processor, data: MethodData, output_dir: str, seed: int, *, mask=None, ref_model=None,
               **overrides: Any) -> Trainer:
    trainer_cls = import_symbol("VKDTrainer", "hf_unlearn.trainers.vkd")
    # VKD trains the vision side only; text-only retain rows never reach it, so it gets the image rows.
    args = VKDConfig(**common_args(output_dir, seed, **{"retain_loss_type": "nll", **VKD_HPARAMS, **overrides}))
    return trainer_cls(model, args=args, train_dataset=data.forget, retain_dataset=data.retain_images,
                       processing_class=processor, saliency_mask=saliency_mask_for(model, processor, data, mask),
                       teacher_model=ref_model, holdout_dataset=data.holdout)


for _spec in (
    MethodSpec("ga", _ga_builder("none", GA_HPARAMS), "Gradient ascent on the forget answers (unbounded; collapses).",
               GA_HPARAMS, GAConfig),
    MethodSpec("ga_diff", _ga_builder("nll", GA_DIFF_HPARAMS),
               "GA_Diff: gradient ascent on forget + descent on retain answers.", GA_DIFF_HPARAMS, GAConfig),
    MethodSpec("kl_min", _ga_builder("kl", KL_MIN_HPARAMS),
               "KL_Min: gradient ascent on forget + KL to the starting model on retain rows.", KL_MIN_HPARAMS,
               GAConfig),
    MethodSpec("npo", _build_npo, "NPO (bounded forget loss) + retain NLL.", NPO_HPARAMS, NPOConfig),
    MethodSpec("mmunlearner", _build_mmunlearner,
               "MMUnlearner: Fisher-ratio vision saliency mask, masked ascent alternating with retain descent.",
               MMUNLEARNER_HPARAMS, MMUnlearnerConfig),
    MethodSpec("vkd", _build_vkd, "VKD: vision-side feature distillation with NPO, language model frozen.",
               VKD_HPARAMS, VKDConfig),
):
    register_method(_spec)

from . import text_methods  # noqa: E402,F401  (registers SimNPO, RMU, IdkPO, UNDIAL)
