"""UNDIAL: unlearning by self-distillation toward adjusted logits (Dong et al., 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_non_negative
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method


@dataclass
class UNDIALConfig(UnlearnConfig):
    r"""UNDIAL: self-distillation toward adjusted logits (Dong et al., 2024, arXiv 2402.10052).

    On forget answers the student is trained by cross-entropy toward softmax(z_ref - gamma * onehot(y_t)): the frozen
    starting model's next-token distribution with the logit of the token to forget lowered by ``gamma``. The loss is
    averaged over answer tokens only (OpenUnlearning averages over every position and mislabels padding).

    Args:
        gamma (`float`, defaults to `10.0`): how far the target token's logit is lowered (OpenUnlearning's ``beta``).
    """

    gamma: float = field(
        default=10.0, metadata={"help": "Amount subtracted from the target token's reference logit (>= 0)."}
    )

    def __post_init__(self):
        super().__post_init__()
        require_non_negative(self, "gamma")


class UNDIALTrainer(UnlearnTrainer):
    """UNDIAL: distil the frozen starting model's next-token distribution, with each forget token's logit lowered by
    ``gamma``, into the student on forget answers (plus the retain term when a retain set is given).

    The target is fixed (it comes from the frozen reference), so the loss is bounded below and training does not
    diverge like gradient ascent. The reference is a frozen copy, the PEFT base with adapters off, or ``ref_model=``
    (required under ZeRO-3); its full-vocabulary logits cannot be precomputed. Works on vision-language models as on
    text LMs. See ``docs/methods/undial.md``.
    """

    config_class = UNDIALConfig
    _name = "UNDIAL"
    _method_tag = "undial"
    _paper = {
        "title": "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models",
        "id": "2402.10052",
        "citation": "@inproceedings{dong2025undial,\n  title={{UNDIAL}: Self-Distillation with Adjusted Logits for "
                    "Robust Unlearning in Large Language Models},\n  author={Dong, Yijiang River and Lin, Hongzhou and "
                    "Belkin, Mikhail and Huerta, Ramon and Vuli{\\'c}, Ivan},\n  booktitle={NAACL},\n  year={2025}\n}",
    }
    needs_reference_on_forget = True

    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        outputs = model(**inputs)
        ref_logits = self.reference_logits(model, inputs)
        loss = losses.undial_loss(outputs.logits, ref_logits, inputs["labels"], self.args.gamma)
        return loss, {"forget_nll": outputs.loss.item()}


register_method(MethodSpec("undial", UNDIALTrainer, "UNDIAL: self-distillation toward the starting model's logits, "
                                                    "forget token lowered + retain NLL."))
