"""What every unlearning trainer is built from: the base class, the step plan, the unlearning probe, checkpoints, the
model card, the divergence guard, and the registry the methods (``hf_unlearn/methods/``) add themselves to."""

from .base import UnlearningDivergedError, UnlearnTrainer
from .callbacks import NoForgettingWarning, UnlearningEvalCallback
from .registry import METHODS, MethodData, MethodSpec, MethodUnavailableError, get_method, register_method

__all__ = ["UnlearnTrainer", "UnlearningDivergedError", "UnlearningEvalCallback", "NoForgettingWarning", "METHODS",
           "MethodData", "MethodSpec", "MethodUnavailableError", "get_method", "register_method"]
