"""``UnlearnConfig``: the training arguments every unlearning trainer shares (it extends ``TrainingArguments``).

Each method's own config subclasses it beside its trainer (``hf_unlearn/methods/<method>.py``).

Every field carries ``metadata={"help": ...}`` so ``HfArgumentParser`` and ``hf-unlearn run --config`` expose it.
Defaults are conservative (issue reports across unlearning repos: aggressive GA defaults collapse the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .config_checks import check_training_numbers, require_finite, require_non_negative

RETAIN_LOSS_TYPES = ("none", "nll", "kl")
MASK_SCOPES = ("forget", "all")


@dataclass
class UnlearnConfig(TrainingArguments):
    r"""Arguments shared by every unlearning trainer.

    > Parameters that control the objective

    Args:
        forget_weight (`float`, defaults to `1.0`): weight of the forget term.
        retain_loss_type (`str` or `None`, defaults to `None`): retain term, ``"none"``, ``"nll"`` (GA_Diff-style
            descent on retain answers) or ``"kl"`` (KL to the reference model on retain batches, KL_Min-style).
            ``None`` picks ``"nll"`` when a retain set is given and ``"none"`` otherwise.
        retain_weight (`float`, defaults to `1.0`): weight of the retain term.
        answer_only_loss (`bool`, defaults to `True`): take losses on answer tokens only (else on all text tokens).
        max_length (`int` or `None`): truncate answers so sequences fit (prompts, image tokens included, never cut).

    > Parameters that control pairing and stopping

    Args:
        pairing_anchor (`str`, defaults to `"forget"`): which split an epoch runs over; the other is cycled.
        stop_forget_loss_above (`float` or `None`): stop once the mean forget NLL of a step exceeds this value
            (gradient ascent diverges if left alone).
        divergence_guard (`bool`, defaults to `True`): keep an optimizer step only if the loss and the updated
            weights are finite and the weight norm changed by at most ``max_weight_norm_change``; on a failure put
            back the last good weights (bit for bit), save nothing more and raise ``UnlearningDivergedError``
            (``hf_unlearn.trainers.divergence``; holds one copy of the trainable weights).
        max_weight_norm_change (`float` or `None`, defaults to `1.0`): the largest relative change
            ``| ||w_new|| - ||w_old|| | / ||w_old||`` of the trainable weights' norm in one step (a lower bound of the
            update's size; 1.0: the norm more than doubled). ``None``: only non-finite weights fail.

    > Parameters that control the unlearning probe (``UnlearningEvalCallback``, docs/stopping.md)

    Args:
        stop_at_holdout (`bool` or `None`): stop once the forget rows look like the holdout rows (``holdout_dataset=``,
            rows of the same kind the model never saw). ``None``: on when a holdout set is given.
        stop_criterion (`str`, defaults to `"nll"`): ``"nll"``: mean forget NLL >= mean holdout NLL -
            ``stop_nll_margin``; ``"auc"``: loss-attack AUC (forget vs holdout) <= 0.5 + ``stop_auc_delta``.
        probe_steps (`int` or `None`): probe (with accuracy), log and check the stop rule every k steps. ``None``:
            every 10 steps with the stop rule (NLL and AUC only), otherwise only at evaluations, at
            ``noop_check_steps`` and at the start and end.
        probe_rows (`int`, defaults to `32`): rows per set in the probe (a fixed subset seeded by ``seed``); 0
            turns the probe off (no stop rule, no no-op warning, no before/after log).
        probe_batch_size (`int` or `None`): rows per forward pass of the probe; ``None``: ``per_device_eval_batch_size``.
            The probe runs every few steps on ~100 rows, so on a small model the number of passes, not their size,
            is its cost.
        noop_check_steps, noop_min_nll_change: warn once if the forget NLL moved less than ``noop_min_nll_change``
            after ``noop_check_steps`` steps (0 skips the check).

    > Parameters that control saliency masks

    Args:
        mask_scope (`str`, defaults to `"forget"`): the mask restricts the forget gradient only (MMUnlearner) or
            ``"all"`` gradients.
        freeze_unmasked_parameters (`bool`, defaults to `True`): with a mask, freeze every parameter the mask does
            not cover (e.g. the language model under a vision mask).
    """

    # Conservative defaults that differ from TrainingArguments.
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep raw columns (image/question/answer): the unlearning collator needs them."},
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    # Objective
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget term."})
    retain_loss_type: str | None = field(
        default=None,
        metadata={"help": "Retain term: 'none', 'nll' (GA_Diff) or 'kl' (KL_Min). None: 'nll' if a retain set "
                          "is given, else 'none'.", "choices": [None, *RETAIN_LOSS_TYPES]},
    )
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain term."})
    answer_only_loss: bool = field(
        default=True, metadata={"help": "Losses on answer tokens only (default) or on every text token."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Maximum sequence length; answers are truncated, prompts never."}
    )
    # Pairing and stopping
    pairing_anchor: str = field(
        default="forget",
        metadata={"help": "'forget': an epoch is one pass over the forget set (retain rows cycled); 'retain': the "
                          "reverse.", "choices": ["forget", "retain"]},
    )
    stop_forget_loss_above: float | None = field(
        default=None, metadata={"help": "Stop training once a step's mean forget NLL exceeds this value."}
    )
    divergence_guard: bool = field(
        default=True,
        metadata={"help": "Check each step's loss and updated weights; on divergence restore the last good weights, "
                          "save nothing more and raise UnlearningDivergedError."},
    )
    max_weight_norm_change: float | None = field(
        default=1.0,
        metadata={"help": "Largest relative change of the trainable weights' norm in one optimizer step the divergence "
                          "guard accepts (1.0: the norm more than doubled; None: only non-finite weights fail)."},
    )
    # The unlearning probe: logging, target-driven stop, no-op warning (trainers/callbacks.py)
    stop_at_holdout: bool | None = field(
        default=None,
        metadata={"help": "Stop once the forget rows look like the holdout rows (holdout_dataset=). None: on when a "
                          "holdout set is given."},
    )
    stop_criterion: str = field(
        default="nll",
        metadata={"help": "'nll': stop when mean forget NLL >= mean holdout NLL - stop_nll_margin; 'auc': when the "
                          "loss-attack AUC (forget vs holdout) <= 0.5 + stop_auc_delta.", "choices": ["nll", "auc"]},
    )
    stop_nll_margin: float = field(
        default=0.0, metadata={"help": "stop_criterion='nll': stop this close (in NLL) below the holdout NLL."}
    )
    stop_auc_delta: float = field(
        default=0.05, metadata={"help": "stop_criterion='auc': stop once the AUC is at most 0.5 + this."}
    )
    probe_steps: int | None = field(
        default=None,
        metadata={"help": "Probe (with accuracy), log and check the stop rule every k steps. None: every 10 steps "
                          "with the stop rule (NLL and AUC only), else only at evaluations."},
    )
    probe_rows: int = field(
        default=32, metadata={"help": "Rows per set in the probe (seeded fixed subset); 0 turns the probe off."}
    )
    probe_batch_size: int | None = field(
        default=None, metadata={"help": "Rows per forward pass of the probe; None: per_device_eval_batch_size."}
    )
    noop_check_steps: int = field(
        default=10, metadata={"help": "Warn if the forget NLL hardly moved after this many steps (0: no check)."}
    )
    noop_min_nll_change: float = field(
        default=0.02, metadata={"help": "Smallest forget-NLL change after noop_check_steps that is not a no-op."}
    )
    # Saliency masks
    mask_scope: str = field(
        default="forget",
        metadata={"help": "The saliency mask restricts the forget gradient only ('forget') or every gradient "
                          "('all').", "choices": list(MASK_SCOPES)},
    )
    freeze_unmasked_parameters: bool = field(
        default=True, metadata={"help": "With a mask, freeze the parameters it does not cover."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.retain_loss_type is not None and self.retain_loss_type not in RETAIN_LOSS_TYPES:
            raise ValueError(f"retain_loss_type={self.retain_loss_type!r} is not one of {RETAIN_LOSS_TYPES}.")
        if self.pairing_anchor not in ("forget", "retain"):
            raise ValueError(f"pairing_anchor={self.pairing_anchor!r}; use 'forget' or 'retain'.")
        if self.mask_scope not in MASK_SCOPES:
            raise ValueError(f"mask_scope={self.mask_scope!r} is not one of {MASK_SCOPES}.")
        # Numbers fail here, where they are set, not steps into training (config_checks.py says why each).
        check_training_numbers(self)
        require_non_negative(self, "forget_weight", "retain_weight", "stop_nll_margin", "stop_auc_delta", "probe_rows",
                             "noop_check_steps", "noop_min_nll_change")
        require_finite(self, "stop_forget_loss_above")
        if self.max_weight_norm_change is not None and not self.max_weight_norm_change > 0:
            raise ValueError(f"max_weight_norm_change must be > 0 or None, got {self.max_weight_norm_change}.")
        if self.max_length is not None and not (isinstance(self.max_length, int) and self.max_length >= 1):
            raise ValueError(f"max_length must be an integer >= 1 or None, got {self.max_length!r}.")
        if self.stop_criterion not in ("nll", "auc"):
            raise ValueError(f"stop_criterion={self.stop_criterion!r}; use 'nll' or 'auc'.")
        if self.probe_steps is not None and self.probe_steps < 1:
            raise ValueError(f"probe_steps must be >= 1 or None, got {self.probe_steps}.")
        if self.probe_batch_size is not None and self.probe_batch_size < 1:
            raise ValueError(f"probe_batch_size must be >= 1 or None, got {self.probe_batch_size}.")
