"""A larger learning rate for the few parameters a vision-side method moves (MMUnlearner, VKD).

Adam moves every parameter by about ``learning_rate`` per step, whatever the size of its gradient. Full-model
gradient ascent at a learning rate moves every weight of the model that much; a method that may move only the vision
tower and projector (VKD), or only the entries a saliency mask selects (MMUnlearner), changes the model far less per
step at the same rate. Measured on a memorised tiny LLaVA (docs/methods/mmunlearner.md, vkd.md): at
``learning_rate=1e-3`` for 20 steps GA raised the forget NLL by +2.8 to +5.6, vision-only ascent by about +0.9,
and MMUnlearner / VKD reached half of GA's change on 4 of 5 seeds only at 10x the rate. The same convention is
common elsewhere: LoRA adapters and LLaVA's projector are trained at several times the full fine-tuning rate.

``scale_learning_rate`` moves the chosen parameters into copies of their optimizer groups whose ``lr`` is multiplied
by the scale; the scheduler, created afterwards, follows each group's own rate, and ``learning_rate`` in the logs
stays the rate of the first group (the user's value).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def scale_learning_rate(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], scale: float) -> int:
    """Give ``params`` the learning rate of their group times ``scale``; returns how many parameters moved.

    Must run before the learning-rate scheduler is created (``Trainer.create_optimizer`` is the place).
    """
    if scale == 1.0:
        return 0
    wanted = {id(p) for p in params}
    moved_total = 0
    new_groups = []
    for group in optimizer.param_groups:
        moved = [p for p in group["params"] if id(p) in wanted]
        if not moved:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in wanted]
        settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
        new_groups.append({**settings, "params": moved, "lr": group["lr"] * scale})
        moved_total += len(moved)
    for group in new_groups:
        optimizer.add_param_group(group)
    return moved_total


class ScaledLearningRateMixin:
    """``create_optimizer`` that applies ``lr_scaled_parameters()`` x ``lr_scale()`` to an optimizer it built.

    An optimizer passed in ``optimizers=`` is the user's: it is left as given. Under a DeepSpeed config that defines
    its own optimizer, ``create_optimizer`` is never called; the trainers refuse that combination with a scale != 1.
    """

    def lr_scale(self) -> float:
        raise NotImplementedError

    def lr_scaled_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.lr_scale() != 1.0:
            scale_learning_rate(optimizer, self.lr_scaled_parameters(), self.lr_scale())
        return optimizer

    def check_lr_scale_supported(self) -> None:
        """Raise when a DeepSpeed config brings its own optimizer (the scale could not apply)."""
        if self.lr_scale() == 1.0 or not getattr(self, "is_deepspeed_enabled", False):
            return
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        config = getattr(plugin, "deepspeed_config", None) or {}
        if "optimizer" in config:
            raise ValueError(
                f"The DeepSpeed config defines its own optimizer, so the learning-rate scale {self.lr_scale()} of "
                f"{type(self).__name__} cannot apply. Remove the config's 'optimizer' section (the Trainer then builds "
                "AdamW from TrainingArguments) or set the scale to 1.0 and raise learning_rate instead."
            )
