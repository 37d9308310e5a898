"""Negative Preference Optimization (Zhang et al., 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_positive
from ..data.row_index import ROW_INDEX_KEY
from ..trainers.base import UnlearnTrainer
from ..trainers.reference import REFERENCE_LOG_PROBS
from ..trainers.registry import MethodSpec, register_method


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
        require_positive(self, "beta")


class _PrecomputeReferenceCallback(TrainerCallback):
    """Compute reference log-probs once the model is prepared (DeepSpeed included), before the first batch."""

    def __init__(self, trainer: NPOTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.precompute_reference_log_probs(resumed=state.global_step > 0)


class NPOTrainer(UnlearnTrainer):
    """NPO: L = -(2/beta) E log sigmoid(-beta log(pi(y|x) / pi_ref(y|x))) on forget answers, plus the retain term.

    The reference is a frozen copy of the starting model (or the PEFT base with adapters off), or ``ref_model=``
    (a model or a path). With ``precompute_ref_log_probs=True`` the reference log-probs of every forget example are
    computed once at the start of training and no reference model is kept.
    """

    config_class = NPOConfig
    _name = "NPO"
    _method_tag = "npo"
    _paper = {
        "title": "Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning",
        "id": "2404.05868",
        "citation": "@inproceedings{zhang2024negative,\n  title={Negative Preference Optimization: From Catastrophic "
                    "Collapse to Effective Unlearning},\n  author={Zhang, Ruiqi and Lin, Licong and Bai, Yu and Mei, "
                    "Song},\n  booktitle={COLM},\n  year={2024}\n}",
    }
    needs_reference_on_forget = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.precompute_ref_log_probs:
            self.add_callback(_PrecomputeReferenceCallback(self))

    def needs_reference(self, args) -> bool:
        # Precomputing from the starting model needs no second model; a given ref_model is used once then dropped.
        if args.precompute_ref_log_probs and args.retain_loss_type != "kl":
            return self.given_reference is not None
        return super().needs_reference(args)

    @torch.no_grad()
    def precompute_reference_log_probs(self, resumed: bool = False) -> None:
        """Store the reference log-prob of every forget row (``forget.ref_logp``), then drop the reference model
        (unless a KL retain term needs it)."""
        if REFERENCE_LOG_PROBS in self.precomputed:
            return  # resumed from a checkpoint that holds them
        self.check_starting_model(resumed, "reference log-probs", "precompute_ref_log_probs=True")
        model = self.model
        was_training = model.training
        model.eval()
        values: list[torch.Tensor] = []
        with self.starting_model(model) as reference:
            for batch in self.eval_batches(self.forget_dataset, "NPO reference log-probs"):
                logps, _ = losses.sequence_log_probs(reference(**self.model_inputs(batch)).logits, batch["labels"])
                values.extend(logps.float())
        self.precomputed.put(REFERENCE_LOG_PROBS, values)
        if self.args.retain_loss_type != "kl":
            self.reference.drop()
        model.train(was_training)

    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        outputs = model(**inputs)
        logps, _ = losses.sequence_log_probs(outputs.logits, inputs["labels"])  # (B,)
        if REFERENCE_LOG_PROBS in self.precomputed:
            ref_logps = self.precomputed.gather(REFERENCE_LOG_PROBS, forget[ROW_INDEX_KEY], like=logps)
        else:
            ref_logps, _ = losses.sequence_log_probs(self.reference_logits(model, inputs), inputs["labels"])
        loss = losses.npo_loss(logps, ref_logps, self.args.beta)
        return loss, {"forget_nll": outputs.loss.item(), "log_ratio": (logps - ref_logps).mean().item()}


register_method(MethodSpec("npo", NPOTrainer, "NPO (bounded forget loss) + retain NLL."))
