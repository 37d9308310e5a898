"""Builders for tiny LLaVA, Qwen2-VL, Qwen2.5-VL and Llama models with tokenizers trained in code.

Every builder is deterministic for a seed and works with ``HF_HUB_OFFLINE=1``. The models are stock ``transformers``
classes, so everything that works on them works on the real checkpoints too (save, reload with the Auto classes,
PEFT, DeepSpeed). Sizes are the smallest that train and run every code path in seconds, and can be scaled with keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

# A small generic corpus so a tokenizer trained without user text still covers ordinary English.
_BASE_CORPUS = [
    "What is the name of the person in this image? Answer the question.",
    "The quick brown fox jumps over the lazy dog. A red circle, a blue square and a green triangle.",
    "Who lives in which city, what is their job, and which hobby or pet do they have?",
    "USER: ASSISTANT: system user assistant You are a helpful assistant.",
    "0 1 2 3 4 5 6 7 8 9 yes no A B C D",
]

LLAVA_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
]

# llava-hf style: "USER: <image>\n{text} ASSISTANT: {answer}</s>"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Qwen2-VL-Instruct style without the default system prompt (keeps tiny sequences short).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor (the video processor needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without a video processor (the video processor needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def build_tokenizer(
    style: str = "llava", corpus: Iterable[str] | None = None, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer in code.

    Args:
        style: ``"llava"`` (``<s>``/``</s>``/``<image>`` specials, BOS prepended) or ``"qwen"`` (ChatML specials).
        corpus: extra text to train on (e.g. a benchmark's questions and answers) so that it tokenizes compactly.
        vocab_size: BPE vocabulary size including byte alphabet and specials.
    """
    if style not in ("llava", "qwen"):
        raise ValueError(f"Unknown tokenizer style {style!r}; use 'llava' or 'qwen'.")
    specials = LLAVA_SPECIALS if style == "llava" else QWEN_SPECIALS
    tok = Tokenizer(models.BPE(unk_token="<unk>" if style == "llava" else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = list(_BASE_CORPUS) + list(corpus or [])
    tok.train_from_iterator(text, trainer)
    if style == "llava":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
            extra_special_tokens={"image_token": "<image>"},
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
        },
    )


def _text_config_kwargs(tok, hidden_size: int, num_layers: int) -> dict:
    return dict(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )


def tiny_llama(
    seed: int = 0, corpus: Iterable[str] | None = None, vocab_size: int = 512, hidden_size: int = 64,
    num_layers: int = 2,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny Llama causal LM and its tokenizer (the LLaVA-style tokenizer, whose chat template it uses)."""
    tok = build_tokenizer("llava", corpus, vocab_size)
    tok.chat_template = LLAVA_CHAT_TEMPLATE
    cfg = LlamaConfig(
        **_text_config_kwargs(tok, hidden_size, num_layers),
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), tok


def tiny_llava(
    seed: int = 0, image_size: int = 32, corpus: Iterable[str] | None = None, vocab_size: int = 512,
    hidden_size: int = 64, num_layers: int = 2, vision_hidden_size: int = 32, vision_layers: int = 2,
    patch_size: int = 8,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A tiny LLaVA (CLIP vision tower, 2-layer projector, Llama LM) and its processor.

    ``image_size=32`` with ``patch_size=8`` gives 16 image tokens per image.
    """
    tok = build_tokenizer("llava", corpus, vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_hidden_layers=vision_layers,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden_size,
    )
    text = LlamaConfig(
        **_text_config_kwargs(tok, hidden_size, num_layers),
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2, vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(cfg).eval(), processor


def _tiny_qwen(
    model_cls, config_cls, processor_cls, vision_config: dict, seed: int, image_size: int,
    corpus: Iterable[str] | None, vocab_size: int, hidden_size: int, num_layers: int,
):
    tok = build_tokenizer("qwen", corpus, vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=vision_config["patch_size"], merge_size=2, temporal_patch_size=2,
        min_pixels=image_size * image_size, max_pixels=image_size * image_size,
    )
    processor = processor_cls(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
    head_dim = hidden_size // 4
    half = head_dim // 2  # M-RoPE sections (temporal, height, width) must sum to head_dim / 2
    text = dict(
        **_text_config_kwargs(tok, hidden_size, num_layers),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]},
        pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], bos_token_id=None,
    )
    cfg = config_cls(
        vision_config=vision_config, text_config=text, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return model_cls(cfg).eval(), processor


def tiny_qwen2_vl(
    seed: int = 0, image_size: int = 32, corpus: Iterable[str] | None = None, vocab_size: int = 512,
    hidden_size: int = 64, num_layers: int = 2,
) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLImageOnlyProcessor]:
    """A tiny Qwen2-VL and an image-only processor. ``image_size=32`` gives 16 merged image tokens."""
    vision = dict(depth=2, embed_dim=32, hidden_size=hidden_size, num_heads=2, mlp_ratio=2, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2)
    return _tiny_qwen(Qwen2VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLImageOnlyProcessor, vision, seed,
                      image_size, corpus, vocab_size, hidden_size, num_layers)


def tiny_qwen2_5_vl(
    seed: int = 0, image_size: int = 32, corpus: Iterable[str] | None = None, vocab_size: int = 512,
    hidden_size: int = 64, num_layers: int = 2,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLImageOnlyProcessor]:
    """A tiny Qwen2.5-VL and an image-only processor."""
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
                  patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1])
    return _tiny_qwen(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor, vision,
                      seed, image_size, corpus, vocab_size, hidden_size, num_layers)


_BUILDERS = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl}


def tiny_vlm(arch: str = "llava", **kwargs):
    """Build a tiny vision-language model by architecture name: ``llava``, ``qwen2_vl`` or ``qwen2_5_vl``."""
    if arch not in _BUILDERS:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {sorted(_BUILDERS)}.")
    return _BUILDERS[arch](**kwargs)
