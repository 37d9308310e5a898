"""Pairing of forget and retain examples, reproducible by seed, epoch and index.

The Trainer's sampler shuffles and shards the *anchor* split (forget by default). The partner of anchor index ``i``
in epoch ``e`` is ``perm_e[i % len(partner)]`` with ``perm_e`` a permutation seeded by ``(seed, e)``: a pure function
of its inputs, so multiple processes, gradient accumulation and resuming from a checkpoint see the same pairs, and
over epochs every retain example gets used even when the retain set is much larger than the forget set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback


class ForgetRetainDataset(Dataset):
    """``dataset[i] == {"forget": row, "retain": row or None}``.

    Args:
        forget: the forget rows (a ``datasets.Dataset`` or any sized, indexable dataset).
        retain: the retain rows, or ``None`` for methods without a retain term.
        anchor: ``"forget"`` (an epoch is one pass over the forget set) or ``"retain"`` (one pass over the retain
            set, forget rows cycled: the MMUnlearner reference schedule).
        seed: pairing seed.
    """

    def __init__(self, forget, retain=None, anchor: str = "forget", seed: int = 0):
        if anchor not in ("forget", "retain"):
            raise ValueError(f"anchor must be 'forget' or 'retain', got {anchor!r}.")
        if anchor == "retain" and retain is None:
            raise ValueError("anchor='retain' needs a retain dataset.")
        self.forget, self.retain, self.anchor, self.seed = forget, retain, anchor, seed
        self.epoch = 0
        self._perm_cache: dict[tuple[int, int], torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.forget) if self.anchor == "forget" else len(self.retain)

    def _permutation(self, n: int) -> torch.Tensor:
        key = (self.epoch, n)
        if key not in self._perm_cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm_cache = {key: torch.randperm(n, generator=g)}
        return self._perm_cache[key]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.anchor == "forget":
            retain = None
            if self.retain is not None:
                retain = self.retain[int(self._permutation(len(self.retain))[i % len(self.retain)])]
            return {"forget": self.forget[i], "retain": retain}
        j = int(self._permutation(len(self.forget))[i % len(self.forget)])
        return {"forget": self.forget[j], "retain": self.retain[i]}


class PairingEpochCallback(TrainerCallback):
    """Tell the pairing dataset which epoch starts (accelerate's data loaders do not forward ``set_epoch``)."""

    def __init__(self, dataset: ForgetRetainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is a float that reaches exactly e at the end of epoch e-1, or e + fraction on resume.
        self.dataset.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)
