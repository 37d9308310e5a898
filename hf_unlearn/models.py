"""Finding the vision tower, projector and language model of any supported architecture.

Everything here works from parameter and module *names*, so it is robust to how a model is wrapped: DDP / DeepSpeed
(``module.``), ``torch.compile`` (``_orig_mod.``) and PEFT (``base_model.model.`` prefix, ``.base_layer`` and
``lora_A.default`` components). Supported layouts (transformers 5.x names):

===================  ==============================  ===================================  ==============================
architecture         vision                          projector                            language
===================  ==============================  ===================================  ==============================
LLaVA / LLaVA-NeXT   ``model.vision_tower.``         ``model.multi_modal_projector.``,    ``model.language_model.``,
                                                     ``model.image_newline``              ``lm_head.``
Qwen2-VL / 2.5-VL    ``model.visual.``               ``model.visual.merger.``             ``model.language_model.``,
                                                                                          ``lm_head.``
Idefics / Mllama     ``model.vision_model.``         ``model.connector.`` /               ``model.text_model.`` /
                                                     ``model.multi_modal_projector.``     ``model.language_model.``
text-only LM         --                              --                                   every parameter
===================  ==============================  ===================================  ==============================
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

VISION = "vision"
PROJECTOR = "projector"
LANGUAGE = "language"
GROUPS = (VISION, PROJECTOR, LANGUAGE)

# Module-name components that mark each part. The projector is checked first because Qwen2-VL nests its projector
# (``merger``) inside the vision tower (``visual``).
_PROJECTOR_PARTS = frozenset(
    {"multi_modal_projector", "mm_projector", "connector", "merger", "deepstack_merger_list", "image_newline"}
)
_VISION_PARTS = frozenset({"vision_tower", "visual", "vision_model", "vision_encoder"})
_LANGUAGE_PARTS = frozenset({"language_model", "text_model", "lm_head", "embed_tokens"})

# Wrapper prefixes stripped (repeatedly) before matching: DDP / DeepSpeed, torch.compile, PEFT.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
_WRAPPER_CLASS_NAMES = frozenset(
    {"DistributedDataParallel", "DataParallel", "DeepSpeedEngine", "FullyShardedDataParallel", "PipelineEngine"}
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the underlying ``transformers`` model.

    Strips DDP / DataParallel / DeepSpeed engines (``.module``), ``torch.compile`` (``._orig_mod``) and PEFT wrappers
    (``get_base_model()``; the LoRA layers stay injected in the returned model), in any nesting order.
    """
    while True:
        if type(model).__name__ in _WRAPPER_CLASS_NAMES and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            base = model.get_base_model()
            if base is model:
                return model
            model = base
        else:
            return model


def canonical_parameter_name(name: str) -> str:
    """``name`` without wrapper prefixes and PEFT's ``.base_layer`` component.

    ``module.base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight`` becomes
    ``model.language_model.layers.0.self_attn.q_proj.weight``: the name the parameter has in the bare model.
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                stripped = True
    return name.replace(".base_layer.", ".")


def parameter_group(name: str) -> str | None:
    """The part of a vision-language model a parameter belongs to: ``"vision"``, ``"projector"``, ``"language"``.

    Decided from the name alone (wrapper prefixes and LoRA suffixes do not matter). Returns None when the name has no
    recognised component, e.g. every parameter of a text-only LM except ``embed_tokens`` and ``lm_head``: use
    `parameter_groups`, which knows the model, to classify those as language.
    """
    parts = canonical_parameter_name(name).split(".")
    if _PROJECTOR_PARTS.intersection(parts):
        return PROJECTOR
    if _VISION_PARTS.intersection(parts):
        return VISION
    if _LANGUAGE_PARTS.intersection(parts):
        return LANGUAGE
    return None


def parameter_groups(model: nn.Module) -> dict[str, str | None]:
    """Map every name of ``model.named_parameters()`` (names as in the model given) to its group.

    For a text-only model every parameter is ``"language"``; for a vision-language model (vision parameters or a
    ``config.vision_config``), parameters with no recognised component map to None.
    """
    names = [name for name, _ in model.named_parameters()]
    groups = {name: parameter_group(name) for name in names}
    has_vision_config = getattr(getattr(unwrap_model(model), "config", None), "vision_config", None) is not None
    if not has_vision_config and not any(group in (VISION, PROJECTOR) for group in groups.values()):
        return {name: LANGUAGE for name in names}
    return groups


def is_vision_language_model(model: nn.Module) -> bool:
    """True when ``model`` has vision-tower parameters or a ``vision_config``."""
    if any(parameter_group(name) in (VISION, PROJECTOR) for name, _ in model.named_parameters()):
        return True
    config = getattr(unwrap_model(model), "config", None)
    return getattr(config, "vision_config", None) is not None


def parameter_name_prefixes(model: nn.Module, depth: int = 2, limit: int = 20) -> list[str]:
    """The distinct first ``depth`` components of the model's parameter names (for error messages)."""
    seen: dict[str, None] = {}
    for name, _ in model.named_parameters():
        parts = canonical_parameter_name(name).split(".")
        seen[".".join(parts[:depth])] = None
        if len(seen) >= limit:
            break
    return list(seen)


def unknown_architecture_error(model: nn.Module, what: str) -> ValueError:
    """The error for a VLM-only operation on a model whose parts are not recognised (class and name prefixes)."""
    return ValueError(
        f"Could not find the {what} of {type(unwrap_model(model)).__name__}: none of its parameter names contains a "
        f"known component. Parameter-name prefixes found: {parameter_name_prefixes(model)}. Supported components: "
        f"vision {sorted(_VISION_PARTS)}, projector {sorted(_PROJECTOR_PARTS)}, language {sorted(_LANGUAGE_PARTS)}. "
        "For another architecture, select parameters with a regex or a list of names instead of a preset "
        "(e.g. SaliencyMaskConfig(target_modules=r'model\\.my_vision\\..*'))."
    )


def vision_parameter_names(model: nn.Module, include_projector: bool = True) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the vision tower, and of the projector unless excluded.

    Raises a ValueError naming the model class and its parameter-name prefixes when the model has no vision tower.
    """
    wanted = (VISION, PROJECTOR) if include_projector else (VISION,)
    names = [name for name, group in parameter_groups(model).items() if group in wanted]
    if not names:
        raise unknown_architecture_error(model, "vision tower")
    return names


def language_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the language model, ``embed_tokens`` and ``lm_head`` included.

    For a text-only causal LM this is every parameter.
    """
    names = [name for name, group in parameter_groups(model).items() if group == LANGUAGE]
    if not names:
        raise unknown_architecture_error(model, "language model")
    return names


def _find_module(model: nn.Module, components: Iterable[str], exclude: Iterable[str] = ()) -> nn.Module | None:
    """The shallowest submodule of the unwrapped model whose last name component is in ``components``."""
    components, exclude = frozenset(components), frozenset(exclude)
    best: tuple[int, nn.Module] | None = None
    for name, module in unwrap_model(model).named_modules():
        parts = name.split(".")
        if parts[-1] in components and not exclude.intersection(parts):
            if best is None or len(parts) < best[0]:
                best = (len(parts), module)
    return None if best is None else best[1]


def get_vision_tower(model: nn.Module) -> nn.Module:
    """The vision encoder module. For Qwen2-VL / 2.5-VL it also contains the projector (``visual.merger``)."""
    module = _find_module(model, _VISION_PARTS)
    if module is None:
        raise unknown_architecture_error(model, "vision tower")
    return module


def get_projector(model: nn.Module) -> nn.Module | None:
    """The vision-to-language projector (``multi_modal_projector``, ``merger``, ``connector``), or None if absent.

    Raises a ValueError for a model without a vision tower.
    """
    get_vision_tower(model)  # a text-only model has no projector to ask for
    return _find_module(model, _PROJECTOR_PARTS - {"image_newline", "deepstack_merger_list"})


def get_language_model(model: nn.Module) -> nn.Module:
    """The language-model module (``language_model`` / ``text_model``); the whole model for a text-only LM.

    ``lm_head`` sits outside this module in ``*ForConditionalGeneration`` classes; `language_parameter_names` includes
    it.
    """
    base = unwrap_model(model)
    module = _find_module(base, {"language_model", "text_model"}, exclude=_VISION_PARTS)
    if module is not None:
        return module
    if not is_vision_language_model(base):
        return base
    raise unknown_architecture_error(model, "language model")


def layer_indices(num_layers: int, layers: Iterable[int] | None, what: str,
                  default: Iterable[int] | None = None) -> list[int]:
    """``layers`` (Python indices, negative from the end) as sorted non-negative indices; None: ``default`` (every
    layer when that is None too). ``what`` names the setting in the error for an index out of range."""
    if layers is None:
        return sorted(range(num_layers) if default is None else default)
    layers = list(layers)
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"{what}={layers}: layer(s) {bad} out of range for {num_layers} layers; use "
                         f"0..{num_layers - 1} or -{num_layers}..-1.")
    return sorted({i % num_layers for i in layers})


def mlp_projection(block: nn.Module, names: Iterable[str], role: str, user: str) -> nn.Linear:
    """The projection of a transformer block's MLP found under one of ``names`` (``role`` and ``user``, e.g. "first
    projection" and "MANU", name it in the error for a block with none)."""
    names = tuple(names)
    mlp = getattr(block, "mlp", None)
    for name in names:
        module = getattr(mlp, name, None) if mlp is not None else None
        if isinstance(module, nn.Linear):
            return module
    children = [n for n, _ in (mlp or block).named_children()]
    raise ValueError(f"{type(block).__name__} has no MLP {role} named one of {names} (children of its "
                     f"{'mlp' if mlp is not None else 'block'}: {children}); {user} cannot find its neurons.")
