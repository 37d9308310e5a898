from .base import UnlearnTrainer, UnlearningDivergedError
from .callbacks import NoForgettingWarning, UnlearningEvalCallback
from .ga import GATrainer
from .idkpo import IdkPOTrainer
from .mmunlearner import MMUnlearnerTrainer
from .npo import NPOTrainer
from .rmu import RMUTrainer
from .simnpo import SimNPOTrainer
from .undial import UNDIALTrainer
from .vkd import VKDTrainer, freeze_for_vkd

__all__ = ["UnlearnTrainer", "UnlearningDivergedError", "GATrainer", "NPOTrainer", "MMUnlearnerTrainer", "VKDTrainer",
           "freeze_for_vkd", "SimNPOTrainer", "RMUTrainer", "IdkPOTrainer", "UNDIALTrainer",
           "UnlearningEvalCallback", "NoForgettingWarning"]
