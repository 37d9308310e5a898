"""The registry of unlearning methods: every method registers itself where it is defined (``hf_unlearn/methods/``).

An entry (``MethodSpec``) names a trainer class, a one-line description and the config values that make the entry
(``ga_diff`` is ``GATrainer`` with ``retain_loss_type="nll"``). ``hf-unlearn run``, the demo and the tuning protocol
find methods here; the library's defaults are the config class's own (the values ``hf-unlearn run --method X --help``
shows). Benchmarks apply their own recipes on top (``hf_unlearn/demo/recipe.py``); nothing here knows about them.

``MethodData`` is what a method gets from a benchmark or a user's files: the forget set, the retain set, named
preserve sets (for saliency masks) and an optional holdout set (for the stop rule). ``spec.build_trainer`` turns it
into a ready trainer through the trainer class's ``from_method_data``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

    from ..config import UnlearnConfig
    from .base import UnlearnTrainer

__all__ = ["METHODS", "MethodData", "MethodSpec", "MethodUnavailableError", "get_method", "register_method"]


class MethodUnavailableError(ImportError):
    """The method's trainer (or something it needs) cannot be used in this installation."""


@dataclass
class MethodData:
    """What an unlearning run gets.

    Attributes:
        forget: rows to unlearn.
        retain: rows to keep (trained on by methods with a retain term).
        preserve: named preserve sets for saliency masks (``{"retain": image rows, "text": text rows}``, the names of
            ``SaliencyMaskConfig.preserve_sets``).
        holdout: never-seen rows of the same kind as ``forget``, for target-driven stopping.
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


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        name: registry key (``hf-unlearn run``'s ``method:``, ``--methods`` of the demo).
        trainer_class: the ``UnlearnTrainer`` subclass; its ``config_class`` holds the method's knobs and defaults.
        description: one line for listings and reports.
        defaults: config values that make this entry differ from the config class's defaults (``ga_diff``:
            ``{"retain_loss_type": "nll"}``).
    """

    name: str
    trainer_class: type
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    @property
    def config_class(self) -> type[UnlearnConfig]:
        return self.trainer_class.config_class

    def config(self, **values: Any) -> UnlearnConfig:
        """The entry's config: the class defaults, the entry's ``defaults``, then ``values``."""
        return self.config_class(**{**self.defaults, **values})

    def build_trainer(self, model, processing_class, data: MethodData, args: UnlearnConfig, *, mask=None,
                      ref_model=None, peft_config=None) -> UnlearnTrainer:
        """A trainer of this method on ``data``, ready to ``train()`` (``trainer_class.from_method_data``).

        ``mask``: a ``SaliencyMask``, or ``SaliencyMaskConfig`` keyword arguments to compute one on ``data``;
        ``ref_model``: a reference / teacher model, or its path or Hub id; ``peft_config``: a ``peft.PeftConfig``
        the model is wrapped with first (as TRL's trainers take it).
        """
        return self.trainer_class.from_method_data(model, processing_class, data, args, mask=mask,
                                                   ref_model=ref_model, peft_config=peft_config)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, overwrite: bool = False) -> MethodSpec:
    """Add ``spec`` to ``METHODS`` (``overwrite=True`` replaces an entry of the same name)."""
    if spec.name in METHODS and not overwrite:
        raise ValueError(f"Method {spec.name!r} is already registered; pass overwrite=True to replace it.")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``; the error suggests a close name and lists the known ones."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"Unknown method {name!r}.{hint} Registered methods: {', '.join(sorted(METHODS))}.")
    return METHODS[name]


def saliency_mask_for(model, processing_class, data: MethodData, mask, defaults: Mapping[str, Any] | None = None):
    """The saliency mask of a run: ``mask`` itself when it is a ``SaliencyMask``; else one computed on ``data.forget``
    against ``data.preserve`` from ``SaliencyMaskConfig(**{**defaults, **mask})``; ``None`` when neither is given."""
    if mask is None and defaults is None:
        return None
    if mask is not None and not isinstance(mask, Mapping):
        return mask
    from ..data.collators import UnlearnDataCollator
    from ..saliency import SaliencyMaskConfig, compute_saliency_mask

    config = SaliencyMaskConfig(**{**(defaults or {}), **(mask or {})})
    return compute_saliency_mask(model, config, data.forget, data.preserve, UnlearnDataCollator(processing_class),
                                 show_progress=False)
