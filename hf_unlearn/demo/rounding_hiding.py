"""A model that hides the forget answers below the 4-bit rounding step: what the quantization attack must expose.

Zhang et al. (arXiv 2410.16454) found unlearned LLMs whose weight changes are smaller than a quantization step, so
that 4-bit quantization rounds them back to the original and the forgotten answers return. ``hide_within_nf4_cells``
builds that failure on purpose: gradient ascent on the forget rows, with every weight that 4-bit loading quantizes
(each ``nn.Linear`` but the output head) projected after each step back into its NF4 rounding cell of the starting
model: the interval of values that round to the same 4-bit code, for the same block maximum. Every other parameter
is frozen. In full precision the model forgets; loaded in 4 bits it is bit for bit the starting model's 4-bit copy.
A quantization attack that reports no gain on it is broken (tests/test_quantization_attack.py).

The NF4 arithmetic is bitsandbytes' (``quantize_4bit``, blocksize 64): a weight tensor is flattened in blocks of 64,
each block divided by its absolute maximum and rounded to the nearest of the 16 NF4 values.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..data.collators import UnlearnDataCollator

BLOCKSIZE = 64
# Keep projected weights this fraction of a cell's width inside it: a value on a cell's edge could round either way.
_EDGE_MARGIN = 1e-3


def _blocks(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = weight.detach().flatten()
    pad = (-flat.numel()) % BLOCKSIZE
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, BLOCKSIZE), flat.numel()


class _NF4Cell:
    """The NF4 rounding cell of each element of one weight tensor, and the projection into it."""

    def __init__(self, weight: torch.Tensor, code: torch.Tensor):
        blocks, self.numel = _blocks(weight)
        self.absmax = blocks.abs().amax(1, keepdim=True).clamp_min(torch.finfo(blocks.dtype).tiny)
        index = (blocks / self.absmax).unsqueeze(-1).sub(code).abs().argmin(-1)
        edges = torch.cat([code.new_tensor([-1.0]), (code[1:] + code[:-1]) / 2, code.new_tensor([1.0])])
        width = (edges[index + 1] - edges[index]) * _EDGE_MARGIN
        self.low, self.high = edges[index] + width, edges[index + 1] - width
        # The block maximum sets every cell of its block: it stays exactly where it was.
        self.is_max = blocks.abs() == self.absmax
        self.start = blocks.clone()

    def project_(self, weight: torch.Tensor) -> None:
        blocks, _ = _blocks(weight)
        scaled = torch.minimum(torch.maximum(blocks / self.absmax, self.low), self.high) * self.absmax
        projected = torch.where(self.is_max, self.start, scaled)
        weight.data.copy_(projected.flatten()[: self.numel].view_as(weight))


def quantized_linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights 4-bit loading quantizes: every ``nn.Linear`` weight but the output embeddings'."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head}


def hide_within_nf4_cells(model: nn.Module, processing_class: Any, forget_rows: list[dict[str, Any]],
                          steps: int = 30, learning_rate: float = 1e-3, batch_size: int = 8,
                          seed: int = 0) -> nn.Module:
    """A copy of ``model`` after ``steps`` of gradient ascent on ``forget_rows`` (Adam, full batches of
    ``batch_size`` rows in a seeded order) with the quantized weights kept in their NF4 cells (module docstring)."""
    import bitsandbytes.functional as bnb_functional

    hidden = copy.deepcopy(model).train()
    weights = quantized_linear_weights(hidden)
    for parameter in hidden.parameters():
        parameter.requires_grad_(False)
    code = bnb_functional.get_4bit_type("nf4", device="cpu").float()
    cells = {name: _NF4Cell(weight, code) for name, weight in weights.items()}
    for weight in weights.values():
        weight.requires_grad_(True)
    optimizer = torch.optim.Adam(list(weights.values()), lr=learning_rate)
    collate = UnlearnDataCollator(processing_class, answer_only=True)
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        picks = torch.randperm(len(forget_rows), generator=order)[:batch_size].tolist()
        batch = collate([forget_rows[i] for i in picks])
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "row_index"}
        loss = -hidden(**inputs).loss  # ascent
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, weight in weights.items():
                cells[name].project_(weight)
    for parameter in hidden.parameters():
        parameter.requires_grad_(False)
    return hidden.eval()
