"""Reference models that have memorised their data on any CPU, not just on the one the recipe was written on.

A fixed epoch count memorises on one CPU and stops short on another (the vector kernels, AVX-512 or AVX2, sum in
another order and tiny models amplify it); every row of a benchmark table then moves and nothing says why. So the
vanilla trains its recipe (``num_train_epochs``, linear decay), then is checked against ``MemorisationBar``
(multiple-choice accuracy and mean answer NLL on every split it was trained on); short of the bar, it tops up at a
constant ``top_up_learning_rate_scale`` x the recipe's rate, checked every ``check_every_epochs``, until it clears it
or ``max_top_up_epochs`` pass (then one ``MemorisationError`` naming the seed and what was reached). The oracle trains
the same recipe and the same top-up epochs, so the two differ only in their data. Where the recipe already memorises
(the machine the published numbers came from), nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import datasets
from transformers import TrainerCallback


class MemorisationError(RuntimeError):
    """A reference model did not clear the memorisation bar within its top-up cap."""


@dataclass
class MemorisationBar:
    """When a reference model counts as having memorised its training splits, and how it may catch up."""

    min_accuracy: float = field(default=0.98, metadata={"help": "Multiple-choice accuracy every trained split needs."})
    max_answer_nll: float = field(
        default=0.05, metadata={"help": "Mean answer NLL (per token) every trained split must be below."})
    check_every_epochs: int = field(default=5, metadata={"help": "Top-up epochs between two checks."})
    max_top_up_epochs: int = field(default=100, metadata={"help": "Top-up epochs at most before giving up."})
    top_up_learning_rate_scale: float = field(
        default=0.1, metadata={"help": "Top-up learning rate (constant) as a fraction of the recipe's peak rate."})


# measure(split name, rows, accuracy=bool) -> {"nll": mean answer NLL per token[, "accuracy": MCQ accuracy]}
Measure = Callable[..., Mapping[str, float]]


class MemorisationCheck(TrainerCallback):
    """Measures ``splits`` against ``bar`` (``passes``), and as a callback stops a top-up run at the first check every
    split clears (``reached_at_epoch``)."""

    def __init__(self, splits: Mapping[str, datasets.Dataset], measure: Measure, bar: MemorisationBar):
        self.splits, self.measure, self.bar = dict(splits), measure, bar
        self.reached_at_epoch: int | None = None
        self.last: dict[str, dict[str, float]] = {}

    def passes(self, model) -> bool:
        """Whether every split clears the bar now (the cheap NLL first: accuracy only once the NLL bar is met)."""
        was_training = model.training
        model.eval()
        self.last = {}
        try:
            for name, rows in self.splits.items():
                self.last[name] = dict(self.measure(name, rows, accuracy=False))
                if self.last[name]["nll"] > self.bar.max_answer_nll:
                    return False
                self.last[name] = dict(self.measure(name, rows, accuracy=True))
                if self.last[name].get("accuracy", 1.0) < self.bar.min_accuracy:  # no options: the NLL bar alone
                    return False
            return True
        finally:
            model.train(was_training)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch % self.bar.check_every_epochs == 0 and self.passes(model):
            self.reached_at_epoch = epoch
            control.should_training_stop = True
        return control

    def error(self, what: str, seed: int, recipe_epochs: int) -> MemorisationError:
        reached = "; ".join(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items())
                            for name, values in self.last.items()) or "nothing measured"
        return MemorisationError(
            f"The {what} (seed {seed}) did not memorise its training splits in {recipe_epochs} epochs plus "
            f"{self.bar.max_top_up_epochs} top-up epochs (bar: accuracy >= {self.bar.min_accuracy} and mean answer "
            f"NLL <= {self.bar.max_answer_nll} on every split; last check: {reached}). No table is written from it. "
            "Raise the recipe's epochs or learning rate, or report the machine (docs/install.md: CPU kernels and "
            "versions).")
