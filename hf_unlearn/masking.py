"""Exact masked updates: the one mechanism every trainer uses to apply a saliency mask.

Two parts, both needed (research/environment.md §4):
1. Gradient hooks multiply each covered parameter's gradient by its mask *before* clipping and before the optimizer
   sees it, so Adam moments and the clipping norm only ever contain allowed entries.
2. Snapshot/restore around the optimizer step: AdamW's decoupled weight decay, and momentum built on earlier
   unmasked steps, still move masked entries; on steps whose whole gradient was masked we put them back bit for bit.

Under DeepSpeed the optimizer step runs inside ``accelerator.backward``; ``integrations/deepspeed.py`` calls the same
``snapshot``/``restore`` around ``engine.step()`` and uses the fp32 master weights.
"""

from __future__ import annotations

import torch
from torch import nn


class GradientMasker:
    """Apply a boolean mask per parameter name to gradients and optimizer updates.

    Args:
        model: the model being trained (names as in ``model.named_parameters()``).
        masks: ``{parameter name: bool tensor of the parameter's shape}`` (True = may move).
        freeze_uncovered: set ``requires_grad=False`` on every trainable parameter the mask does not cover, so
            they leave the optimizer entirely (exact for free).
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], freeze_uncovered: bool = True):
        params = dict(model.named_parameters())
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in masks}
        self.masks = {n: m.to(device=params[n].device, dtype=torch.bool) for n, m in masks.items()}
        if freeze_uncovered:
            for name, p in params.items():
                if name not in masks:
                    p.requires_grad_(False)
        # Parameters with at least one masked entry: the only ones a step can move where it must not (fixed, so
        # computed once rather than on every step).
        self.partially_masked = [n for n, p in self.params.items() if p.requires_grad and not bool(self.masks[n].all())]
        self.active = True  # the hooks mask only while active (forget backward when mask_scope="forget")
        self._snapshots: dict[str, torch.Tensor] = {}
        self._blocked: dict[str, torch.Tensor] = {}  # ~mask, cached
        self._handles = [
            p.register_hook(self._make_hook(name)) for name, p in self.params.items() if p.requires_grad
        ]

    def _make_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if not self.active:
                return grad
            blocked = self._blocked.get(name)
            if blocked is None or blocked.device != grad.device:  # computed once per device, not per step
                blocked = self._blocked[name] = ~self.masks[name].to(grad.device)
            return grad.masked_fill(blocked, 0)

        return hook

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember the current values of every parameter with masked entries (call right before the step)."""
        self._snapshots = {n: self.params[n].detach().clone() for n in self.partially_masked}

    @torch.no_grad()
    def restore(self) -> None:
        """Put masked entries back to their snapshot values (call right after the step)."""
        for name, saved in self._snapshots.items():
            p = self.params[name]
            p.data.copy_(torch.where(self.masks[name].to(p.device), p.data, saved))
        self._snapshots = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
