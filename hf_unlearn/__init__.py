"""hf_unlearn: machine unlearning for Hugging Face models.

Drop-in ``transformers.Trainer`` subclasses for gradient ascent (GA, GA_Diff, KL_Min), NPO, MMUnlearner and VKD,
saliency masks that save, load and push like PEFT configs, and an evaluator for MLLMU-Bench-style metrics.
"""

__version__ = "0.1.0.dev0"

from .config import GAConfig, MMUnlearnerConfig, NPOConfig, UnlearnConfig, VKDConfig
from .config import IdkPOConfig, RMUConfig, SimNPOConfig, UNDIALConfig
from .data.collators import PairedCollator, UnlearnDataCollator
from .data.pairing import ForgetRetainDataset
from .evaluation import Evaluator
from .saliency import MaskFileError, SaliencyMask, SaliencyMaskConfig, compute_saliency_mask
from .trainers import (
    GATrainer,
    MMUnlearnerTrainer,
    NPOTrainer,
    UnlearnTrainer,
    UnlearningDivergedError,
    VKDTrainer,
    freeze_for_vkd,
)
from .trainers import IdkPOTrainer, RMUTrainer, SimNPOTrainer, UNDIALTrainer

__all__ = [
    "__version__",
    "UnlearnConfig",
    "GAConfig",
    "NPOConfig",
    "MMUnlearnerConfig",
    "VKDConfig",
    "UnlearnTrainer",
    "GATrainer",
    "NPOTrainer",
    "MMUnlearnerTrainer",
    "VKDTrainer",
    "freeze_for_vkd",
    "UnlearningDivergedError",
    "SimNPOConfig",
    "SimNPOTrainer",
    "RMUConfig",
    "RMUTrainer",
    "IdkPOConfig",
    "IdkPOTrainer",
    "UNDIALConfig",
    "UNDIALTrainer",
    "SaliencyMaskConfig",
    "SaliencyMask",
    "compute_saliency_mask",
    "MaskFileError",
    "Evaluator",
    "UnlearnDataCollator",
    "PairedCollator",
    "ForgetRetainDataset",
]
