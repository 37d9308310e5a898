"""Two import-time warnings of bitsandbytes that say nothing about what the user runs, dropped.

peft imports bitsandbytes (QLoRA, ``pip install 'hf_unlearn[qlora]'``) whenever it is installed; on a CPU with
AVX512-BF16, bitsandbytes then tries to fetch an optional faster 4-bit kernel from the Hub, and offline (or without
it) logs two warnings on every ``import hf_unlearn`` and every ``hf-unlearn`` command. Its own fallback kernel works
(tests/test_peft.py trains QLoRA on the CPU). Only those two messages are filtered, on their two loggers; everything
else they log still shows.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_optional_kernel_warnings"]

_MESSAGES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}


class _DropOptionalKernelWarning(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_optional_kernel_warnings() -> None:
    """Install the filters (idempotent)."""
    for name, prefix in _MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropOptionalKernelWarning) for f in logger.filters):
            logger.addFilter(_DropOptionalKernelWarning(prefix))


quiet_optional_kernel_warnings()  # on import: ``hf_unlearn/__init__.py`` imports this module before peft
