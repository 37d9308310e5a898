"""CE-U: cross-entropy unlearning (Yang et al. 2025, arXiv 2503.01224).

At every position that predicts a forget answer token, the model's next-token distribution is trained (cross-entropy)
toward its own current distribution with that token removed: the detached logits with the answer token's logit set to
-inf, renormalised. The gradient lowers the answer token's probability and keeps the rest of the distribution's shape,
and it is bounded (it vanishes once p(y_t) = 0), unlike gradient ascent. The first answer token of each row is skipped
(the paper's footnote; OpenUnlearning's ``ignore_first_n_answer_tokens=1``). OpenUnlearning's CEU has no retain term;
here the retain term follows the library's rule (NLL when a retain set is given; ``retain_loss_type="none"`` for
OpenUnlearning's setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_int_at_least
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method


@dataclass
class CEUConfig(UnlearnConfig):
    r"""CE-U: cross-entropy toward the model's own distribution without the answer token.

    Args:
        skip_first_answer_tokens (`int`, defaults to `1`): answer tokens at the start of each row left out of the
            loss (the paper's footnote).
    """

    skip_first_answer_tokens: int = field(
        default=1, metadata={"help": "Answer tokens at the start of each row left out of the loss (>= 0)."})

    def __post_init__(self):
        super().__post_init__()
        require_int_at_least(self, "skip_first_answer_tokens", 0)


class CEUTrainer(UnlearnTrainer):
    """Cross-entropy unlearning on forget answers plus the retain term. See the module docstring."""

    config_class = CEUConfig
    _name = "CE-U"
    _method_tag = "ce-u"
    _paper = {
        "title": "CE-U: Cross Entropy Unlearning",
        "id": "2503.01224",
        "citation": "@article{yang2025ceu,\n  title={{CE-U}: Cross Entropy Unlearning},\n  author={Yang, Bo},\n  "
                    "journal={arXiv preprint arXiv:2503.01224},\n  year={2025}\n}",
    }

    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        outputs = model(**inputs)
        loss = losses.cross_entropy_unlearning_loss(outputs.logits, inputs["labels"],
                                                    self.args.skip_first_answer_tokens)
        return loss, {"forget_nll": outputs.loss.item()}


register_method(MethodSpec("ceu", CEUTrainer, "CE-U: cross-entropy toward the model's own distribution without the "
                                              "answer token + retain NLL."))
