"""Where a number was measured: package versions, the CPU kernels torch used, the machine and its load.

Every results file records ``environment()``: float results on CPU depend on the versions (a new transformers can
change a model's arithmetic) and on which vectorised kernels ATen dispatches to (AVX-512, AVX2 or the portable
default; ``ATEN_CPU_CAPABILITY`` forces a lower one), which change reduction order and so the last bits of every sum.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

# The packages whose versions change what the library computes (docs/install.md).
PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "trl", "deepspeed",
            "huggingface_hub", "numpy", "safetensors", "kernels")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """``{name: installed version or None}``."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_flags() -> dict[str, Any]:
    """The vector instruction sets that change float results: what the CPU offers and what ATen uses."""
    import torch

    offered = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    offered = set(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: ATen's choice below still says which kernels ran
        pass
    return {
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels ATen dispatched to
        "forced": os.environ.get("ATEN_CPU_CAPABILITY"),
        "avx512f": "avx512f" in offered, "avx2": "avx2" in offered, "fma": "fma" in offered,
    }


def environment() -> dict[str, Any]:
    """Versions, CPU flags, machine, threads and the load average now (docs state it next to every table)."""
    import torch

    return {
        "packages": package_versions(), "cpu": cpu_flags(),
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def describe(env: dict[str, Any]) -> str:
    """One line for a table caption: ``transformers 5.25.0, torch 2.13.0, ..., ATen kernels AVX512``."""
    packages = env.get("packages", {})
    names = ", ".join(f"{k} {v}" for k, v in packages.items() if v and k in ("torch", "transformers", "datasets",
                                                                             "peft", "trl", "accelerate"))
    cpu = env.get("cpu", {})
    return f"{names}; ATen CPU kernels {cpu.get('aten_cpu_capability', '?')}"
