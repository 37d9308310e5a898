"""Small collectives shared by the launcher integrations: do all ranks agree on a few flags?"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_ranks_agree(flags: list[bool], device) -> bool:
    """True when every rank passed the same flags (one all-reduce of 2 x len(flags) ints; True outside torchrun).

    A collective: every rank calls it at the same point. ``device`` must be one the backend reduces (NCCL: a GPU).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    values = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    both = torch.cat([values, -values])  # max of x and of -x: max and min in one reduction
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    high, low = both[: len(flags)], -both[len(flags):]
    return bool(torch.equal(high, low))


def end_distributed() -> None:
    """Every rank past a barrier, then the default process group destroyed; a no-op outside torchrun.

    Call it last in a script that torchrun launches. A gloo group left to the interpreter's exit can abort a rank
    after its work is done ("terminate called without an active exception", SIGABRT), which fails the whole launch.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
