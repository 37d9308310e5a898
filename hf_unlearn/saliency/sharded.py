"""Saliency scores of a sharded model (DeepSpeed ZeRO-3, FSDP2): every rank keeps the sums of its own shard only.

Under ZeRO-3 and FSDP2 no rank holds a whole parameter, and the fp32 Fisher sums of a 13B language model (2 x 52 GB)
fit no single GPU. ``Layout`` says where each rank's part of every covered parameter lies and how its gradient reaches
the sums (``compute.py`` does the arithmetic, the same in every layout):

* **Every rank runs every batch** (the same rows in the same order), so the gradient a rank sees is the gradient of
  the whole batch, as in one process. ZeRO-3: DeepSpeed's gathering hooks (``integrations.deepspeed.zero3_gathering``:
  an inference engine, no optimizer) leave each parameter's full gradient in ``param.grad`` for a moment; a
  post-accumulate-grad hook keeps this rank's slice of it (``ds_tensor``'s layout) and drops the rest, so at most one
  module's full gradients exist at a time and nothing is reduced. FSDP2 reduce-scatters (averages) the gradients
  inside backward; each rank reads its shard. Each rank's sums are then the slices of the sums one process would hold
  over the same gradients, and since every later step (mean, ``+ eps``, the ratio, ``>= gamma``) is elementwise, so
  is its part of the mask, bit for bit. The price: the ranks repeat each other's compute (no data parallelism; the
  wall time of one process, the memory of 1/N).
* **Top fractions** (``grad_magnitude``, ``random``) need one global threshold: an exact distributed k-th largest value
  by radix selection over the fp32 bit patterns (two all-reduces of a 65,536-bin histogram, 16 bits each), then the
  ties at the cut-off taken in flat order over parameters and ranks (one all-gather of a tie count per parameter and
  rank): the entries ``top_fraction`` selects in one process, never gathering scores.
* The mask is assembled at the end, bit-packed on the wire (``full_masks``): every rank gets the whole mask.
* Each batch's loss is compared across ranks (one all-reduce): ranks given different rows raise an error.

Collectives: the gathering hooks of every forward / backward (ZeRO-3) or FSDP2's own, one all-reduce per batch, and at
the end the selection and the mask assembly; every rank runs the same passes, so they line up.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..integrations.deepspeed import is_zero3_param, param_shape, zero3_gathering, zero3_partition
from ..integrations.fsdp import flat_shards, is_dtensor

HISTOGRAM_BITS = 16  # two passes over the 32 bits of an fp32 score
GATHER_BYTES = 256 * 2**20  # packed mask bits received per all-gather when the mask is assembled
LOSS_AGREEMENT = 1e-3  # relative: the same rows give the same loss on every rank (kernels may differ in the last bits)


@dataclass(frozen=True)
class Shards:
    """Where the ranks' parts of one parameter lie in its flattened full tensor: rank r holds ``ranges[r]``."""

    rank: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def start(self) -> int:
        return self.ranges[self.rank][0]

    @property
    def stop(self) -> int:
        return self.ranges[self.rank][1]

    @property
    def capacity(self) -> int:
        return max(stop - start for start, stop in self.ranges)


def layout_kind(params: dict[str, nn.Parameter]) -> str:
    """``"zero3"``, ``"fsdp2"`` or ``"local"`` (one process, DDP: whole parameters) for the covered parameters."""
    if any(is_zero3_param(p) for p in params.values()):
        return "zero3"
    if any(is_dtensor(p) for p in params.values()):
        return "fsdp2"
    return "local"


class Layout:
    """How the covered parameters' gradients reach the sums, and where each rank's sums lie.

    Args:
        model: the model passed to ``compute_saliency_mask``.
        params: the covered parameters by name.
        sharded: keep only this rank's shard of each sum (default: whenever the model is partitioned). ``False`` on a
            partitioned model keeps whole-size sums on every rank (N times the memory): the one-process computation
            over the same gradients, for checking.
    """

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], sharded: bool | None = None):
        self.model, self.params = model, params
        self.kind = layout_kind(params)
        if sharded and self.kind == "local":
            raise ValueError("sharded=True needs a model partitioned by DeepSpeed ZeRO-3 or FSDP2; this one holds "
                             "whole parameters (one process or DDP).")
        self.sharded = self.kind != "local" if sharded is None else bool(sharded)
        self.shards: dict[str, Shards] = {}
        self.group = None
        self.rank = 0
        if self.kind != "local":
            self.shards, self.group = self._find_shards()
            self.rank = next(iter(self.shards.values())).rank if self.shards else 0
        # Collectives on the device the backend reduces (NCCL: the GPU; gloo: the CPU).
        self.device = self._collective_device()

    # -- where the shards lie --------------------------------------------------------------------------------------
    def _find_shards(self) -> tuple[dict[str, Shards], object]:
        shards, groups = {}, {}
        for name, p in self.params.items():
            if self.kind == "zero3":
                if not is_zero3_param(p):
                    raise NotImplementedError(f"{name} is not partitioned by ZeRO-3 while other covered parameters "
                                              "are; sharded saliency needs every covered parameter partitioned.")
                rank, world, size, group = zero3_partition(p)
                numel = param_shape(p).numel()
                ranges = tuple((min(r * size, numel), min((r + 1) * size, numel)) for r in range(world))
            else:
                if not is_dtensor(p):
                    raise NotImplementedError(f"{name} is not sharded by FSDP2 while other covered parameters are; "
                                              "sharded saliency needs every covered parameter sharded.")
                rank, ranges, group = flat_shards(p)
                ranges = tuple(ranges)
            shards[name] = Shards(rank, ranges)
            groups[id(group)] = group
        if len(groups) > 1:
            raise NotImplementedError("The covered parameters are sharded over different process groups (MoE "
                                      "experts, MiCS?): sharded saliency supports one group.")
        return shards, next(iter(groups.values()), None)

    def _collective_device(self) -> torch.device:
        if self.kind == "zero3":
            from deepspeed.accelerator import get_accelerator

            return torch.device(get_accelerator().current_device_name())
        if self.kind == "fsdp2":
            kind = next(iter(self.params.values())).device_mesh.device_type
            return torch.device(kind) if kind == "cpu" else torch.device(kind, getattr(torch, kind).current_device())
        return torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.kind != "local"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- the passes ------------------------------------------------------------------------------------------------
    def passes(self):
        """Context for every forward / backward pass of the computation (ZeRO-3: the gathering hooks)."""
        return zero3_gathering(self.model) if self.kind == "zero3" else nullcontext(self.model)

    @property
    def fold_in_hooks(self) -> bool:
        """ZeRO-3 must take each gradient in a post-accumulate-grad hook: after the backward, every full gradient
        would exist at once."""
        return self.kind == "zero3"

    def local_shape(self, name: str) -> torch.Size:
        """Shape of this rank's sums of ``name``: its flat slice when sharded, the parameter's shape otherwise."""
        if self.sharded:
            shards = self.shards[name]
            return torch.Size([shards.stop - shards.start])
        return param_shape(self.params[name])

    def take_grad(self, name: str, param: nn.Parameter) -> torch.Tensor:
        """This rank's part of ``param``'s gradient (``param.grad`` is cleared: the caller owns what it gets)."""
        grad, param.grad = param.grad.detach(), None
        if self.kind == "fsdp2":
            return grad.to_local().reshape(-1) if self.sharded else grad.full_tensor()
        if self.kind == "zero3" and self.sharded:
            shards = self.shards[name]
            return grad.reshape(-1)[shards.start:shards.stop]
        return grad

    def part(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full-size tensor of ``name`` (the whole tensor when not sharded)."""
        if not self.sharded:
            return full
        shards = self.shards[name]
        return full.reshape(-1)[shards.start:shards.stop]

    def check_batch(self, loss: torch.Tensor, desc: str, index: int) -> None:
        """Every rank must run the same rows: their losses agree (one all-reduce of 2 floats per batch)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        value = float(loss.detach())
        both = torch.tensor([value, -value], dtype=torch.float64, device=self.device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        high, low = float(both[0]), -float(both[1])
        if high - low > LOSS_AGREEMENT * max(abs(high), abs(low), 1e-12):
            raise ValueError(
                f"Batch {index} of the {desc} dataset gives losses from {low:.6g} to {high:.6g} on different ranks. "
                "Under DeepSpeed ZeRO-3 and FSDP2 every rank computes the scores of every batch: pass the same rows "
                "in the same order on every rank (no per-rank shuffling or sharding of the datasets)."
            )

    # -- the mask --------------------------------------------------------------------------------------------------
    def full_masks(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole bool masks (CPU, parameter shapes) on every rank from each rank's part: the parts bit-packed, several
        parameters per all-gather (up to ``GATHER_BYTES`` received per call)."""
        if not self.sharded:
            return {n: m.cpu() for n, m in local.items()}
        import torch.distributed as dist

        world = len(next(iter(self.shards.values())).ranges)
        nbytes = {n: (self.shards[n].capacity + 7) // 8 for n in local}
        chunks: list[list[str]] = [[]]
        for name in local:
            if chunks[-1] and world * (sum(nbytes[n] for n in chunks[-1]) + nbytes[name]) > GATHER_BYTES:
                chunks.append([])
            chunks[-1].append(name)
        out = {}
        for chunk in chunks:
            mine = torch.cat([pack_bits(local[n], nbytes[n], self.device) for n in chunk])
            gathered = torch.empty(world * mine.numel(), dtype=torch.uint8, device=self.device)
            dist.all_gather_into_tensor(gathered, mine, group=self.group)
            per_rank = gathered.cpu().view(world, mine.numel())
            offset = 0
            for name in chunk:
                ranges = sorted(enumerate(self.shards[name].ranges), key=lambda item: item[1][0])
                pieces = [unpack_bits(per_rank[r, offset:offset + nbytes[name]], stop - start)
                          for r, (start, stop) in ranges]
                out[name] = torch.cat(pieces).reshape(param_shape(self.params[name]))
                offset += nbytes[name]
        return out


_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)  # little bit order, as np.packbits(bitorder="little") and the mask file


def pack_bits(mask: torch.Tensor, nbytes: int, device) -> torch.Tensor:
    """A flat bool mask as ``nbytes`` uint8 (zero-padded), 8 entries per byte, little bit order."""
    padded = torch.zeros(nbytes * 8, dtype=torch.uint8, device=device)
    padded[: mask.numel()] = mask.reshape(-1).to(device)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=device)
    return (padded.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The first ``numel`` entries of a mask packed by ``pack_bits``, as bool."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    return packed.unsqueeze(1).bitwise_and(weights).ne(0).reshape(-1)[:numel]


# ------------------------------------------------------------------------------------------------ top fraction
def sortable_keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys in ``[0, 2**32)`` ordered like the fp32 ``scores`` (``-0.0`` taken as ``+0.0``; no NaN)."""
    bits = (scores.float() + 0.0).contiguous().view(torch.int32).to(torch.int64)  # + 0.0: -0.0 -> +0.0
    unsigned = bits & 0xFFFFFFFF
    # Positive floats: set the sign bit (above every negative); negative floats: flip every bit (larger magnitude,
    # smaller key).
    return torch.where(bits < 0, 0xFFFFFFFF - unsigned, unsigned + 0x80000000)


def sharded_top_fraction(layout: Layout, scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """``top_fraction`` over scores sharded as ``layout`` says: this rank's flat part of each score in, this rank's
    part of the mask out. Exactly ``round(fraction * N)`` entries over all ranks; ties at the cut-off go to the earlier
    entry in the order of the parameters, then of the flat index (the single-process rule)."""
    import torch.distributed as dist

    names = list(scores)
    for name in names:
        if torch.isnan(scores[name]).any():
            raise ValueError(f"The scores of {name} contain NaN; a top fraction of NaN scores is not defined.")
    total = sum(param_shape(layout.params[n]).numel() for n in names)
    k = min(total, max(0, int(fraction * total + 0.5)))
    if k in (0, total):
        return {n: torch.full_like(scores[n], k == total, dtype=torch.bool) for n in names}
    device = layout.device
    # The k-th largest key, 16 bits at a time: count the keys in each bin of the current bit window among those that
    # share the bits found so far; the bin holding the k-th largest gives the next 16 bits.
    prefix, rank_from_top = 0, k
    width = 1 << HISTOGRAM_BITS
    for shift in (HISTOGRAM_BITS, 0):
        hist = torch.zeros(width, dtype=torch.int64, device=device)
        for name in names:
            keys = sortable_keys(scores[name])
            if shift == 0:
                keys = keys[(keys >> HISTOGRAM_BITS) == prefix]
            hist += torch.bincount(((keys >> shift) & (width - 1)).reshape(-1), minlength=width).to(device)
        dist.all_reduce(hist, group=layout.group)
        from_top = hist.flip(0).cumsum(0)  # keys in this bin or above
        index = int(torch.searchsorted(from_top, torch.tensor([rank_from_top], device=device)))
        above = int(from_top[index - 1]) if index > 0 else 0
        rank_from_top -= above
        prefix = (prefix << HISTOGRAM_BITS) | (width - 1 - index)
    cutoff, need = prefix, rank_from_top  # need: how many entries equal to the cut-off are selected
    selected, ties = {}, []
    for name in names:
        keys = sortable_keys(scores[name])
        selected[name] = keys > cutoff
        ties.append(int((keys == cutoff).sum()))
    # Tie counts of every (parameter, rank): each rank takes its share of the first `need` ties in flat order.
    world = len(layout.shards[names[0]].ranges)
    local = torch.tensor(ties, dtype=torch.int64, device=device)
    counts = torch.empty(world * len(names), dtype=torch.int64, device=device)
    dist.all_gather_into_tensor(counts, local, group=layout.group)
    counts = counts.view(world, len(names)).cpu().tolist()
    before = 0
    for i, name in enumerate(names):
        order = sorted(range(world), key=lambda r: layout.shards[name].ranges[r][0])
        for r in order:
            if r == layout.rank:
                take = min(max(need - before, 0), counts[r][i])
                if take:
                    keys = sortable_keys(scores[name])
                    positions = torch.nonzero(keys == cutoff).reshape(-1)[:take]
                    selected[name].view(-1)[positions] = True
            before += counts[r][i]
    return selected
