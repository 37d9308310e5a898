"""SimNPO: reference-free, length-normalised negative preference optimisation (Fan et al., 2024)."""

from __future__ import annotations

from .. import losses
from ..config import SimNPOConfig
from .base import UnlearnTrainer


class SimNPOTrainer(UnlearnTrainer):
    """SimNPO: L = -(2/beta) E log sigmoid(-(beta/|y|) log pi(y|x) - gamma) on forget answers, plus the retain term.

    NPO without the reference model: the reward is the policy's own average answer log-likelihood, so no second model
    is held or precomputed, and long and short answers get the same push. Works on vision-language models as on text
    LMs (the answer tokens of forget VQA rows). See ``docs/methods/simnpo.md``.
    """

    config_class = SimNPOConfig
    _name = "SimNPO"
    _method_tag = "simnpo"
    _paper = {
        "title": "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
        "id": "2410.07163",
        "citation": "@inproceedings{fan2025simplicity,\n  title={Simplicity Prevails: Rethinking Negative Preference "
                    "Optimization for LLM Unlearning},\n  author={Fan, Chongyu and Liu, Jiancheng and Lin, Licong and "
                    "Jia, Jinghan and Zhang, Ruiqi and Mei, Song and Liu, Sijia},\n  booktitle={NeurIPS},\n  "
                    "year={2025}\n}",
    }

    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        outputs = model(**inputs)
        logps, num_tokens = losses.sequence_log_probs(outputs.logits, inputs["labels"])  # (B,), (B,)
        loss = losses.simnpo_loss(logps, num_tokens, self.args.beta, self.args.gamma)
        return loss, {"forget_nll": outputs.loss.item()}
