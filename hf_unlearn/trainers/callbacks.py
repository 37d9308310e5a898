"""``UnlearningEvalCallback``: one periodic probe that logs forgetting, stops at the target, and says what moved.

Every ``UnlearnTrainer`` holds one (``trainer.unlearning_eval``); pass your own in ``callbacks=`` to add sets or
change how often it probes. It scores fixed subsets of the forget, retain and (optional) holdout sets with the
training collator (``hf_unlearn.evaluation.probe.Probe``) and uses the numbers four ways:

1. **Logging** (``report_to``: TensorBoard, W&B, ...): at each evaluation and every ``probe_steps`` steps,
   ``eval_<set>_nll``, ``eval_<set>_acc`` (sets with ``options``/``label``) and ``eval_mia_auc`` (forget vs holdout,
   loss attack), so a run shows forgetting as it happens.
2. **Target-driven stop** (``stop_at_holdout``, on by default when ``holdout_dataset=`` is given): the retrained
   oracle's forget rows look like rows it never saw, so training stops once the forget rows look like the holdout
   rows: mean forget NLL >= mean holdout NLL - ``stop_nll_margin`` (``stop_criterion="nll"``) or loss-attack AUC
   <= 0.5 + ``stop_auc_delta`` (``"auc"``), checked every ``probe_steps`` steps (10 by default).
3. **No silent no-op**: if the forget NLL has moved less than ``noop_min_nll_change`` after ``noop_check_steps``
   steps, a ``NoForgettingWarning`` names the learning rate and step budget, once.
4. **What moved**: the final training metrics (printed by the Trainer, in ``log_history`` and ``TrainOutput``) hold
   ``<set>_nll_before`` / ``<set>_nll_after``; ``trainer.unlearning_report`` records them with the stop rule's
   settings and outcome (numbers and settings only, never row content) for the model card.

The stop rule reads the holdout rows every few steps, so those rows are no longer unseen by the *procedure*: an
evaluation that later uses the same rows as membership-inference non-members is biased towards "forgotten". Keep
the probe's holdout rows apart from the evaluation's (docs/stopping.md).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

from transformers import Trainer, TrainerCallback

from ..evaluation.probe import Probe

if TYPE_CHECKING:
    from .base import UnlearnTrainer

logger = logging.getLogger(__name__)

#: The sets the trainer itself provides; only these appear in the report and the model card (user-named extra sets
#: are logged, never published).
BUILTIN_SETS = ("forget", "retain", "holdout")
DEFAULT_PROBE_STEPS_WITH_STOP = 10


class NoForgettingWarning(UserWarning):
    """Training has run for a while and the forget set's NLL has hardly moved: nothing is being forgotten."""


class UnlearningEvalCallback(TrainerCallback):
    """Probe forget / retain / holdout rows during unlearning: log, stop at the holdout target, warn on a no-op.

    Args:
        extra_sets: more ``{name: dataset}`` to probe and log (e.g. ``{"text": text_only_rows}``); never published.
        probe_steps: probe (and log) every k optimizer steps; default ``args.probe_steps`` (None there: every 10 steps
            while the stop rule is on, NLL and AUC only, otherwise only at evaluations).
        accuracy: also compute multiple-choice accuracy at evaluations and at the periodic probes the user asked for
            (one forward per option).

    The trainer binds the callback (``bind``); its settings otherwise come from the trainer's ``UnlearnConfig``.
    """

    def __init__(self, extra_sets: dict[str, Any] | None = None, probe_steps: int | None = None,
                 accuracy: bool = True):
        bad = sorted(set(extra_sets or {}) & set(BUILTIN_SETS))
        if bad:
            raise ValueError(f"extra_sets may not be named {bad}: the trainer probes its own {list(BUILTIN_SETS)} "
                             "sets. Pick other names (e.g. 'text').")
        if probe_steps is not None and probe_steps < 1:
            raise ValueError(f"probe_steps must be >= 1 (or None), got {probe_steps}.")
        self.extra_sets = dict(extra_sets or {})
        self._probe_steps = probe_steps
        self.accuracy = accuracy
        self.trainer: UnlearnTrainer | None = None
        self.probe: Probe | None = None
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self.stopped_at_step: int | None = None
        self.warned_no_forgetting = False
        self._noop_checked = False
        self._last: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the latest probe
        self._logged_steps: set[int] = set()

    # ---------------------------------------------------------------------------------------------------- set-up
    def bind(self, trainer: UnlearnTrainer, args) -> None:
        """Attach to ``trainer`` (whose config is ``args``) and check the configuration against what it was given."""
        if args.stop_at_holdout and trainer.holdout_dataset is None:
            raise ValueError("stop_at_holdout=True needs `holdout_dataset=`: rows of the same kind as the forget set "
                             "that the model never saw (docs/stopping.md). Pass one, or leave stop_at_holdout=None.")
        if self.stop_enabled_for(args, trainer.holdout_dataset) and args.probe_rows == 0:
            raise ValueError("The holdout stop rule needs the probe: probe_rows=0 disables it. Set probe_rows > 0 or "
                             "stop_at_holdout=False.")
        self.trainer = trainer

    @staticmethod
    def stop_enabled_for(args, holdout_dataset) -> bool:
        return holdout_dataset is not None and (args.stop_at_holdout is None or args.stop_at_holdout)

    @property
    def stop_enabled(self) -> bool:
        return self.trainer is not None and self.stop_enabled_for(self.trainer.args, self.trainer.holdout_dataset)

    @property
    def probe_steps(self) -> int | None:
        """How often the probe runs and logs; None: only at evaluations (and the start, the no-op check, the end)."""
        steps = self._probe_steps if self._probe_steps is not None else self.trainer.args.probe_steps
        if steps is None and self.stop_enabled:
            steps = DEFAULT_PROBE_STEPS_WITH_STOP
        return steps

    @property
    def explicit_probe_steps(self) -> bool:
        """Whether the user asked for periodic probes (they then also compute accuracy, one forward per option)."""
        return self._probe_steps is not None or self.trainer.args.probe_steps is not None

    @property
    def enabled(self) -> bool:
        return self.trainer is not None and self.trainer.args.probe_rows > 0

    def _build_probe(self) -> Probe:
        trainer = self.trainer
        args = trainer.args
        sets = {"forget": trainer.forget_dataset, "retain": trainer.retain_dataset,
                "holdout": trainer.holdout_dataset, **self.extra_sets}
        return Probe(
            sets, trainer.row_collator, prepare=trainer._prepare_inputs, model_inputs=trainer.model_inputs,
            max_rows=args.probe_rows, batch_size=args.probe_batch_size or args.per_device_eval_batch_size,
            seed=args.seed, show_progress=not args.disable_tqdm and trainer.is_world_process_zero(),
        )

    # ---------------------------------------------------------------------------------------------------- probing
    def run_probe(self, step: int, accuracy: bool | None = None) -> dict[str, float]:
        """Probe the trainer's model now (cached per step)."""
        accuracy = self.accuracy if accuracy is None else accuracy
        if self._last is not None and self._last[0] == step and (not accuracy or _has_acc(self._last[1])):
            return self._last[1]
        result = self.probe.evaluate(self.trainer.model, accuracy=accuracy)
        self._last = (step, result)
        return result

    def forget_cached_probe(self) -> None:
        """The model changed without a step (SMFA's merge at the end of training): the next probe measures again."""
        self._last = None

    def _log(self, metrics: dict[str, float], step: int) -> None:
        """Log ``eval_``-prefixed probe metrics once per step, without disturbing the Trainer's own log flag."""
        if step in self._logged_steps or not metrics:
            return
        self._logged_steps.add(step)
        control = self.trainer.control
        should_log = control.should_log
        # Trainer.log, not UnlearnTrainer.log: the per-term training averages belong to the next training log.
        Trainer.log(self.trainer, {f"eval_{k}": v for k, v in metrics.items()})
        self.trainer.control.should_log = should_log  # on_log resets it; the step's training log must still run

    # ---------------------------------------------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, **kwargs):
        if not self.enabled:
            return
        self.probe = self._build_probe()
        self.stopped_at_step, self.warned_no_forgetting, self._noop_checked = None, False, False
        self.after = {}
        self._logged_steps.clear()
        self._last = None
        self.before = dict(self.run_probe(state.global_step, accuracy=self.explicit_probe_steps and self.accuracy))
        if self.probe_steps is not None:
            self._log(self.before, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.enabled or self.probe is None:
            return
        step = state.global_step
        last_step = step >= state.max_steps or control.should_training_stop
        every = self.probe_steps
        if every is not None and (step % every == 0 or last_step):
            # The stop rule alone needs NLLs only; accuracy costs a forward per option.
            metrics = self.run_probe(step, accuracy=self.explicit_probe_steps and self.accuracy)
            self._log(metrics, step)
            if self.stop_enabled and self.stopped_at_step is None and self._agree(self.target_reached(metrics)):
                self.stopped_at_step = step
                control.should_training_stop = True
                control.should_save = args.save_strategy != "no"  # keep the stopped model when checkpointing is on
                logger.info("Unlearning stopped at step %d: the forget set is indistinguishable from the holdout set "
                            "(%s).", step, self._target_text(metrics))
        self._maybe_check_noop(state, step)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.enabled:
            return
        if self.probe is None:  # trainer.evaluate() before training: the starting point
            self.probe = self._build_probe()
        result = self.run_probe(state.global_step)
        if metrics is not None:  # visible to metric_for_best_model / EarlyStoppingCallback too
            metrics.update({f"eval_{k}": v for k, v in result.items()})
        self._log(result, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.enabled or self.probe is None:
            return
        if not self.after:
            self.final_logs()
        self.trainer.unlearning_report = self.report()
        logger.info("Unlearning: %s", self.summary())

    # ---------------------------------------------------------------------------------------------------- rules
    def target_reached(self, metrics: dict[str, float]) -> bool:
        """The stop rule on one probe result (see the module docstring)."""
        args = self.trainer.args
        if args.stop_criterion == "auc":
            return "mia_auc" in metrics and metrics["mia_auc"] <= 0.5 + args.stop_auc_delta
        forget, holdout = metrics.get("forget_nll"), metrics.get("holdout_nll")
        return forget is not None and holdout is not None and forget >= holdout - args.stop_nll_margin

    def _target_text(self, metrics: dict[str, float]) -> str:
        if self.trainer.args.stop_criterion == "auc":
            return f"loss-attack AUC {metrics.get('mia_auc', float('nan')):.3f}"
        return f"forget NLL {metrics['forget_nll']:.4f} >= holdout NLL {metrics['holdout_nll']:.4f}"

    def _agree(self, flag: bool) -> bool:
        """The main process's decision, on every process (a stop on one rank alone would hang the others)."""
        import torch

        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is None or accelerator.num_processes <= 1:
            return flag
        from accelerate.utils import broadcast

        return bool(broadcast(torch.tensor([float(flag)], device=accelerator.device), from_process=0).item())

    def _maybe_check_noop(self, state, step: int) -> None:
        args = self.trainer.args
        if self._noop_checked or args.noop_check_steps == 0 or "forget_nll" not in self.before:
            return
        if step < args.noop_check_steps:  # a shorter run is never checked: its end-of-training log says what moved
            return
        self._noop_checked = True
        now = self.run_probe(step, accuracy=False)["forget_nll"]
        moved = now - self.before["forget_nll"]
        if math.isfinite(moved) and abs(moved) < args.noop_min_nll_change:
            self.warned_no_forgetting = True
            if self.trainer.is_world_process_zero():
                warnings.warn(
                    f"Nothing is being forgotten: after {step} steps the forget set's NLL moved by {moved:+.4g} "
                    f"({self.before['forget_nll']:.4g} -> {now:.4g}), less than noop_min_nll_change="
                    f"{args.noop_min_nll_change}. With learning_rate={args.learning_rate:g} and max_steps="
                    f"{state.max_steps} this run will end where it started: raise learning_rate (or the method's "
                    "lr scale) or max_steps. Set noop_check_steps=0 to skip this check.",
                    NoForgettingWarning, stacklevel=2,
                )

    # ---------------------------------------------------------------------------------------------------- results
    def final_logs(self) -> dict[str, float]:
        """Probe the final model; ``{<set>_nll_before, <set>_nll_after}`` for the end-of-training log."""
        if not self.enabled or self.probe is None:
            return {}
        self.after = dict(self.run_probe(self.trainer.state.global_step, accuracy=False))  # reuses this step's probe
        out: dict[str, float] = {}
        for name in self.probe.rows:
            key = f"{name}_nll"
            if key in self.before and key in self.after:
                out[f"{key}_before"], out[f"{key}_after"] = self.before[key], self.after[key]
        return out

    def summary(self) -> str:
        """One line: each probed set's NLL before -> after, and why training stopped."""
        parts = []
        for name in self.probe.rows:
            key = f"{name}_nll"
            if key in self.before and key in self.after:
                b, a = self.before[key], self.after[key]
                parts.append(f"{name} NLL {b:.4f} -> {a:.4f} ({a - b:+.4f})")
        text = ", ".join(parts) + f" over {self.trainer.state.global_step} steps"
        if self.stopped_at_step is not None:
            text += f"; stopped at step {self.stopped_at_step}: the forget set reached the holdout target"
        elif self.stop_enabled:
            text += "; the holdout target was not reached (more steps or a higher learning rate would go further)"
        return text

    def report(self) -> dict[str, Any]:
        """JSON-safe record for the model card: probe sizes, metrics before/after, stop rule settings and outcome.

        Only the trainer's own sets (forget / retain / holdout) appear; numbers and settings, never row content.
        """
        args = self.trainer.args

        def builtin(metrics: dict[str, float]) -> dict[str, float]:
            keep = {f"{s}_{m}" for s in BUILTIN_SETS for m in ("nll", "acc")} | {"mia_auc"}
            return {k: float(v) for k, v in metrics.items() if k in keep}

        return {
            "probe_rows": {k: v for k, v in self.probe.sizes.items() if k in BUILTIN_SETS},
            "probe_steps": self.probe_steps,
            "before": builtin(self.before),
            "after": builtin(self.after),
            "stop_rule": {
                "enabled": self.stop_enabled, "criterion": args.stop_criterion,
                "nll_margin": args.stop_nll_margin, "auc_delta": args.stop_auc_delta,
                "stopped_at_step": self.stopped_at_step,
            },
            "no_forgetting_warning": self.warned_no_forgetting,
            "global_step": self.trainer.state.global_step,
        }


def _has_acc(metrics: dict[str, float]) -> bool:
    return any(k.endswith("_acc") for k in metrics)
