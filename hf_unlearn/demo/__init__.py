"""The built-in demo: a synthetic benchmark, vanilla/oracle tiny LLaVA models and every registered method."""

from ..trainers.registry import METHODS, MethodData, MethodSpec, MethodUnavailableError, get_method, register_method
from .pipeline import DemoConfig, default_cache_dir, load_or_train_reference_models, run_demo, run_seed

__all__ = [
    "DemoConfig",
    "METHODS",
    "MethodData",
    "MethodSpec",
    "MethodUnavailableError",
    "default_cache_dir",
    "get_method",
    "load_or_train_reference_models",
    "register_method",
    "run_demo",
    "run_seed",
]
