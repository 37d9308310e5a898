"""UNDIAL: unlearning by self-distillation toward adjusted logits (Dong et al., 2024)."""

from __future__ import annotations

from .. import losses
from ..config import UNDIALConfig
from .base import UnlearnTrainer


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
