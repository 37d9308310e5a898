"""The frozen starting model a method compares against, and the per-row values computed from it once.

* ``FrozenReference``: the one way a trainer holds a frozen reference or teacher (NPO's and IdkPO's pi_ref, KL_Min's
  reference, VKD's teacher, RMU's frozen copy): a model the user gave (or its path / Hub id, loaded with
  ``from_pretrained``), a frozen copy of the starting model (sharing the weights that never train, for methods that
  train only part of it), or, for a PEFT model, the base model with adapters disabled (no second model at all).
  ``drop()`` releases it once every value it was needed for is stored.
* ``PrecomputedStore``: per-row tensors by name (``"forget.ref_logp"``, ``"retain.teacher"``, ...), looked up with the
  row index every training batch carries (``data/row_index.py``), and a method's few running scalars (PDU's
  threshold and dual variable). The trainer writes it into every checkpoint and reads it back on resume
  (``PRECOMPUTED_NAME``), so a resumed run needs neither the reference nor the starting model and continues from
  the same state. Its values are derived from the training rows: checkpoints stay private (a push never includes
  the file).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PRECOMPUTED_NAME = "hf_unlearn_precomputed.safetensors"
REFERENCE_LOG_PROBS = "forget.ref_logp"  # the reference's log-prob of each forget answer (NPO, VKD's NPO term)


class PrecomputedStore:
    """Per-row tensors by name (see the module docstring). Each row's tensor may have any shape, rows of one name
    differ only along their first dimension (tokens); scalars per row are stored as 0-d tensors."""

    def __init__(self):
        self._rows: dict[str, list[torch.Tensor]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._rows

    def __bool__(self) -> bool:
        return bool(self._rows)

    def names(self) -> list[str]:
        return sorted(self._rows)

    def put(self, name: str, rows: list[torch.Tensor]) -> None:
        """Store ``rows`` (one tensor per dataset row, in row order) under ``name``, on the CPU."""
        self._rows[name] = [r.detach().to("cpu").contiguous() for r in rows]

    def rows(self, name: str) -> list[torch.Tensor]:
        return self._rows[name]

    def put_scalar(self, name: str, value: float) -> None:
        """Store one number under ``name`` (float64, so it survives a checkpoint exactly)."""
        self._rows[name] = [torch.tensor(float(value), dtype=torch.float64)]

    def scalar(self, name: str) -> float:
        return float(self._rows[name][0])

    def gather(self, name: str, index: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """The stored values of the rows ``index`` (a batch's row index): scalars stacked to (B,), others
        concatenated along their first dimension; on ``like``'s device and dtype when given."""
        rows = [self._rows[name][i] for i in index.tolist()]
        out = torch.stack(rows) if rows[0].dim() == 0 else torch.cat(rows)
        return out.to(like) if like is not None else out

    def save(self, folder: str) -> None:
        """Write every stored value into ``folder`` (a staged checkpoint), whole or not at all."""
        if not self._rows:
            return
        tensors = {f"{name}/{i}": t for name, rows in self._rows.items() for i, t in enumerate(rows)}
        path = os.path.join(folder, PRECOMPUTED_NAME)
        save_file(tensors, path + ".tmp")
        os.replace(path + ".tmp", path)

    def load(self, folder: str) -> bool:
        """Read the values a checkpoint holds (replacing these); False when it holds none."""
        path = os.path.join(folder, PRECOMPUTED_NAME)
        if not os.path.isfile(path):
            return False
        tensors = load_file(path)
        rows: dict[str, dict[int, torch.Tensor]] = {}
        for key, value in tensors.items():
            name, _, i = key.rpartition("/")
            rows.setdefault(name, {})[int(i)] = value
        self._rows = {name: [by_index[i] for i in range(len(by_index))] for name, by_index in rows.items()}
        return True


def copy_sharing_frozen(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` that shares every frozen parameter with it (only trainable ones are copied)."""
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    return deepcopy(model, memo=shared).eval().requires_grad_(False)


class FrozenReference:
    """The frozen reference / teacher of a trainer (see the module docstring).

    Args:
        model: the reference module, or ``None`` when ``adapter_free`` (the policy with adapters off serves) or
            after ``drop()``.
        adapter_free: the policy is a PEFT model whose base, adapters disabled, is the reference.
    """

    def __init__(self, model: nn.Module | None = None, adapter_free: bool = False):
        self.model, self.adapter_free = model, adapter_free

    @classmethod
    def build(cls, policy: nn.Module, given=None, *, share_frozen: bool = False, zero3: bool = False,
              what: str = "ref_model") -> FrozenReference:
        """The reference of ``policy``: ``given`` (a model, or a path / Hub id loaded like the policy's class), the
        PEFT base with adapters off, or a frozen copy (``share_frozen``: sharing the weights that never train)."""
        if given is policy:
            raise ValueError(f"`{what}` is the model being trained; pass a separate model, a path, or None.")
        if isinstance(given, str):  # a local folder first, then a Hub id; a mistyped path is named as one
            from ..hub.resolve import locate

            given = type(policy).from_pretrained(locate(given, what).location)
        if given is not None:
            return cls(given.eval().requires_grad_(False))
        if hasattr(policy, "disable_adapter"):
            return cls(adapter_free=True)
        if zero3:
            raise ValueError(
                f"Under DeepSpeed ZeRO-3 a deep copy of a partitioned model is not a model. Pass `{what}=` a path or "
                "model id loaded with from_pretrained, or precompute what the method needs from it (NPO: "
                "precompute_ref_log_probs=True; VKD: precompute_teacher_features=True; RMU: "
                "precompute_retain_activations=True)."
            )
        if share_frozen:
            return cls(copy_sharing_frozen(policy))
        return cls(deepcopy(policy).eval().requires_grad_(False))

    @property
    def available(self) -> bool:
        return self.adapter_free or self.model is not None

    @contextmanager
    def active(self, policy: nn.Module, unwrap) -> Iterator[nn.Module]:
        """The module to run as the reference: the reference model, or ``policy`` with its adapters disabled
        (``unwrap``: the trainer's ``accelerator.unwrap_model``)."""
        if self.adapter_free:
            with unwrap(policy).disable_adapter():
                yield policy
            return
        if self.model is None:
            raise RuntimeError("No reference model is available (it was dropped after its values were precomputed).")
        yield self.model

    def drop(self) -> None:
        """Release the reference model (every value needed from it is stored)."""
        self.model = None
