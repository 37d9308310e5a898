"""The quantization attack: quantize the unlearned model's weights to 8 and 4 bits and evaluate it again.

Zhang et al. (ICLR 2025, "Catastrophic Failure of LLM Unlearning via Quantization", arXiv 2410.16454) showed that
unlearning with a small learning rate and a utility constraint moves most weights by less than a quantization step:
the quantized unlearned model then rounds back to the quantized *original* and answers the forget questions again.
Users do quantize what they download, so a forget score that holds only in full precision is not a forget score.

The copy is quantized the way a user would load it: the weights are written as safetensors to a temporary folder and
read back by ``from_pretrained`` with transformers' ``BitsAndBytesConfig`` (``load_in_8bit``: LLM.int8 row-wise
absmax, its inputs cast to float16; ``load_in_4bit``: NF4 in blocks of 64), which quantizes every ``nn.Linear`` except the output head. The
reported ``quant<bits>_<split>_gain`` is the quantized copy's accuracy minus the full-precision model's: what
quantization brings back (> 0 counts against the method; compare with the oracle's gain, which rounding alone causes).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import tempfile
from collections.abc import Sequence

import torch

from ..kbit import keep_4bit_layers_differentiable
from ..models import unwrap_model
from .attack_registry import AttackContext, AttackSpec, register_attack
from .evaluator import Evaluator

BITS = (8, 4)
# bitsandbytes logs "inputs will be cast from torch.float32 to float16" at every 8-bit matmul on CPU: what LLM.int8
# does by design, said once in the module docstring instead of once per forward. Quiet only while a quantized copy
# is loaded (``quantized_copy``), so importing hf_unlearn changes no logger.
_CAST_LOGGER = "bitsandbytes.autograd._functions"
DEFAULT_SPLITS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa")


def quantization_config(bits: int):
    """transformers' ``BitsAndBytesConfig`` for ``bits`` (8: LLM.int8; 4: NF4, fp32 compute, no double quantization)."""
    if bits not in BITS:
        raise ValueError(f"bits={bits!r}: the quantization attack quantizes to one of {BITS} bits.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("The quantization attack needs the bitsandbytes package: pip install 'hf_unlearn[qlora]'.")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def quantized_copy(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A copy of ``model`` with its linear weights in ``bits`` bits, loaded as a user would load it (see the module
    docstring); ``model`` is unchanged. A PEFT model is merged first (on a copy): adapters are part of what a user
    quantizes."""
    config = quantization_config(bits)
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    model = unwrap_model(model)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        raise ValueError("The model is already quantized: evaluate the full-precision model, the attack quantizes it.")
    with tempfile.TemporaryDirectory(prefix="hf_unlearn_quant_") as folder:
        model.save_pretrained(folder, safe_serialization=True)
        quantized = type(model).from_pretrained(folder, quantization_config=config, dtype=torch.float32)
    keep_4bit_layers_differentiable(quantized)  # the packed CPU kernel fails on layers narrower than a block
    logging.getLogger(_CAST_LOGGER).setLevel(logging.ERROR)
    return quantized.eval()


def quantization_attack(evaluator: Evaluator, splits: Sequence[str] = DEFAULT_SPLITS,
                        bits: Sequence[int] = BITS) -> dict[str, float]:
    """Multiple-choice accuracy of ``evaluator``'s model quantized to each of ``bits``, on each of ``splits`` the
    benchmark has with options (and the evaluator can score), with the change from full precision:
    ``{"quant8_forget_vqa_acc": ..., "quant8_forget_vqa_gain": ..., "quant4_...": ...}``."""
    for b in bits:
        quantization_config(b)  # a bad bit width or a missing library fails before any model is copied
    names = [s for s in splits if s in evaluator.benchmark and {"options", "label"} <= set(
        evaluator.benchmark[s].column_names) and evaluator.can_evaluate(s)]  # multiple-choice splits only
    full = {name: evaluator.mcq_accuracy(name) for name in names}
    results: dict[str, float] = {}
    for b in bits:
        quantized = Evaluator(quantized_copy(evaluator.model, b), evaluator.processing_class, evaluator.benchmark,
                              batch_size=evaluator.batch_size, option_score=evaluator.option_score)
        for name in names:
            accuracy = quantized.mcq_accuracy(name)
            results[f"quant{b}_{name}_acc"] = accuracy
            results[f"quant{b}_{name}_gain"] = accuracy - full[name]
        del quantized
    return results


def _quantization(ctx: AttackContext) -> dict[str, float]:
    """The registry's ``quant``: ``quantization_attack`` on the forget split and its retain split, 8 and 4 bits
    (option ``bits``: a list of 8 and/or 4)."""
    unknown = sorted(set(ctx.options) - {"bits"})
    if unknown:
        raise ValueError(f"quant: unknown option(s) {unknown}; known: bits.")
    return quantization_attack(ctx.evaluator, splits=ctx.split_pair(), bits=tuple(ctx.options.get("bits", BITS)))


register_attack(AttackSpec(
    "quant", _quantization,
    "The weights quantized to 8 and 4 bits (bitsandbytes, as a user loads them): forget and retain accuracy, and "
    "what quantization brings back (gain).", headline="quant4_forget_vqa_gain", aliases=("quantization",)))
