"""Intermediate features of a vision-language model at a *feature site*, captured with a forward hook.

VKD (``trainers/vkd.py``) compares a student's and a teacher's features at one site:

=================  ==========================================  ===============================================
site               LLaVA                                       Qwen2-VL / Qwen2.5-VL
=================  ==========================================  ===============================================
``vision_layer``   output of CLIP encoder block k,             output of vision block k, (N_patches, d_v)
                   (n_images, 1 + N, d_v) incl. CLS
``projector``      ``multi_modal_projector`` output,           ``visual.merger`` output, (N_merged, d_text)
                   (n_images, N, d_text)
``llm_hidden``     output of decoder layer l at the image-token positions, (N_image_tokens, d_text)
=================  ==========================================  ===============================================

Every site is returned as a 2-D ``(tokens, dim)`` tensor whose rows are in batch-row order (all tokens of row 0's
images first), so ``features_per_row`` can split it per example and a student and a teacher pass over the same batch
line up token by token. ``k`` and ``l`` index blocks from 0; negative values count from the end (-1 = last block).
Qwen2.5-VL's vision blocks and merger work in window order; the order is the same for student and teacher and stays
within each image, so per-token distances and per-row splits are unaffected.

The vision sites do not need the language model: ``extract_features(..., need_outputs=False)`` runs only
``get_image_features`` (vision tower + projector), which is where VKD's speed-up over full-model training comes from.
"""

from __future__ import annotations

import hashlib
import inspect
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .models import get_language_model, get_projector, get_vision_tower, unwrap_model

FEATURE_SITES = ("vision_layer", "projector", "llm_hidden")
_BLOCK_LIST_NAMES = ("layers", "blocks", "layer")  # Llama/CLIP, Qwen2-VL, DINOv2/ViT (`encoder.layer`)
# Batch keys that the vision-only pass forwards to ``get_image_features`` when its signature names them.
_IMAGE_KEYS = ("pixel_values", "image_grid_thw", "image_sizes")


def check_feature_site(site: str) -> None:
    if site not in FEATURE_SITES:
        raise ValueError(f"Unknown feature site {site!r}; use one of {FEATURE_SITES}.")


def _block_list(root: nn.Module, exclude: tuple[nn.Module, ...] = ()) -> nn.ModuleList | None:
    """The shallowest ``nn.ModuleList`` named ``layers`` / ``blocks`` under ``root`` and outside ``exclude``."""
    excluded = {id(p) for m in exclude if m is not None for p in m.parameters()}
    best: tuple[int, nn.ModuleList] | None = None
    for name, module in root.named_modules():
        parts = name.split(".")
        if isinstance(module, nn.ModuleList) and parts[-1] in _BLOCK_LIST_NAMES and len(module) > 0:
            if any(id(p) in excluded for p in module.parameters()):
                continue
            if best is None or len(parts) < best[0]:
                best = (len(parts), module)
    return None if best is None else best[1]


def vision_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of the vision encoder (CLIP ``encoder.layers``, Qwen2-VL ``visual.blocks``, DINOv2
    ``encoder.layer``)."""
    tower = get_vision_tower(model)
    blocks = _block_list(tower, exclude=(get_projector(model),))
    if blocks is None:
        raise ValueError(f"Could not find the blocks of the vision tower {type(tower).__name__} (a ModuleList named "
                         f"{_BLOCK_LIST_NAMES}); use feature_site='projector' for this model.")
    return blocks


def language_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of the language model."""
    lm = get_language_model(model)
    blocks = _block_list(lm)
    if blocks is None:
        raise ValueError(f"Could not find the decoder layers of {type(lm).__name__}; use a vision feature site.")
    return blocks


def image_token_id(model: nn.Module) -> int:
    """The id of the image placeholder token the processor expands (one per image feature)."""
    config = unwrap_model(model).config
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(unwrap_model(model)).__name__}'s config has no image_token_id: not a supported VLM.")


def _pick(blocks: nn.ModuleList, layer: int, what: str) -> nn.Module:
    n = len(blocks)
    if not -n <= layer < n:
        raise ValueError(f"feature_layer={layer} is out of range for the {n} {what} blocks; use 0..{n - 1} or "
                         f"-{n}..-1.")
    return blocks[layer]


def feature_module(model: nn.Module, site: str, layer: int = -1) -> nn.Module:
    """The module whose output is the feature at ``site`` (``layer`` is used by the block sites)."""
    check_feature_site(site)
    if site == "vision_layer":
        return _pick(vision_blocks(model), layer, "vision")
    if site == "llm_hidden":
        return _pick(language_blocks(model), layer, "language-model")
    projector = get_projector(model)
    if projector is None:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no projector module; use "
                         "feature_site='vision_layer'.")
    return projector


class FeatureCapture:
    """Context manager: a forward hook keeps the output of ``module`` (the first element when it is a tuple).

    The module must run exactly once inside the context; the hook is removed on exit, so recomputation in the
    backward pass (gradient checkpointing) is not captured.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.output: torch.Tensor | None = None
        self.calls = 0
        self._handle = None

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.output = output[0] if isinstance(output, (tuple, list)) else output

    def __enter__(self) -> FeatureCapture:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        if exc[0] is None and self.calls > 1:
            raise RuntimeError(
                f"The feature module {type(self.module).__name__} ran {self.calls} times in one forward pass; VKD "
                "supports one image pass per batch (no video inputs)."
            )


def has_images(inputs: dict) -> bool:
    return inputs.get("pixel_values") is not None


def run_vision_only(model: nn.Module, inputs: dict) -> Any:
    """Vision tower + projector only (``get_image_features``); the language model does not run."""
    base = unwrap_model(model)
    fn = getattr(base, "get_image_features", None)
    if fn is None:
        raise ValueError(f"{type(base).__name__} has no get_image_features(); VKD supports LLaVA and Qwen2(.5)-VL.")
    params = inspect.signature(fn).parameters
    kwargs = {k: inputs[k] for k in _IMAGE_KEYS if inputs.get(k) is not None and (k == "pixel_values" or k in params)}
    return fn(**kwargs)


def extract_features(
    model: nn.Module,
    inputs: dict,
    site: str,
    layer: int = -1,
    *,
    need_outputs: bool = False,
    module: nn.Module | None = None,
) -> tuple[torch.Tensor | None, Any]:
    """Features ``(tokens, dim)`` at ``site`` for a collated batch, and the model outputs when they were computed.

    Args:
        model: the model (wrapped or not) to run.
        inputs: a model batch (``input_ids``, ``pixel_values``, ...; no extra keys).
        site, layer: the feature site (`FEATURE_SITES`) and block index for the block sites.
        need_outputs: run the full model and return its outputs (logits, loss). Otherwise the vision sites run the
            vision tower and projector only and the outputs are None.
        module: the feature module, when the caller has already resolved it (`feature_module`).

    Returns ``(None, outputs)`` when the batch has no image.
    """
    if "pixel_values_videos" in inputs:
        raise ValueError("VKD supports image inputs only; this batch has `pixel_values_videos`.")
    module = module if module is not None else feature_module(model, site, layer)
    full = need_outputs or site == "llm_hidden"
    if not has_images(inputs):
        return None, (model(**inputs) if need_outputs else None)
    with FeatureCapture(module) as capture:
        outputs = model(**inputs) if full else run_vision_only(model, inputs)
    if capture.output is None:
        raise RuntimeError(f"The feature module for site {site!r} did not run; is it part of the image path?")
    features = capture.output
    if site == "llm_hidden":
        features = features[inputs["input_ids"] == image_token_id(model)]  # row-major: row 0's tokens first
    else:
        features = features.reshape(-1, features.shape[-1])
    return features, (outputs if need_outputs else None)


def features_per_row(features: torch.Tensor | None, inputs: dict, model: nn.Module) -> list[torch.Tensor]:
    """Split batch features into one ``(tokens_i, dim)`` tensor per example (empty for rows without an image).

    Every site has a fixed number of feature rows per image token (LLaVA vision layer: (1 + N) / N with CLS;
    Qwen2-VL vision layer: merge_size**2; projector and LLM hidden: 1), so each row's share is proportional to its
    number of image tokens in ``input_ids``.
    """
    counts = (inputs["input_ids"] == image_token_id(model)).sum(1).tolist()
    total = sum(counts)
    if features is None or total == 0:
        dim = 0 if features is None else features.shape[-1]
        empty = torch.empty(0, dim) if features is None else features[:0]
        return [empty for _ in counts]
    n = features.shape[0]
    if any(c * n % total for c in counts):
        raise ValueError(f"Cannot split {n} feature rows over image-token counts {counts}: the number of features "
                         "per image token differs between images (LLaVA-NeXT any-res?). Precomputing is not "
                         "supported for this model; set precompute_teacher_features=False.")
    return list(torch.split(features, [c * n // total for c in counts]))


def _memoizable_tower(model: nn.Module) -> tuple[nn.Module, int] | None:
    """(vision tower, feature layer) of a LLaVA-style model whose ``get_image_features`` reads one hidden state of a
    tower that takes a batch of whole images (one per leading index); None for other architectures (Qwen2-VL's
    tower takes flattened patches of all images at once)."""
    base = unwrap_model(model)
    inner = getattr(base, "model", None)
    config = getattr(base, "config", None)
    layer = getattr(config, "vision_feature_layer", None)
    tower = getattr(inner, "vision_tower", None)
    if tower is None or not isinstance(layer, int) or not hasattr(inner, "get_image_features"):
        return None
    return tower, layer


@contextmanager
def memoized_image_features(model: nn.Module):
    """While active, the vision tower of a LLaVA-style model runs once per distinct image: its feature-layer output
    is kept by the image's pixel bytes and reused (an evaluation asks 10 questions with 4 options about each face,
    40 tower passes for one result). Only sound while the tower's weights do not change: calls that could train it
    (gradients enabled and a tower parameter requiring them) run the tower as usual. A no-op for other
    architectures."""
    found = _memoizable_tower(model)
    if found is None:
        yield
        return
    tower, layer = found
    original = tower.forward
    cache: dict[bytes, torch.Tensor] = {}
    num_layers = getattr(getattr(tower, "config", None), "num_hidden_layers", None)

    def forward(pixel_values, *args, **kwargs):
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())
        if trains or num_layers is None or args:
            return original(pixel_values, *args, **kwargs)
        keys = [hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).digest() for image in pixel_values]
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
        if missing:
            first = {k: keys.index(k) for k in missing}
            out = original(pixel_values[[first[k] for k in missing]], **{**kwargs, "output_hidden_states": True,
                                                                         "return_dict": True})
            for j, k in enumerate(missing):
                cache[k] = out.hidden_states[layer][j]
        hidden = [None] * (num_layers + 1)
        hidden[layer] = torch.stack([cache[k] for k in keys])
        return BaseModelOutputWithPooling(last_hidden_state=None, hidden_states=tuple(hidden))

    own = "forward" in tower.__dict__  # an instance attribute already (another wrapper): put it back on exit
    tower.forward = forward
    try:
        yield
    finally:
        if own:
            tower.forward = original
        else:
            del tower.forward  # back to the class's forward
