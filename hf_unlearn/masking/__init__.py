"""Exact masked updates: the one mechanism every trainer uses to apply a saliency mask, whatever the launcher.

A mask says, per parameter entry, whether it may move. Two things make that exact (docs/guarantees.md, measured in
tests/test_masking*.py):

1. **Gradients are masked** before clipping and before the optimizer sees them, so Adam's moments and the clipping
   norm only ever contain allowed entries;
2. **masked entries are put back after the optimizer step** on steps whose whole gradient is masked: AdamW's decoupled
   weight decay, and momentum built on earlier unmasked steps, still move them (``policy.RestorePolicy`` decides
   when that can happen; nothing is saved while it cannot).

Each launcher keeps gradients and weights in its own place, so each has its own implementation of one interface
(``Masker``), chosen once by ``build_masker`` when the trainer knows its launcher:

* ``local.LocalMasker``: one process and DDP (full-shape gradients in ``p.grad``, weights in ``p.data``);
* ``zero.ZeroMasker``: DeepSpeed ZeRO-1/2/3 (the optimizer steps inside backward on fp32 master partitions; under
  ZeRO-3 each rank keeps only its shard of each mask, bit-packed);
* ``fsdp.FSDPMasker``: FSDP2 (DTensor shards replace the parameters when training starts; gradients are reduced
  inside backward).

The trainer drives every masker the same way (``trainers/base.py``): ``begin_training`` once the launcher has wrapped
the model and the optimizer exists; per backward pass, ``active`` (mask this pass's gradient or not) inside
``pass_context()``; ``unmasked_step()`` before a pass that lets masked entries move; ``snapshot()`` / ``restore()``
around each optimizer step whose passes were all masked (under DeepSpeed the engine's step runs inside backward:
``ZeroMasker`` does both there itself, and the trainer's calls are no-ops).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .tensors import PackedMask, mask_fingerprint, put_back

__all__ = ["Masker", "PackedMask", "TrainingStart", "build_masker", "mask_fingerprint", "put_back"]

LAUNCHERS = ("local", "deepspeed", "fsdp")


@dataclass
class TrainingStart:
    """What a masker learns when training starts (``Masker.begin_training``)."""

    optimizer: Any = None  # as the Trainer holds it (accelerate / DeepSpeed wrappers are looked through)
    resumed: bool = False  # the optimizer state comes from a checkpoint (it may carry momentum for masked entries)
    accelerator: Any = None  # DeepSpeed: the engine whose step the masker guards
    model: nn.Module | None = None  # the model as the launcher wrapped it (FSDP2: its shards)
    fully_masked: Callable[[], bool] = lambda: True  # whether every pass of the step running now was masked


class Masker(Protocol):
    """The interface of every masker (see the package docstring for the call order)."""

    params: dict[str, nn.Parameter]  # covered parameters by name (after begin_training: the launcher's objects)
    partially_masked: list[str]  # trainable covered parameters with at least one masked entry

    @property
    def active(self) -> bool:
        """Whether the running backward pass's gradient is masked (the trainer sets it per pass)."""

    @active.setter
    def active(self, value: bool) -> None: ...

    def begin_training(self, start: TrainingStart) -> None:
        """Bind to the launcher's objects (engine, shards) and start the restore policy."""

    def pass_context(self) -> AbstractContextManager[None]:
        """Wrap one forward + backward pass (FSDP2 masks the pass's contribution to the sharded gradients here)."""

    def unmasked_step(self) -> None:
        """A pass whose gradient is not masked is coming: masked entries will move on this step."""

    def snapshot(self) -> None:
        """Right before a fully masked optimizer step: save what the step may move."""

    def restore(self) -> None:
        """Right after it: put masked entries back, bit for bit."""

    def mask_bytes(self) -> int:
        """Bytes of mask storage this process holds."""

    def snapshot_bytes(self) -> int:
        """Bytes of saved values held now for the restore."""

    def remove(self) -> None:
        """Drop hooks and saved values."""


def build_masker(model: nn.Module, masks: dict[str, torch.Tensor], launcher: str = "local",
                 freeze_uncovered: bool = True) -> Masker:
    """The masker for ``launcher`` (``"local"``: one process or DDP; ``"deepspeed"``; ``"fsdp"``: FSDP2).

    Args:
        model: the model being trained (names as in ``model.named_parameters()``), not yet wrapped.
        masks: ``{parameter name: bool tensor of the parameter's shape}`` (True = may move).
        freeze_uncovered: ``requires_grad=False`` on every trainable parameter the mask does not cover, so they
            leave the optimizer entirely (exact for free).
    """
    if launcher == "deepspeed":
        from .zero import ZeroMasker

        return ZeroMasker(model, masks, freeze_uncovered)
    if launcher == "fsdp":
        from .fsdp import FSDPMasker

        return FSDPMasker(model, masks, freeze_uncovered)
    if launcher != "local":
        raise ValueError(f"launcher={launcher!r}; use one of {LAUNCHERS}.")
    from .local import LocalMasker

    return LocalMasker(model, masks, freeze_uncovered)
