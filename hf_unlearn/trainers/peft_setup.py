"""``peft_config=``: every trainer wraps the model with a PEFT adapter the way TRL's trainers do.

TRL's trainers (``SFTTrainer``, ``DPOTrainer``, ...) take ``peft_config=`` (a ``peft.PeftConfig``) and wrap the model
with ``get_peft_model`` before anything else looks at it; so do ours, in ``UnlearnTrainer.__init__`` (and before a
method's own set-up reads the model: VKD's and RMU's freezing, a saliency mask computed by ``from_method_data``).
What follows from the wrap is the library's usual PEFT path: only adapter parameters train, the reference / teacher
of NPO, IdkPO, KL_Min, VKD and RMU is the base with adapters off (``FrozenReference``, no second model), a saliency
mask covers the adapter factors, and ``save_model`` writes an adapter whose card declares ``library_name: peft``.

A model loaded in 4 or 8 bits (QLoRA: ``BitsAndBytesConfig``) is first prepared with PEFT's
``prepare_model_for_kbit_training``, as TRL does. Two TRL workarounds are carried: gradient checkpointing on a PEFT
model needs ``enable_input_require_grads()`` (transformers#42489), and under ZeRO-3 the adapters keep the base
model's dtype (``autocast_adapter_dtype=False``, trl#6089).
"""

from __future__ import annotations

from torch import nn

from ..kbit import is_quantized, keep_4bit_layers_differentiable

__all__ = ["apply_peft_config", "is_peft_model", "is_quantized", "keep_4bit_layers_differentiable"]


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is already wrapped by PEFT (a ``PeftModel``, or anything with adapters configured)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def apply_peft_config(model: nn.Module, peft_config, args) -> nn.Module:
    """``model`` wrapped with ``peft_config`` (``None``: ``model`` as it is); ``args`` the trainer's config.

    Raises:
        TypeError: ``peft_config`` is not a ``peft.PeftConfig``.
        ValueError: ``model`` already has adapters (as TRL: merge them first, or pass the PEFT model alone).
    """
    if peft_config is None:
        return model
    from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training

    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"`peft_config` must be a `peft.PeftConfig` instance (e.g. `peft.LoraConfig(r=16, "
                        f"target_modules=...)`), got {type(peft_config).__name__}.")
    if is_peft_model(model):
        raise ValueError(
            "You passed a PEFT model together with `peft_config`: the model already has adapters. Pass the PEFT model "
            "alone (its adapters train), or merge them first (`model.merge_and_unload()`) and pass the merged model "
            "with the new `peft_config`."
        )
    checkpointing = bool(getattr(args, "gradient_checkpointing", False))
    kwargs = {}
    if is_quantized(model):  # QLoRA: norms in fp32, input gradients on, checkpointing as asked (TRL's recipe)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs=getattr(args, "gradient_checkpointing_kwargs", None))
        keep_4bit_layers_differentiable(model)
    else:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():  # fp32 adapters beside bf16 weights break ZeRO-3's all-gather (trl#6089)
            kwargs["autocast_adapter_dtype"] = False
    model = get_peft_model(model, peft_config, **kwargs)
    if checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # else no adapter gets a gradient under checkpointing (transformers#42489)
    return model
