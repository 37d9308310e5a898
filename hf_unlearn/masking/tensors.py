"""Bit-level helpers of the masking package: put masked entries back exactly, store a mask at 1 bit per entry, and
fingerprint a mask (to check that every rank holds the same one)."""

from __future__ import annotations

import torch

_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


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

    Used for a rank's shard of a mask under ZeRO-3; ``unpack`` builds the bool tensor for one use.
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


def mask_fingerprint(mask: torch.Tensor, chunk: int = 1 << 24) -> tuple[float, float]:
    """(number of True entries, sum of their positions mod a prime): equal masks give equal fingerprints.

    Exact in float64 (every partial sum stays far below 2**53); computed in chunks so no full-size index tensor.
    """
    flat = mask.reshape(-1)
    count, positions = 0.0, 0.0
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk]
        index = torch.arange(start, start + part.numel(), device=part.device, dtype=torch.int64) % 1_000_003
        count += float(part.sum())
        positions += float(index[part].sum())
    return count, positions
