"""Gradient ascent and its retain variants (GA, GA_Diff, KL_Min)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import losses
from ..config import UnlearnConfig
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method


@dataclass
class GAConfig(UnlearnConfig):
    r"""Gradient ascent on the forget set. ``retain_loss_type="nll"`` gives GA_Diff, ``"kl"`` gives KL_Min."""


class GATrainer(UnlearnTrainer):
    """Gradient ascent on the forget answers.

    With ``retain_loss_type="nll"`` (the default when a retain set is given) this is GA_Diff: descent on retain
    answers at the same step. With ``"kl"`` it is KL_Min: the retain term keeps the output distribution close to the
    frozen starting model. Plain GA is unbounded: set ``stop_forget_loss_above`` or watch ``forget_nll``.
    """

    config_class = GAConfig
    _name = "GA"
    _method_tag = "gradient-ascent"
    _paper = {
        "title": "Knowledge Unlearning for Mitigating Privacy Risks in Language Models",
        "id": "2210.01504",
        "citation": "@inproceedings{jang2023knowledge,\n  title={Knowledge Unlearning for Mitigating Privacy Risks in "
                    "Language Models},\n  author={Jang, Joel and Yoon, Dongkeun and Yang, Sohee and Cha, Sungmin and "
                    "Lee, Moontae and Logeswaran, Lajanugen and Seo, Minjoon},\n  booktitle={ACL},\n  year={2023}\n}",
    }

    def forget_loss(self, model, forget):
        nll = model(**self.model_inputs(forget)).loss
        return losses.gradient_ascent_loss(nll), {"forget_nll": nll.item()}


register_method(MethodSpec("ga", GATrainer, "Gradient ascent on the forget answers (unbounded; collapses).",
                           {"retain_loss_type": "none"}))
register_method(MethodSpec("ga_diff", GATrainer, "GA_Diff: gradient ascent on forget + descent on retain answers.",
                           {"retain_loss_type": "nll"}))
register_method(MethodSpec("kl_min", GATrainer,
                           "KL_Min: gradient ascent on forget + KL to the starting model on retain rows.",
                           {"retain_loss_type": "kl"}))
