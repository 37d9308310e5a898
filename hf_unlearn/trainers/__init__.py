from .base import UnlearnTrainer, UnlearningDivergedError
from .ga import GATrainer
from .npo import NPOTrainer

__all__ = ["UnlearnTrainer", "UnlearningDivergedError", "GATrainer", "NPOTrainer"]
