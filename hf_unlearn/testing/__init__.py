"""What tests and docs need and the library does not: tiny offline models (re-exported from ``hf_unlearn.tiny_models``
and ``hf_unlearn.real_llava``, which the demo uses too), toy rows (``toy``) and a local Hub server (``hub_server``).

Nothing here touches the Hugging Face Hub. No module of the library imports this package (tests/test_architecture.py).
"""

from ..real_llava import RealWeightsUnavailableError, real_llava, real_llava_path
from ..tiny_models import (
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
