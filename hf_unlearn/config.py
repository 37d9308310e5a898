"""Training configurations: ``UnlearnConfig`` extends ``TrainingArguments``; each method adds its own knobs.

Every field carries ``metadata={"help": ...}`` so ``HfArgumentParser`` and ``hf-unlearn run --config`` expose it.
Defaults are conservative (issue reports across unlearning repos: aggressive GA defaults collapse the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

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
    report_to: str | list[str] | None = field(default="none", metadata={"help": "Integrations to report to."})

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
        for name in ("forget_weight", "retain_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")


@dataclass
class GAConfig(UnlearnConfig):
    r"""Gradient ascent on the forget set. ``retain_loss_type="nll"`` gives GA_Diff, ``"kl"`` gives KL_Min."""


@dataclass
class NPOConfig(UnlearnConfig):
    r"""Negative Preference Optimization.

    Args:
        beta (`float`, defaults to `0.1`): inverse temperature of the NPO loss (OpenUnlearning default; MLLMU-Bench
            and MMUnlearner use 0.4).
        precompute_ref_log_probs (`bool`, defaults to `False`): compute the reference log-probabilities of every
            forget example once at the start of training, then drop the reference model (no second model in memory).
    """

    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature beta (> 0)."})
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute reference log-probs of the forget set once; hold no reference model afterwards."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
