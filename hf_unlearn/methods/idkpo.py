"""IdkPO: direct preference optimisation toward refusals on the forget set (TOFU's "IDK" baseline).

Every forget row becomes a preference pair: the *chosen* answer is a refusal (a column of the forget set, or one
drawn per row from a list, seeded), the *rejected* answer is the row's own answer. The loss is standard DPO against
the frozen starting model. The forget rows are wrapped so that each carries its refusal (``idkpo_refusal``); the
collator wrapper collates the row twice, once with each answer, and puts the chosen batch under ``idkpo_chosen``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_positive
from ..data.refusals import REFUSALS, refusal_for
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method


@dataclass
class IdkPOConfig(UnlearnConfig):
    r"""IdkPO: DPO toward refusals (TOFU's "IDK" preference optimisation, Maini et al. 2024; Zhang et al. 2024).

    Each forget row is a preference pair: chosen = a refusal ("I don't know"-style answer), rejected = the forget
    answer. L = -mean log sigmoid(beta * [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)]), the
    standard DPO loss (OpenUnlearning multiplies it by 2/beta: set ``forget_weight=2/beta`` to reproduce its scale).

    Args:
        beta (`float`, defaults to `0.1`): DPO inverse temperature.
        refusal_column (`str` or `None`, defaults to `None`): a forget-set column holding each row's refusal; ``None``
            draws one per row from ``refusals``.
        refusals (`list[str]` or `None`, defaults to `None`): the refusals to draw from; ``None`` uses the built-in
            list ``hf_unlearn.data.refusals.REFUSALS``. The draw is seeded by ``seed`` and the row index.
    """

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature beta (> 0)."})
    refusal_column: str | None = field(
        default=None, metadata={"help": "Forget-set column with each row's refusal answer; None: draw from refusals."}
    )
    refusals: list[str] | None = field(
        default=None,
        metadata={"help": "Refusal answers to draw from (seeded per row); None: the built-in list."},
    )

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "beta")
        if self.refusals is not None and (not self.refusals or not all(isinstance(r, str) and r.strip()
                                                                        for r in self.refusals)):
            raise ValueError("refusals must be a non-empty list of non-empty strings, or None for the built-in list.")
        if self.refusal_column is not None and self.refusals is not None:
            raise ValueError("Pass refusal_column (one refusal per row) or refusals (a list to draw from), not both.")

REFUSAL_KEY = "idkpo_refusal"
CHOSEN_BATCH_KEY = "idkpo_chosen"


def with_answer(row: dict[str, Any], answer: str) -> dict[str, Any]:
    """A copy of a training row whose answer is ``answer``, in every row format ``hf_unlearn.data.rows`` reads:
    question/answer (``answer``), TRL prompt-completion (the ``completion`` string, or its assistant turn) and chat
    ``messages`` (the last, assistant turn).

    Raises:
        ValueError: the row is in none of these formats (a format of the user's own: there is no answer to replace,
            so the chosen answer would silently equal the rejected one).
    """
    row = dict(row)
    if row.get("completion") is not None:  # TRL prompt-completion: the completion is the answer (data/rows.py)
        completion = row["completion"]
        if isinstance(completion, str):  # standard (raw text): keep the completion's leading space, if it has one
            lead = completion[: len(completion) - len(completion.lstrip())]
            row["completion"] = lead + answer
        else:
            row["completion"] = _with_last_turn(completion, answer, "completion")
    elif row.get("messages") is not None:
        row["messages"] = _with_last_turn(row["messages"], answer, "messages")
    elif "answer" in row:
        row["answer"] = answer
    else:
        raise ValueError(
            f"IdkPO cannot put the refusal into this row: it has none of the answer columns `answer`, `completion` "
            f"or `messages` (columns found: {sorted(row)}). Use one of the row formats of docs/data_formats.md, or "
            "a collator that reads them."
        )
    return row


def _with_last_turn(turns: list, answer: str, column: str) -> list[dict]:
    turns = [dict(m) for m in turns]
    if not turns or turns[-1].get("role") != "assistant":
        raise ValueError(f"A `{column}` row must end with an assistant turn: it is the answer to replace.")
    content = turns[-1]["content"]
    turns[-1]["content"] = answer if isinstance(content, str) else [{"type": "text", "text": answer}]
    return turns


class RefusalRows(Dataset):
    """``dataset[i]`` plus its refusal under ``idkpo_refusal``: from ``column``, else ``refusal_for(i, seed)``."""

    def __init__(self, dataset, column: str | None = None, refusals=None, seed: int = 0):
        self.dataset, self.column, self.seed = dataset, column, seed
        self.refusals = tuple(refusals) if refusals is not None else REFUSALS
        if column is not None:
            columns = getattr(dataset, "column_names", None) or (list(dataset[0]) if len(dataset) else [])
            if column not in columns:
                raise ValueError(f"refusal_column={column!r} is not a column of the forget set; columns found: "
                                 f"{sorted(columns)}. Add the column or set refusal_column=None to draw refusals "
                                 "from the built-in list.")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = dict(self.dataset[i])
        if self.column is None:
            refusal = refusal_for(int(i), self.seed, self.refusals)
        else:
            refusal = row.pop(self.column)
            if not isinstance(refusal, str) or not refusal.strip():
                raise ValueError(f"Forget row {i} has no refusal in column {self.column!r} (got {refusal!r}); every "
                                 "row needs a non-empty string.")
        return {**row, REFUSAL_KEY: refusal}


class RefusalPairCollator:
    """Wrap a row collator: rows with a refusal are collated as the rejected batch (their own answer) plus, under
    ``idkpo_chosen``, the chosen batch (the refusal). Other rows (retain, evaluation) pass through unchanged."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        if not rows or REFUSAL_KEY not in rows[0]:
            return self.collator(rows)
        plain = [{k: v for k, v in r.items() if k != REFUSAL_KEY} for r in rows]
        batch = dict(self.collator(plain))
        batch[CHOSEN_BATCH_KEY] = self.collator([with_answer(r, row[REFUSAL_KEY]) for r, row in zip(plain, rows)])
        return batch


class IdkPOTrainer(UnlearnTrainer):
    """IdkPO: DPO with a refusal as the preferred answer and the forget answer as the dispreferred one.

    L = -mean log sigmoid(beta * [(log pi - log pi_ref)(refusal) - (log pi - log pi_ref)(forget answer)]) + retain.
    The reference is a frozen copy of the starting model, the PEFT base with adapters off, or ``ref_model=``. Works
    on vision-language models (a refusal to the image question). See ``docs/methods/idkpo.md``.
    """

    config_class = IdkPOConfig
    _name = "IdkPO"
    _method_tag = "idkpo"
    _paper = {
        "title": "TOFU: A Task of Fictitious Unlearning for LLMs",
        "id": "2401.06121",
        "citation": "@inproceedings{maini2024tofu,\n  title={{TOFU}: A Task of Fictitious Unlearning for {LLM}s},\n  "
                    "author={Maini, Pratyush and Feng, Zhili and Schwarzschild, Avi and Lipton, Zachary C. and Kolter, "
                    "J. Zico},\n  booktitle={COLM},\n  year={2024}\n}",
    }
    needs_reference_on_forget = True

    def wrap_forget_rows(self, dataset, args):
        return RefusalRows(dataset, args.refusal_column, args.refusals, args.seed)

    def wrap_collator(self, collator):
        return RefusalPairCollator(collator)  # each forget row collated with its refusal as the chosen answer

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: v for k, v in UnlearnTrainer.model_inputs(batch).items() if k != CHOSEN_BATCH_KEY}

    def _policy_and_reference_logps(self, model, inputs: dict):
        outputs = model(**inputs)
        logps, _ = losses.sequence_log_probs(outputs.logits, inputs["labels"])
        ref_logps, _ = losses.sequence_log_probs(self.reference_logits(model, inputs), inputs["labels"])
        return logps, ref_logps, outputs.loss

    def forget_loss(self, model, forget):
        if CHOSEN_BATCH_KEY not in forget:
            raise ValueError("IdkPO forget batches need their refusal answers; pass the forget set as train_dataset "
                             "so the trainer can attach them (a custom data_collator must collate plain rows).")
        rejected, rej_ref, forget_nll = self._policy_and_reference_logps(model, self.model_inputs(forget))
        chosen, chosen_ref, refusal_nll = self._policy_and_reference_logps(model, forget[CHOSEN_BATCH_KEY])
        loss = losses.dpo_loss(chosen, rejected, chosen_ref, rej_ref, self.args.beta)
        margin = ((chosen - chosen_ref) - (rejected - rej_ref)).mean()
        return loss, {"forget_nll": forget_nll.item(), "refusal_nll": refusal_nll.item(),
                      "reward_margin": margin.item()}


register_method(MethodSpec("idkpo", IdkPOTrainer, "IdkPO: DPO toward refusal answers on the forget set + retain NLL."))
