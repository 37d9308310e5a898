"""``FSDPMasker``: exact masks on a model sharded by FSDP2 (torch ``fully_shard``, accelerate ``fsdp_version: 2``).

* ``fully_shard`` replaces every parameter by a new ``nn.Parameter`` holding a ``DTensor`` shard (dim 0 split over
  the ranks): hooks and saved values bound to the old parameter objects would silently do nothing. So the masker
  keeps the full-shape masks (CPU) until the first training pass, then binds to the sharded parameters: each rank keeps
  the slice of every mask that matches its shard (``distribute_tensor(..., src_data_rank=None)``: DTensor's own
  layout, no communication), ``1 byte x covered parameters / world size``. It binds at the first pass, not when
  training starts: a forward before it (the unlearning probe's "before" numbers) leaves the root unsharded, its
  registered parameters full tensors that the next backward frees; binding reshards first. A second ``train()``
  binds again from the full masks.
* FSDP2 reduces gradients inside ``backward`` (reduce-scatter), so a gradient is only reachable, sharded, after the
  pass that produced it synchronised. A masked pass therefore always synchronises and masks exactly its own
  contribution: ``grad = before + mask * (after - before)``. With ``mask_scope="forget"`` the forget pass is masked
  and the retain pass is not, as in one process.
* Every fully masked step saves and restores the partially masked shards (always exact; no policy shortcut).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..integrations.fsdp import is_dtensor, is_fsdp2_module, local_tensor


class FSDPMasker:
    """The masker under FSDP2 (see the module docstring)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], freeze_uncovered: bool = True):
        params = dict(model.named_parameters())
        if freeze_uncovered:
            for name, p in params.items():
                if name not in masks:
                    p.requires_grad_(False)
        self.full_masks = {n: m.detach().to("cpu", torch.bool) for n, m in masks.items()}
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in masks}
        self.partially_masked = [n for n, p in self.params.items() if p.requires_grad and not bool(masks[n].all())]
        self.masks: dict[str, torch.Tensor] = {}  # this rank's slices, bool, once bound
        self.active = True
        self._model: nn.Module | None = None
        self._snapshots: dict[str, torch.Tensor] = {}

    # -- binding to the shards -----------------------------------------------------------------------------------
    def begin_training(self, start) -> None:
        self._model = start.model if start.model is not None and is_fsdp2_module(start.model) else None
        self.masks, self._snapshots = {}, {}

    def _bind(self) -> None:
        if self.masks or self._model is None:
            return
        from torch.distributed.tensor import distribute_tensor

        self._model.reshard()
        params = dict(self._model.named_parameters())
        missing = [n for n in self.full_masks if n not in params]
        if missing:
            raise RuntimeError(f"After FSDP2 wrapping the model has no parameter {missing[:3]}: cannot place the mask.")
        self.params = {n: params[n] for n in self.full_masks}
        for name, mask in self.full_masks.items():
            p = self.params[name]
            if is_dtensor(p):
                local = distribute_tensor(mask.to(torch.uint8), p.device_mesh, p.placements, src_data_rank=None)
                self.masks[name] = local.to_local().to(device=p.to_local().device, dtype=torch.bool)
            else:  # a parameter FSDP2 left replicated (ignored_params)
                self.masks[name] = mask.to(device=p.device, dtype=torch.bool)

    # -- the interface -------------------------------------------------------------------------------------------
    def unmasked_step(self) -> None:
        pass  # every fully masked step snapshots afresh

    @contextmanager
    def pass_context(self) -> Iterator[None]:
        """One forward + backward of a masked step: it synchronises; its contribution is masked while ``active``.

        Every pass of a step with a mask synchronises (even inside the Trainer's accumulation ``no_sync``): an
        unreduced gradient left over from an earlier pass would otherwise be reduced, and masked, with the next one.
        """
        self._bind()
        masked = self.active
        trainable = [n for n in self.params if self.params[n].requires_grad] if masked else []
        with torch.no_grad():
            before = {n: local_tensor(self.params[n].grad).clone() for n in trainable
                      if self.params[n].grad is not None}
        if self._model is not None:
            self._model.set_requires_gradient_sync(True)
        yield
        with torch.no_grad():
            for name in trainable:
                grad = self.params[name].grad
                if grad is None:
                    continue
                local, blocked = local_tensor(grad), ~self.masks[name]
                if name in before:  # earlier passes' gradients stay as they were
                    local.copy_(torch.where(blocked, before[name], local))
                else:
                    local.masked_fill_(blocked, 0)

    @torch.no_grad()
    def snapshot(self) -> None:
        self._bind()
        self._snapshots = {n: local_tensor(self.params[n].data).clone() for n in self.partially_masked}

    @torch.no_grad()
    def restore(self) -> None:
        for name, saved in self._snapshots.items():
            local = local_tensor(self.params[name].data)
            local.copy_(torch.where(self.masks[name], local, saved))
        self._snapshots = {}

    def mask_bytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.masks.values())

    def snapshot_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._snapshots.values())

    def remove(self) -> None:
        self._snapshots = {}
