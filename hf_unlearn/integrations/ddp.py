"""Every DDP special case of hf_unlearn: one gradient synchronisation per optimizer step, whatever its passes.

Why (issue 13, measured with ``torchrun --nproc_per_node 2`` on CPU / gloo): DDP's reducer expects one forward per
backward and learns from that forward which parameters will get a gradient. An unlearning step runs a forward per
term (forget, retain) that touch different parameters (a text-only retain row skips the vision tower), and
sometimes a term, or a whole rank's step, that reaches no trainable parameter at all (a text-only retain batch while
only the vision tower trains). The reducer fails on each of these:

* two forwards, one backward, ``find_unused_parameters=True`` (transformers' default): ``RuntimeError: Expected to
  mark a variable ready only once`` (the second forward declares the vision tower unused, the first one's backward
  then reaches it);
* one backward per term under ``no_sync``, last one synchronised: with ``find_unused_parameters=False`` any parameter
  the last term does not reach fails the next step (``Expected to have finished reduction in the prior iteration``);
  with ``True`` a last term that reaches no trainable parameter cannot take part in the all-reduce at all;
* one forward over the concatenated forget + retain batch (TRL's ``concatenated_forward``) needs one backward, so it
  cannot mask the forget gradient and not the retain gradient (``mask_scope="forget"``), and it does not fit the
  ``forget_loss(model, forget)`` / ``retain_loss(model, retain)`` contract every objective is written against.

The mechanism: every forward and backward of an unlearning step runs under ``DistributedDataParallel.no_sync()``
(the reducer stays idle, gradients accumulate locally, any number of passes, any parameters), and after the
backward of the last micro-batch of the optimizer step ``GradientAverager.average()`` averages the gradients over
the ranks: the result DDP's all-reduce would give (``sum / world size``), in the same place (before clipping, the
saliency-mask restore and the optimizer step). A parameter with no gradient on any rank keeps ``None`` (as with
``find_unused_parameters=True``: AdamW skips it, as in a single process); one with a gradient on some ranks only
gets zeros on the others. ``ddp_find_unused_parameters`` no longer matters. Cost: one all-reduce of a flag per
trainable parameter plus the gradients in flat buckets, once per optimizer step, not overlapped with the backward
(``benchmarks/bench_ddp_step.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["GradientAverager", "is_ddp", "one_sync_per_step"]

BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, DistributedDataParallel)


class GradientAverager:
    """Average the accumulated gradients of a DDP model's trainable parameters over its process group.

    Args:
        model: the ``DistributedDataParallel`` wrapper (its parameters are in the same order on every rank).
        bucket_bytes: size of the flat buffers each all-reduce sends.
    """

    def __init__(self, model: DistributedDataParallel, bucket_bytes: int = BUCKET_BYTES):
        self.group = model.process_group
        self.world_size = dist.get_world_size(self.group)
        self.params = [p for p in model.module.parameters() if p.requires_grad]
        self.bucket_bytes = bucket_bytes

    def _buckets(self, params: list[nn.Parameter]) -> Iterator[list[nn.Parameter]]:
        by_kind: dict[tuple, list[nn.Parameter]] = {}
        for p in params:
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in by_kind.values():
            bucket, size = [], 0
            for p in group:
                bucket.append(p)
                size += p.grad.numel() * p.grad.element_size()
                if size >= self.bucket_bytes:
                    yield bucket
                    bucket, size = [], 0
            if bucket:
                yield bucket

    @torch.no_grad()
    def average(self) -> None:
        """A collective: every rank calls it once per optimizer step, after its last backward."""
        if not self.params:
            return
        if any(p.grad is not None and p.grad.is_sparse for p in self.params):
            raise NotImplementedError("Sparse gradients (e.g. nn.Embedding(sparse=True)) are not supported under DDP.")
        # Which parameters got a gradient on some rank (NCCL reduces device tensors only: use the parameters' device).
        used = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32,
                            device=self.params[0].device)
        dist.all_reduce(used, op=dist.ReduceOp.MAX, group=self.group)
        synced = [p for p, u in zip(self.params, used.tolist()) if u]
        for p in synced:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        scale = 1.0 / self.world_size
        for bucket in self._buckets(synced):
            grads = [p.grad for p in bucket]
            flat = torch._utils._flatten_dense_tensors(grads).mul_(scale)  # DDP scales before the sum, too
            dist.all_reduce(flat, group=self.group)
            for grad, value in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(value)


@contextmanager
def one_sync_per_step(model: nn.Module, accelerator) -> Iterator[None]:
    """Run one micro-batch of an unlearning step; under DDP without the reducer, averaging once per optimizer step.

    Outside DDP (one process, DeepSpeed, FSDP) this does nothing. Under DDP the body runs under ``no_sync()``; when it
    ends without an error and the micro-batch closes the optimizer step (``accelerator.sync_gradients``, set by the
    Trainer before each micro-batch), the gradients are averaged over the ranks.
    """
    if not is_ddp(model):
        yield
        return
    with model.no_sync():
        yield
    if accelerator.sync_gradients:
        averager = getattr(model, "_hf_unlearn_averager", None)
        if averager is None:  # once per wrapper: the trainable set is fixed before training starts
            averager = model._hf_unlearn_averager = GradientAverager(model)
        averager.average()
