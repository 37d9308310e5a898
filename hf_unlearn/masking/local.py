"""``LocalMasker``: exact masks where gradients are full-shape ``p.grad`` and the optimizer updates ``p.data`` (one
process, DDP; also the gradient side of DeepSpeed ZeRO-1/2, whose hooks see full-shape gradients).

Gradients are masked in place where possible: a post-accumulate-grad hook multiplies ``p.grad`` by the mask viewed as
0/1 bytes (no new tensor; ~15x faster than ``masked_fill`` on CPU). Only when ``p.grad`` already holds an *unmasked*
contribution (the retain pass of an earlier micro-step of a two-pass step) does a tensor hook mask the incoming
gradient instead, out of place; those hooks exist only once the masker has been switched off for a pass. Parameters
whose mask is all True get no hooks. Masked entries are saved before and put back after a fully masked step as
``policy.RestorePolicy`` says.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .policy import RestorePolicy
from .tensors import mask_fingerprint, put_back


class LocalMasker:
    """Apply a boolean mask per parameter name to gradients and optimizer updates (see the module docstring).

    Attributes:
        masks: full-shape bool masks on the parameters' devices.
        partially_masked: trainable covered parameters with at least one masked entry (the only ones a step can move
            where it must not).
        policy: which of them a fully masked step must restore (``RestorePolicy``).
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], freeze_uncovered: bool = True):
        params = dict(model.named_parameters())
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in masks}
        if freeze_uncovered:
            for name, p in params.items():
                if name not in masks:
                    p.requires_grad_(False)
        self.partially_masked = [n for n, p in self.params.items() if p.requires_grad and not bool(masks[n].all())]
        self.policy = RestorePolicy(self.params, self.partially_masked)
        self._active = True
        self._fingerprints: dict[str, tuple[float, float]] | None = None
        self._saved: dict[str, torch.Tensor] = {}
        self._saved_generation = -1
        self._mixed: set[str] = set()  # p.grad holds an unmasked contribution since it was last None
        self._factors: dict[str, torch.Tensor] = {}  # the masks as 0/1 uint8 views, on the gradients' device
        self._handles: list = []
        self._tracking_mixed = False
        self.masks: dict[str, torch.Tensor] = {}
        self._bind(masks)

    def _bind(self, masks: dict[str, torch.Tensor]) -> None:
        """Keep full-shape masks on the parameters' devices and hook the partially masked parameters."""
        self.masks = {n: m.to(device=self.params[n].device, dtype=torch.bool).contiguous() for n, m in masks.items()}
        for name in self.partially_masked:
            self._handles.append(self.params[name].register_post_accumulate_grad_hook(self._after_accumulation(name)))

    # -- the interface -------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value)
        if not value and not self._tracking_mixed and self.masks:
            # From the first unmasked pass on, gradients may mix masked and unmasked contributions: track them.
            self._tracking_mixed = True
            for name in self.partially_masked:
                self._handles.append(self.params[name].register_hook(self._before_accumulation(name)))

    @property
    def protected(self) -> list[str]:
        return self.policy.protected

    def begin_training(self, start) -> None:
        self.policy.begin(start.optimizer, start.resumed)
        self._saved = {}

    def pass_context(self):
        return nullcontext()

    def unmasked_step(self) -> None:
        self.policy.unmasked_step()
        self._saved = {}

    @torch.no_grad()
    def snapshot(self) -> None:
        if self._saved and self.policy.still_valid(self._saved_generation):
            return  # nothing moved them since: stored once
        self._saved = {n: self.params[n].detach().clone(memory_format=torch.contiguous_format)
                       for n in self.policy.protected}
        self._saved_generation = self.policy.generation

    @torch.no_grad()
    def restore(self) -> None:
        for name, saved in self._saved.items():
            p = self.params[name]
            put_back(p.data, saved, self.mask_on(name, p.device))
        if not self.policy.managed:
            self._saved = {}

    def mask_bytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.masks.values())

    def snapshot_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._saved.values())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._tracking_mixed = True  # no hooks come back

    # -- masks and fingerprints ----------------------------------------------------------------------------------
    def mask_on(self, name: str, device: torch.device) -> torch.Tensor:
        """``name``'s full mask on ``device`` (moved once: the Trainer moves the model after the masker exists)."""
        mask = self.masks[name]
        if mask.device != device:
            mask = self.masks[name] = mask.to(device)
            self._factors.pop(name, None)
        return mask

    def fingerprints(self) -> dict[str, tuple[float, float]]:
        """Per covered parameter, a value equal masks share (to check that every rank holds the same mask)."""
        if self._fingerprints is None:
            self._fingerprints = {n: mask_fingerprint(m) for n, m in self.masks.items()}
        return self._fingerprints

    # -- gradient hooks ------------------------------------------------------------------------------------------
    def _factor(self, name: str, device: torch.device) -> torch.Tensor:
        """The mask as 0/1 bytes: ``grad * factor`` is ``grad`` where allowed, zero elsewhere (2x faster than a
        bool operand on CPU)."""
        mask = self.mask_on(name, device)
        factor = self._factors.get(name)
        if factor is None:
            factor = self._factors[name] = mask.view(torch.uint8)
        return factor

    def _after_accumulation(self, name: str):
        def hook(p: torch.Tensor) -> None:
            if self._active and name not in self._mixed and p.grad is not None:
                p.grad.mul_(self._factor(name, p.grad.device))

        return hook

    def _before_accumulation(self, name: str):
        param = self.params[name]

        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            if param.grad is None:
                self._mixed.discard(name)  # a fresh accumulation
            if not self._active:
                self._mixed.add(name)
                return None
            if name in self._mixed:  # p.grad already holds unmasked entries: mask only this contribution
                return grad * self._factor(name, grad.device)
            return None

        return hook
