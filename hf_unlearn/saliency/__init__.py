"""Saliency masks: which parameter entries the forget gradient may move (MMUnlearner, SalUn, random ablation)."""

from .compute import accumulate_fisher, compute_saliency_mask, top_fraction
from .config import CONFIG_NAME, SaliencyMaskConfig
from .errors import MaskFileError
from .mask import MASK_NAME, SaliencyMask

__all__ = [
    "CONFIG_NAME",
    "MASK_NAME",
    "MaskFileError",
    "SaliencyMask",
    "SaliencyMaskConfig",
    "accumulate_fisher",
    "compute_saliency_mask",
    "top_fraction",
]
