"""Models held in 4 or 8 bits by bitsandbytes (``BitsAndBytesConfig``): QLoRA training and the quantization attack.

bitsandbytes is optional (``pip install 'hf_unlearn[qlora]'``); nothing here imports it.
"""

from __future__ import annotations

from torch import nn

__all__ = ["is_quantized", "keep_4bit_layers_differentiable"]


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` was loaded in 4 or 8 bits (bitsandbytes)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_4bit_layers_differentiable(model: nn.Module) -> None:
    """Keep bitsandbytes' 4-bit layers on their plain path on CPUs with AVX512-BF16.

    bitsandbytes 0.50's ``Linear4bit.forward`` repacks its weight for a faster CPU inference kernel the first time it
    runs in eval mode without gradients, and keeps that format. Two failures follow, both measured here:

    * training: from then on no gradient flows back through the layer, so adapters before it never train (a trainer's
      probe before step 1 does exactly that: LoRA B stayed 0, grad_norm 0, no error);
    * inference: a layer narrower than the 64-weight quantization block cannot be repacked and raises
      ``shape '[32, 0]' is invalid`` (tiny models; the quantization attack evaluates in eval mode).

    The plain path dequantizes the same 4-bit codes, so the numbers are those of the quantized model either way.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
