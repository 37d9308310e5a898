"""Range checks for the numbers of a training config, run where they are set (``UnlearnConfig.__post_init__``).

``TrainingArguments`` accepts numbers that fail only deep inside training (a NaN or negative learning rate reaches
``torch.optim``; a batch size of 0 the sampler), that train something else than asked (``max_steps=-5`` trains
``num_train_epochs`` epochs; ``save_steps=-1`` saves at every step) or that train nothing at all
(``num_train_epochs=0`` saves the starting model as the "unlearned" one). Each check names the field, the value and
the fix. Every test is written as what must hold (``value > 0``), so NaN, for which every comparison is False, fails
all of them.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_training_numbers", "require_finite", "require_in_range", "require_int_at_least",
           "require_non_negative", "require_positive"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(name: str, value: Any, rule: str, fix: str = "") -> None:
    raise ValueError(f"{name} must be {rule}, got {value!r}.{' ' + fix if fix else ''}")


def require_positive(config: Any, *names: str, allow_none: bool = False) -> None:
    """Each field is a finite number > 0 (or None when ``allow_none``)."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if not (_is_number(value) and math.isfinite(value) and value > 0):
            _fail(name, value, "> 0 and finite" + (", or None" if allow_none else ""))


def require_non_negative(config: Any, *names: str, allow_none: bool = False) -> None:
    """Each field is a finite number >= 0 (or None when ``allow_none``)."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if not (_is_number(value) and math.isfinite(value) and value >= 0):
            _fail(name, value, ">= 0 and finite" + (", or None" if allow_none else ""))


def require_finite(config: Any, *names: str, allow_none: bool = True) -> None:
    """Each field is a finite number (or None)."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if not (_is_number(value) and math.isfinite(value)):
            _fail(name, value, "finite" + (", or None" if allow_none else ""))


def require_in_range(config: Any, name: str, low: float, high: float, *, high_inclusive: bool = False) -> None:
    """``low <= value < high`` (``<= high`` when ``high_inclusive``)."""
    value = getattr(config, name)
    ok = _is_number(value) and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        _fail(name, value, f"in [{low}, {high}{']' if high_inclusive else ')'}")


def require_int_at_least(config: Any, name: str, low: int, fix: str = "", allow_none: bool = False) -> None:
    value = getattr(config, name)
    if value is None and allow_none:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        _fail(name, value, f"an integer >= {low}" + (" or None" if allow_none else ""), fix)


def _check_interval(args: Any, strategy_field: str, steps_field: str) -> None:
    """``*_steps`` is used only under the ``"steps"`` strategy; there it must be > 0 (a count, or a fraction < 1)."""
    strategy = getattr(args, strategy_field, "no")
    if getattr(strategy, "value", strategy) != "steps":  # an enum after TrainingArguments.__post_init__
        return
    value = getattr(args, steps_field)
    if value is None:  # eval_steps=None falls back to logging_steps
        return
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        _fail(steps_field, value, f"> 0 with {strategy_field}='steps' (a number of steps, or a fraction < 1 of the "
                                  "run)", f"Set {steps_field} to a positive number, or {strategy_field}='no'.")


def check_training_numbers(args: Any) -> None:
    """The ``TrainingArguments`` numbers an unlearning run depends on (see the module docstring)."""
    value = args.learning_rate
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        _fail("learning_rate", value, "> 0 and finite", "Unlearning typically uses 1e-6 to 1e-4.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        require_int_at_least(args, name, 1)
    steps = args.max_steps
    if not (isinstance(steps, int) and not isinstance(steps, bool) and (steps >= 1 or steps == -1)):
        _fail("max_steps", steps, "an integer >= 1, or -1 (the default) to train num_train_epochs epochs",
              "Another value would silently train num_train_epochs epochs or nothing.")
    require_non_negative(args, "num_train_epochs")
    if steps == -1 and args.num_train_epochs == 0:
        raise ValueError("num_train_epochs=0 with max_steps=-1 trains zero steps: the run would save the starting "
                         "model as the unlearned one. Set num_train_epochs > 0 or max_steps >= 1.")
    _check_interval(args, "save_strategy", "save_steps")
    _check_interval(args, "logging_strategy", "logging_steps")
    _check_interval(args, "eval_strategy", "eval_steps")
    require_non_negative(args, "weight_decay", "adam_epsilon")
    require_non_negative(args, "max_grad_norm", allow_none=True)
    require_in_range(args, "adam_beta1", 0.0, 1.0)
    require_in_range(args, "adam_beta2", 0.0, 1.0)
