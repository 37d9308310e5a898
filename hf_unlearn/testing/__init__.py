"""Tiny, offline, seeded models and processors for tests, the demo and the docs.

Nothing here touches the Hugging Face Hub: tokenizers are trained in code and models are built from configs.
"""

from .models import (
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
    build_tokenizer,
    tiny_llama,
    tiny_llava,
    tiny_qwen2_5_vl,
    tiny_qwen2_vl,
    tiny_vlm,
)

__all__ = [
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "build_tokenizer",
    "tiny_llama",
    "tiny_llava",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_vl",
    "tiny_vlm",
]
