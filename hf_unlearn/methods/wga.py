"""WGA: weighted gradient ascent (Wang et al. 2025, "Rethinking LLM Unlearning Objectives", arXiv 2502.19301).

Gradient ascent on forget answers with each token's NLL weighted by its own probability, detached: L_f = -mean_t
p(y_t)^beta * NLL_t. A token the model still predicts confidently weighs most; one already forgotten (p -> 0) stops
being pushed, so the ascent saturates instead of diverging. Retain: NLL on retain rows (GA_Diff's), weight
``retain_weight``. OpenUnlearning's ``WGA`` (``src/trainer/utils.py: compute_wga_loss``) computes the same per-token
weights; tests/test_wga.py checks both against a hand computation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_non_negative
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method


@dataclass
class WGAConfig(UnlearnConfig):
    r"""WGA: gradient ascent with each forget token weighted by p(y_t)^beta (detached).

    Args:
        beta (`float`, defaults to `1.0`): the weight's exponent (OpenUnlearning's default; 0 is plain GA).
    """

    beta: float = field(default=1.0, metadata={"help": "Exponent of the per-token weight p(y_t)^beta (0: plain GA)."})

    def __post_init__(self):
        super().__post_init__()
        require_non_negative(self, "beta")


class WGATrainer(UnlearnTrainer):
    """Weighted gradient ascent on forget answers plus the retain term. See the module docstring."""

    config_class = WGAConfig
    _name = "WGA"
    _method_tag = "wga"
    _paper = {
        "title": "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond",
        "id": "2502.19301",
        "citation": "@inproceedings{wang2025rethinking,\n  title={Rethinking {LLM} Unlearning Objectives: A Gradient "
                    "Perspective and Go Beyond},\n  author={Wang, Qizhou and Zhou, Jin Peng and Zhou, Zhanke and Shin, "
                    "Saebyeol and Han, Bo and Weinberger, Kilian Q.},\n  booktitle={ICLR},\n  year={2025}\n}",
    }

    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        outputs = model(**inputs)
        loss = losses.weighted_gradient_ascent_loss(outputs.logits, inputs["labels"], self.args.beta)
        return loss, {"forget_nll": outputs.loss.item()}


register_method(MethodSpec("wga", WGATrainer, "WGA: gradient ascent weighted by each token's probability + retain NLL."))
