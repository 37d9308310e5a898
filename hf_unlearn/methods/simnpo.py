"""SimNPO: reference-free, length-normalised negative preference optimisation (Fan et al., 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_non_negative, require_positive
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method


@dataclass
class SimNPOConfig(UnlearnConfig):
    r"""SimNPO: reference-free, length-normalised NPO (Fan et al., 2024, arXiv 2410.07163).

    L = -(2/beta) mean log sigmoid(-(beta/|y|) log pi(y|x) - gamma) on forget answers, plus the retain term.
    Defaults are the authors' TOFU forget10 recipe (also OpenUnlearning's): beta 4.5, gamma 0, forget weight 0.125.

    Args:
        beta (`float`, defaults to `4.5`): inverse temperature applied to the mean answer NLL.
        gamma (`float`, defaults to `0.0`): reward margin, the paper's gamma: subtracted *after* scaling by beta.
            OpenUnlearning's ``delta`` sits inside beta(.): delta_OU = gamma / beta.
        forget_weight (`float`, defaults to `0.125`): the authors' ``npo_coeff`` for TOFU forget10 (0.1375 forget05).
    """

    forget_weight: float = field(
        default=0.125, metadata={"help": "Weight of the SimNPO term (the authors' npo_coeff; TOFU forget10: 0.125)."}
    )
    beta: float = field(default=4.5, metadata={"help": "SimNPO inverse temperature beta (> 0)."})
    gamma: float = field(
        default=0.0,
        metadata={"help": "Reward margin gamma of the paper (>= 0), subtracted after beta scaling; OpenUnlearning's "
                          "delta equals gamma / beta."},
    )

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "beta")
        require_non_negative(self, "gamma")  # a margin


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


register_method(MethodSpec("simnpo", SimNPOTrainer, "SimNPO: reference-free, length-normalised NPO + retain NLL."))
