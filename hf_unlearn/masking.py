"""Exact masked updates: the one mechanism every trainer uses to apply a saliency mask.

Two parts, both needed (research/environment.md §4):

1. **Gradients are masked** before clipping and before the optimizer sees them, so Adam moments and the clipping
   norm only ever contain allowed entries. In place where possible: a post-accumulate-grad hook multiplies ``p.grad``
   by the mask viewed as 0/1 bytes (no new tensor; ~15x faster than ``masked_fill`` on CPU). Only when ``p.grad``
   already holds an *unmasked* contribution (the retain pass of an earlier micro-step of a two-pass step) does a
   tensor hook mask the incoming gradient instead, out of place; those hooks exist only once the masker has been
   switched off for a pass. Parameters whose mask is all True get no hooks.
   Under ZeRO-3 each rank keeps only its shard of each mask, bit-packed, and masks DeepSpeed's gradient partitions
   (``integrations/deepspeed.py``).
2. **Masked entries are put back after the optimizer step** on steps whose whole gradient is masked: AdamW's
   decoupled weight decay, and momentum built on earlier unmasked steps, still move them. ``begin_training`` decides
   which parameters need it: none while the optimizer state has only ever seen masked gradients and no weight decay
   applies (Adam / AdamW / SGD update an entry with zero gradient and zero state by exactly 0), all otherwise. The
   saved values stay valid across consecutive fully masked steps (stored once, e.g. ``mask_scope="all"`` with weight
   decay) and are dropped by ``unmasked_step`` when a step lets masked entries move.

Under DeepSpeed the optimizer step runs inside ``accelerator.backward``; ``integrations/deepspeed.py`` saves and
restores the fp32 master weights around ``engine.step()`` with the same policy (``protected``, ``generation``).
"""

from __future__ import annotations

import torch
from torch import nn

_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
# Optimizers whose update of an entry with zero gradient and zero state is exactly 0 (without weight decay): Adam's
# m/(sqrt(v)+eps) = 0/eps, SGD's momentum buffer 0. Anything else (Adafactor, 8-bit states, ...) is protected always.
_INERT_OPTIMIZERS = {
    "torch.optim.adamw.AdamW", "torch.optim.adam.Adam", "torch.optim.sgd.SGD",
    "deepspeed.ops.adam.fused_adam.FusedAdam", "deepspeed.ops.adam.cpu_adam.DeepSpeedCPUAdam",
}


def innermost_optimizer(optimizer):
    """The optimizer that updates the weights, under accelerate's and DeepSpeed's wrappers (``.optimizer``)."""
    seen = set()
    while getattr(optimizer, "optimizer", None) is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def _moves_nothing_without_gradient(optimizer, param: torch.Tensor) -> bool:
    """True if ``optimizer`` leaves an entry with zero gradient and zero state exactly where it is (no weight decay
    in ``param``'s group; under DeepSpeed, whose groups hold flat partitions, in any group)."""
    if optimizer is None:
        return False
    kind = type(optimizer)
    if f"{kind.__module__}.{kind.__qualname__}" not in _INERT_OPTIMIZERS:
        return False
    groups = [g for g in optimizer.param_groups if any(q is param for q in g["params"])] or optimizer.param_groups
    return all(not float(g.get("weight_decay", 0.0) or 0.0) for g in groups)


def put_back(data: torch.Tensor, saved: torch.Tensor, keep: torch.Tensor) -> None:
    """``data[~keep] = saved[~keep]`` in place, bit for bit (NaN payloads and -0.0 included).

    On the integer view of the values: ``((data ^ saved) * keep) ^ saved`` is ``data`` where keep, ``saved``
    elsewhere; three in-place passes with no new tensor, where ``torch.where`` + ``copy_`` allocates one and runs a
    bool kernel that is not vectorised on CPU (about 10x slower there).
    """
    int_dtype = _SAME_SIZE_INT.get(data.element_size())
    if (int_dtype is None or data.is_complex() or not data.is_contiguous() or not saved.is_contiguous()
            or saved.dtype != data.dtype or not keep.is_contiguous()):
        data.copy_(torch.where(keep, data, saved))
        return
    bits, old = data.view(int_dtype), saved.view(int_dtype)
    bits.bitwise_xor_(old).mul_(keep.view(torch.uint8)).bitwise_xor_(old)


class PackedMask:
    """A bool mask stored at 1 bit per entry (little bit order, as ``np.packbits(bitorder="little")``).

    Used for this rank's shard of a mask under ZeRO-3; ``unpack`` builds the bool tensor for one use.
    """

    _WEIGHTS: dict[torch.device, torch.Tensor] = {}

    def __init__(self, mask: torch.Tensor, device: torch.device | str | None = None):
        flat = mask.reshape(-1).to(torch.bool)
        self.numel = flat.numel()
        padded = torch.zeros((self.numel + 7) // 8 * 8, dtype=torch.uint8, device=flat.device)
        padded[: self.numel] = flat
        self.packed = (padded.view(-1, 8) * self._weights(padded.device)).sum(1, dtype=torch.uint8)
        if device is not None:
            self.packed = self.packed.to(device)

    @classmethod
    def _weights(cls, device: torch.device) -> torch.Tensor:
        device = torch.device(device)
        if device not in cls._WEIGHTS:
            cls._WEIGHTS[device] = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)
        return cls._WEIGHTS[device]

    @property
    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def unpack(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The flat bool mask (``numel`` entries), on ``device`` (default: where the bits are)."""
        packed = self.packed if device is None else self.packed.to(device)
        bits = packed.unsqueeze(1).bitwise_and(self._weights(packed.device)).ne(0)
        return bits.reshape(-1)[: self.numel]


class GradientMasker:
    """Apply a boolean mask per parameter name to gradients and optimizer updates.

    Args:
        model: the model being trained (names as in ``model.named_parameters()``).
        masks: ``{parameter name: bool tensor of the parameter's shape}`` (True = may move).
        freeze_uncovered: set ``requires_grad=False`` on every trainable parameter the mask does not cover, so
            they leave the optimizer entirely (exact for free).

    Attributes:
        masks: full-shape bool masks on the parameters' devices (empty under ZeRO-3, see ``shards``).
        shards: ZeRO-3 only: this rank's shard of each partially masked parameter's mask, bit-packed.
        partially_masked: trainable covered parameters with at least one masked entry (the only ones a step can
            move where it must not).
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], freeze_uncovered: bool = True):
        params = dict(model.named_parameters())
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in masks}
        if freeze_uncovered:
            for name, p in params.items():
                if name not in masks:
                    p.requires_grad_(False)
        self.partially_masked = [n for n, p in self.params.items() if p.requires_grad and not bool(masks[n].all())]
        self._active = True
        self.masks: dict[str, torch.Tensor] = {}
        self.shards: dict[str, PackedMask] = {}
        self._fingerprints: dict[str, tuple[float, float]] | None = None
        # Restore policy (see the module docstring); until begin_training, every snapshot is taken afresh.
        self.generation = 0  # bumped whenever masked entries may have moved without a restore
        self._managed = False
        self._clean = False
        self._inert: dict[str, bool] = {}
        self._saved: dict[str, torch.Tensor] = {}
        self._saved_generation = -1
        self._mixed: set[str] = set()  # p.grad holds an unmasked contribution since it was last None
        self._factors: dict[str, torch.Tensor] = {}  # the masks as 0/1 uint8 views, on the gradients' device
        self._handles: list = []
        self._tracking_mixed = False
        if any(hasattr(p, "ds_id") for p in self.params.values()):  # ZeRO-3 partitioned at load (zero.Init)
            from .integrations.deepspeed import shard_masks

            self.shards, self._fingerprints = shard_masks(self.params, masks, self.partially_masked)
            return
        self.masks = {n: m.to(device=params[n].device, dtype=torch.bool).contiguous() for n, m in masks.items()}
        for name in self.partially_masked:
            self._handles.append(self.params[name].register_post_accumulate_grad_hook(self._after_accumulation(name)))

    @property
    def active(self) -> bool:
        """The hooks mask only while True (the trainer turns it off for the retain pass of a two-pass step)."""
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value)
        if not value and not self._tracking_mixed and self.masks:
            # From the first unmasked pass on, gradients may mix masked and unmasked contributions: track them.
            self._tracking_mixed = True
            for name in self.partially_masked:
                self._handles.append(self.params[name].register_hook(self._before_accumulation(name)))

    # -- gradient hooks ------------------------------------------------------------------------------------------
    def _mask_on(self, name: str, device: torch.device) -> torch.Tensor:
        mask = self.masks[name]
        if mask.device != device:  # the Trainer moves the model after the masker exists: follow it once
            mask = self.masks[name] = mask.to(device)
            self._factors.pop(name, None)
        return mask

    def _factor(self, name: str, device: torch.device) -> torch.Tensor:
        """The mask as 0/1 bytes: ``grad * factor`` is ``grad`` where allowed, zero elsewhere (2x faster than a
        bool operand on CPU)."""
        mask = self._mask_on(name, device)
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

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._tracking_mixed = True  # no hooks come back

    # -- restore policy ------------------------------------------------------------------------------------------
    def begin_training(self, optimizer, resumed: bool = False) -> None:
        """Called when training starts (the optimizer exists): from now on the trainer reports every step that lets
        masked entries move (``unmasked_step``), so saved values may be kept across fully masked steps, and nothing
        is saved while nothing can move them.

        Args:
            optimizer: the optimizer as the Trainer holds it (accelerate / DeepSpeed wrappers are looked through).
            resumed: training resumes from a checkpoint, whose optimizer state may carry momentum for masked entries.
        """
        base = innermost_optimizer(optimizer)
        state = getattr(base, "state", {}) or {}
        fresh = not resumed and not any(state.get(self.params[n]) for n in self.partially_masked)
        self._managed, self._clean = True, fresh
        self._inert = {n: _moves_nothing_without_gradient(base, self.params[n]) for n in self.partially_masked}
        self.unmasked_step(clean=fresh)

    def unmasked_step(self, clean: bool = False) -> None:
        """A step whose gradient is not entirely masked is coming: masked entries will move, saved values are stale,
        and the optimizer state now carries momentum for masked entries."""
        self._clean = clean
        self._saved = {}
        self.generation += 1

    @property
    def protected(self) -> list[str]:
        """Partially masked parameters a fully masked step can move (those the restore must cover)."""
        if not self._managed:
            return list(self.partially_masked)
        return [n for n in self.partially_masked if not (self._clean and self._inert.get(n, False))]

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember the values of every protected parameter (call right before a fully masked step)."""
        if self._managed and self._saved_generation == self.generation and self._saved:
            return  # nothing moved them since: stored once
        self._saved = {n: self.params[n].detach().clone(memory_format=torch.contiguous_format)
                       for n in self.protected}
        self._saved_generation = self.generation

    @torch.no_grad()
    def restore(self) -> None:
        """Put masked entries back to their saved values (call right after the step)."""
        for name, saved in self._saved.items():
            p = self.params[name]
            put_back(p.data, saved, self._mask_on(name, p.device))
        if not self._managed:
            self._saved = {}

    # -- measurements --------------------------------------------------------------------------------------------
    def mask_bytes(self) -> int:
        """Bytes of mask storage this process holds (full bool masks, or this rank's bit-packed shards)."""
        return (sum(m.numel() * m.element_size() for m in self.masks.values())
                + sum(s.nbytes for s in self.shards.values()))

    def snapshot_bytes(self) -> int:
        """Bytes of saved values held now for the restore (non-DeepSpeed path)."""
        return sum(t.numel() * t.element_size() for t in self._saved.values())

    def fingerprints(self) -> dict[str, tuple[float, float]]:
        """Per covered parameter, a value equal masks share (used to check that every rank holds the same mask)."""
        if self._fingerprints is None:
            from .integrations.deepspeed import mask_fingerprint

            self._fingerprints = {n: mask_fingerprint(m) for n, m in self.masks.items()}
        return self._fingerprints
