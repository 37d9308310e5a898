"""PDU: primal-dual unlearning (Entesari et al. 2025, "Constrained Entropic Unlearning", arXiv 2502.17823).

Unlearning as a constrained problem: make the forget answers' next-token logits flat, subject to the retain loss
staying below a threshold epsilon. The Lagrangian L = forget_weight * L_f + lambda * (L_r - epsilon) is minimised in
the weights (the primal step: the optimizer's) while the multiplier follows the constraint's violation (the dual
step, after every optimizer step past the warm-up): lambda <- max(0, lambda + eta * (L_r - epsilon)), L_r the step's
mean retain NLL. L_f is the mean over the positions that predict forget answer tokens of (max_v z - mean_v z)^2.

Where this differs from OpenUnlearning's ``PDU`` (``src/trainer/unlearn/pdu.py``), and why:
* L_f is taken at the positions that *predict* answer tokens (the shifted mask, as every other loss here);
  OpenUnlearning applies the unshifted label mask to the logits, i.e. the positions after each answer token.
* ``retain_loss_epsilon=None`` (default) sets epsilon to the starting model's mean retain NLL, measured once at train
  begin: "keep retain at least as good as it was" (OpenUnlearning requires a value; a user who does not tune gets
  this one). The threshold and lambda are written into every checkpoint, so a resume continues the dual ascent.
* The warm-up counts optimizer steps (``dual_warmup_steps``), not epochs: unlearning runs are often shorter than one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_finite, require_int_at_least, require_non_negative
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method

EPSILON, DUAL = "pdu.retain_epsilon", "pdu.retain_multiplier"  # scalars of the trainer's PrecomputedStore


@dataclass
class PDUConfig(UnlearnConfig):
    r"""PDU: flatten forget-answer logits subject to retain NLL <= epsilon, with a dual-ascent retain weight.

    Args:
        retain_loss_epsilon (`float` or `None`, defaults to `None`): the retain-loss threshold; ``None``: the starting
            model's mean retain NLL (measured once at train begin).
        primal_dual (`bool`, defaults to `True`): update the retain weight by dual ascent (else it stays
            ``retain_weight``: a fixed linear scalarisation).
        dual_step_size (`float`, defaults to `1.0`): eta of the dual update.
        dual_warmup_steps (`int`, defaults to `0`): optimizer steps before the dual updates start.
    """

    retain_loss_epsilon: float | None = field(
        default=None, metadata={"help": "Retain-loss threshold; None: the starting model's mean retain NLL."})
    primal_dual: bool = field(default=True, metadata={"help": "Dual ascent on the retain weight (else fixed)."})
    dual_step_size: float = field(default=1.0, metadata={"help": "Step size eta of the dual update (>= 0)."})
    dual_warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps before the dual updates start."})

    def __post_init__(self):
        super().__post_init__()
        require_finite(self, "retain_loss_epsilon")
        require_non_negative(self, "dual_step_size")
        require_int_at_least(self, "dual_warmup_steps", 0)


class _DualAscent(TrainerCallback):
    """At train begin: epsilon (when unset) and the starting multiplier; after every optimizer step past the warm-up,
    the dual update from the step's retain losses."""

    def __init__(self, trainer: PDUTrainer):
        self.trainer = trainer
        self.gaps: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        store = self.trainer.precomputed
        if EPSILON not in store:  # a resume reads both from its checkpoint
            epsilon = args.retain_loss_epsilon
            store.put_scalar(EPSILON, self.trainer.starting_retain_loss() if epsilon is None else epsilon)
            store.put_scalar(DUAL, args.retain_weight)
        self.gaps = []

    def on_step_end(self, args, state, control, **kwargs):
        if self.gaps and args.primal_dual and state.global_step > args.dual_warmup_steps:
            store = self.trainer.precomputed
            gap = sum(self.gaps) / len(self.gaps)
            if args.world_size > 1:  # every rank takes the same step: the gap averaged over the ranks' batches
                gap = self.trainer.accelerator.reduce(torch.tensor(gap, device=args.device), reduction="mean").item()
            store.put_scalar(DUAL, max(0.0, store.scalar(DUAL) + args.dual_step_size * gap))
        self.gaps = []


class PDUTrainer(UnlearnTrainer):
    """Primal-dual unlearning. See the module docstring."""

    config_class = PDUConfig
    _name = "PDU"
    _method_tag = "pdu"
    _paper = {
        "title": "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models",
        "id": "2502.17823",
        "citation": "@article{entesari2025pdu,\n  title={Constrained Entropic Unlearning: A Primal-Dual Framework for "
                    "Large Language Models},\n  author={Entesari, Taha and Hatami, Arman and Khaziev, Rinat and "
                    "Ramakrishna, Anil and Fazlyab, Mahyar},\n  journal={arXiv preprint arXiv:2502.17823},\n  "
                    "year={2025}\n}",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.uses_retain():
            raise ValueError("PDU constrains the retain loss: it needs `retain_dataset=` (and retain_loss_type 'nll').")
        if self.args.retain_loss_type != "nll":
            raise ValueError(f"PDU's constraint is on the retain NLL; retain_loss_type={self.args.retain_loss_type!r} "
                             "is not supported. Use 'nll'.")
        self.dual = _DualAscent(self)
        self.add_callback(self.dual)

    def retain_weight(self) -> float:
        return self.precomputed.scalar(DUAL) if DUAL in self.precomputed else self.args.retain_weight

    def retain_loss(self, model, retain):
        nll, logs = super().retain_loss(model, retain)
        epsilon = self.precomputed.scalar(EPSILON) if EPSILON in self.precomputed else 0.0
        if model.training:
            self.dual.gaps.append(nll.item() - epsilon)
        return nll - epsilon, {**logs, "retain_multiplier": self.retain_weight()}

    @torch.no_grad()
    def starting_retain_loss(self) -> float:
        """The mean retain NLL of the starting model (before the first step), over up to 256 retain rows."""
        model = self.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        rows = [self.retain_dataset[i] for i in range(min(len(self.retain_dataset), 256))]
        for batch in self.eval_batches(rows):
            n = int((batch["labels"][:, 1:] != losses.IGNORE_INDEX).sum())
            total += model(**self.model_inputs(batch)).loss.item() * n
            count += n
        model.train(was_training)
        return total / max(count, 1)

    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        outputs = model(**inputs)
        return losses.logit_flatness_loss(outputs.logits, inputs["labels"]), {"forget_nll": outputs.loss.item()}


register_method(MethodSpec("pdu", PDUTrainer, "PDU: flatten forget-answer logits subject to a retain-loss constraint "
                                              "(primal-dual)."))
