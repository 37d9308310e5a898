"""hf_unlearn: machine unlearning for Hugging Face models.

Drop-in ``transformers.Trainer`` subclasses for every method of ``hf_unlearn.methods`` (GA, GA_Diff, KL_Min, NPO,
SimNPO, RMU, IdkPO, UNDIAL, MMUnlearner, VKD), saliency masks that save, load and push like PEFT configs, and an
evaluator for MLLMU-Bench-style metrics.
"""

from .version import __version__  # noqa: I001  (first: the modules below read it)
from . import optional_kernels  # noqa: F401  (second: filters two bitsandbytes warnings before peft imports it)
from .config import UnlearnConfig
from .data.collators import PairedCollator, UnlearnDataCollator
from .data.pairing import ForgetRetainDataset
from .evaluation import Evaluator
from .methods.ga import GAConfig, GATrainer
from .methods.idkpo import IdkPOConfig, IdkPOTrainer
from .methods.mmunlearner import MMUnlearnerConfig, MMUnlearnerTrainer
from .methods.npo import NPOConfig, NPOTrainer
from .methods.rmu import RMUConfig, RMUTrainer
from .methods.simnpo import SimNPOConfig, SimNPOTrainer
from .methods.undial import UNDIALConfig, UNDIALTrainer
from .methods.vkd import VKDConfig, VKDTrainer, freeze_for_vkd
from .saliency import MaskFileError, SaliencyMask, SaliencyMaskConfig, compute_saliency_mask
from .trainers import METHODS, UnlearningDivergedError, UnlearnTrainer, get_method, register_method

__all__ = [
    "__version__",
    "UnlearnConfig",
    "UnlearnTrainer",
    "UnlearningDivergedError",
    "METHODS",
    "get_method",
    "register_method",
    "GAConfig",
    "GATrainer",
    "NPOConfig",
    "NPOTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
    "RMUConfig",
    "RMUTrainer",
    "IdkPOConfig",
    "IdkPOTrainer",
    "UNDIALConfig",
    "UNDIALTrainer",
    "MMUnlearnerConfig",
    "MMUnlearnerTrainer",
    "VKDConfig",
    "VKDTrainer",
    "freeze_for_vkd",
    "SaliencyMaskConfig",
    "SaliencyMask",
    "compute_saliency_mask",
    "MaskFileError",
    "Evaluator",
    "UnlearnDataCollator",
    "PairedCollator",
    "ForgetRetainDataset",
]


def __getattr__(name: str):
    """``hf_unlearn.<X>Trainer`` / ``<X>Config`` of a method added to ``hf_unlearn.methods`` after this list was
    written: looked up in the registry, so a new method needs no edit here."""
    from .methods import __name__ as _methods  # noqa: F401  (every method registered)

    for spec in METHODS.values():
        for cls in (spec.trainer_class, spec.config_class):
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module 'hf_unlearn' has no attribute {name!r}")
