"""VKD: visual knowledge distillation (``trainer.py``), its knobs (``config.py``)."""

from .config import VKDConfig
from .trainer import VKDTrainer, freeze_for_vkd, vkd_trainable_parameter_names

__all__ = ["VKDConfig", "VKDTrainer", "freeze_for_vkd", "vkd_trainable_parameter_names"]
