"""SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", arXiv 2505.11953).

Gradient ascent with each forget token's NLL weighted by p^beta1 (1 - p)^beta2, p = p(y_t) detached: tokens that are
*saturated* (p near 1: memorised, nothing left to learn from them) and tokens already forgotten (p near 0) both weigh
little; the weight peaks at p = beta1 / (beta1 + beta2). Retain: NLL on retain rows. Defaults are OpenUnlearning's
``configs/trainer/SatImp.yaml``: beta1 5, beta2 1, forget weight 0.1, retain weight 1 (its class defaults differ:
gamma 1, alpha 0.1; the yaml is what its runs use).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_non_negative
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method


@dataclass
class SatImpConfig(UnlearnConfig):
    r"""SatImp: gradient ascent with per-token weights p^beta1 (1 - p)^beta2 (detached).

    Args:
        beta1 (`float`, defaults to `5.0`): exponent of p (weight on confident tokens).
        beta2 (`float`, defaults to `1.0`): exponent of 1 - p (down-weights saturated tokens).
        forget_weight (`float`, defaults to `0.1`): OpenUnlearning's gamma for SatImp.
    """

    forget_weight: float = field(default=0.1, metadata={"help": "Weight of the SatImp term (OpenUnlearning: 0.1)."})
    beta1: float = field(default=5.0, metadata={"help": "Exponent of p(y_t) in the token weight (>= 0)."})
    beta2: float = field(default=1.0, metadata={"help": "Exponent of 1 - p(y_t) in the token weight (>= 0)."})

    def __post_init__(self):
        super().__post_init__()
        require_non_negative(self, "beta1", "beta2")


class SatImpTrainer(UnlearnTrainer):
    """Saturation-and-importance reweighted gradient ascent plus the retain term. See the module docstring."""

    config_class = SatImpConfig
    _name = "SatImp"
    _method_tag = "satimp"
    _paper = {
        "title": "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning",
        "id": "2505.11953",
        "citation": "@inproceedings{yang2025satimp,\n  title={Exploring Criteria of Loss Reweighting to Enhance {LLM} "
                    "Unlearning},\n  author={Yang, Puning and Wang, Qizhou and Huang, Zhuo and Liu, Tongliang and "
                    "Zhang, Chengqi and Han, Bo},\n  booktitle={ICML},\n  year={2025}\n}",
    }

    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        outputs = model(**inputs)
        loss = losses.weighted_gradient_ascent_loss(outputs.logits, inputs["labels"], self.args.beta1, self.args.beta2)
        return loss, {"forget_nll": outputs.loss.item()}


register_method(MethodSpec("satimp", SatImpTrainer, "SatImp: gradient ascent reweighted by saturation and importance "
                                                    "+ retain NLL."))
