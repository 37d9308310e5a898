"""When masked entries must be saved and put back around an optimizer step (the restore policy every masker shares).

Masking gradients is not enough: AdamW's decoupled weight decay, and momentum built on earlier unmasked steps, still
move masked entries on a step whose whole gradient is masked. The policy decides which partially masked parameters a
fully masked step can move (``protected``): none while the optimizer state has only ever seen masked gradients and no
weight decay applies (Adam / AdamW / SGD update an entry with zero gradient and zero state by exactly 0), all
otherwise. Values saved on one fully masked step stay valid across the next ones (``generation`` changes only when a
step lets masked entries move), so they are stored once.
"""

from __future__ import annotations

import torch

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


def moves_nothing_without_gradient(optimizer, param: torch.Tensor) -> bool:
    """True if ``optimizer`` leaves an entry with zero gradient and zero state exactly where it is (no weight decay
    in ``param``'s group; under DeepSpeed, whose groups hold flat partitions, in any group)."""
    if optimizer is None:
        return False
    kind = type(optimizer)
    if f"{kind.__module__}.{kind.__qualname__}" not in _INERT_OPTIMIZERS:
        return False
    groups = [g for g in optimizer.param_groups if any(q is param for q in g["params"])] or optimizer.param_groups
    return all(not float(g.get("weight_decay", 0.0) or 0.0) for g in groups)


class RestorePolicy:
    """Which of ``names`` (partially masked parameters) a fully masked step can move, and whether saved values are
    still valid (``generation``). Until ``begin`` every name is protected and nothing saved is reused."""

    def __init__(self, params: dict[str, torch.nn.Parameter], names: list[str]):
        self.params, self.names = params, list(names)
        self.generation = 0  # bumped whenever masked entries may have moved without a restore
        self.managed = False  # begin() ran: the trainer reports every unmasked step from here
        self._clean = False  # the optimizer state has only seen masked gradients
        self._inert: dict[str, bool] = {}

    def begin(self, optimizer, resumed: bool = False) -> None:
        """Training starts (the optimizer exists); ``resumed``: its state comes from a checkpoint."""
        base = innermost_optimizer(optimizer)
        state = getattr(base, "state", {}) or {}
        fresh = not resumed and not any(state.get(self.params[n]) for n in self.names)
        self.managed = True
        self._inert = {n: moves_nothing_without_gradient(base, self.params[n]) for n in self.names}
        self.unmasked_step(clean=fresh)

    def unmasked_step(self, clean: bool = False) -> None:
        """A step whose gradient is not entirely masked is coming: saved values go stale, and the optimizer state
        carries momentum for masked entries from now on."""
        self._clean = clean
        self.generation += 1

    @property
    def protected(self) -> list[str]:
        """The partially masked parameters a fully masked step can move (those a restore must cover)."""
        if not self.managed:
            return list(self.names)
        return [n for n in self.names if not (self._clean and self._inert.get(n, False))]

    def still_valid(self, saved_generation: int) -> bool:
        """Whether values saved at ``saved_generation`` can be reused (nothing moved masked entries since)."""
        return self.managed and saved_generation == self.generation
