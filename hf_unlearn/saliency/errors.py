"""The one error a damaged, foreign or incompatible saliency-mask file raises."""

from __future__ import annotations

import os

RECOMPUTE_HINT = (
    "Re-download the mask (a Hub copy is complete or absent), or recompute it with "
    "compute_saliency_mask(model, config, forget_dataset, preserve_datasets, collator) and save it again."
)


class MaskFileError(ValueError):
    """A saliency-mask file (``saliency_mask.safetensors`` or ``saliency_mask_config.json``) cannot be used.

    Raised for every reason a mask file cannot be read as written: truncated or damaged bytes (the checksum does not
    match), a file that is not JSON or not a mask, a mask config that does not belong to the mask next to it, or a file
    written by a newer hf_unlearn. The message names the file and the fix. A ``ValueError``, so code that caught the
    errors of earlier versions still catches it.
    """

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = RECOMPUTE_HINT):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem} {fix}")
