from .base import UnlearnTrainer, UnlearningDivergedError
from .ga import GATrainer
from .mmunlearner import MMUnlearnerTrainer
from .npo import NPOTrainer

__all__ = ["UnlearnTrainer", "UnlearningDivergedError", "GATrainer", "NPOTrainer", "MMUnlearnerTrainer"]
