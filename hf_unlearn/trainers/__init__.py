from .base import UnlearnTrainer, UnlearningDivergedError
from .callbacks import NoForgettingWarning, UnlearningEvalCallback
from .ga import GATrainer
from .mmunlearner import MMUnlearnerTrainer
from .npo import NPOTrainer
from .vkd import VKDTrainer, freeze_for_vkd

__all__ = ["UnlearnTrainer", "UnlearningDivergedError", "GATrainer", "NPOTrainer", "MMUnlearnerTrainer", "VKDTrainer",
           "freeze_for_vkd", "UnlearningEvalCallback", "NoForgettingWarning"]
