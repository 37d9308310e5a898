"""Benchmark v3's metrics for one model (issue 25 items 4 and 5): the rows behind every number, for intervals.

Per split of ``SPLITS`` (the image questions of the forget, retain and test views, the text questions of the same
people, the drawn and the named shapes):

* ``<split>_acc``: 4-way accuracy by option likelihood (kept from v2; the least reliable kind of metric in
  Open-MMUnlearning's meta-evaluation, 0.74 against ROUGE-L 0.92, BLEU 0.95 and truth ratio 0.90);
* ``<split>_prob``: the true answer's length-normalised probability, exp(-mean answer-token NLL) (TOFU, MLLMU-Bench);
* ``<split>_truth``: the truth-ratio score per question, max(0, 1 - TR) with TR = P~(perturbed) / P~(true) over the
  row's ``perturbed_answers`` (TOFU's "true_better" aggregate: 1 = the truth is far more likely than every wrong
  value, 0 = no preference or a wrong one);
* ``<split>_rougeL`` and ``<split>_bleu``: the greedy generated answer against the true one (free text, not a
  choice among four; on v3's one-word answers both are 1 for the right word);
* ``<split>_nll``: the mean answer-token NLL (``text_damage_ratio`` compares it with the vanilla's);
* ``pope_yes``: on the POPE-style yes/no split, the share of questions answered "yes" (POPE's yes-ratio, 0.5 on its
  balanced questions for an unbiased model): an accuracy that falls with a yes-ratio near 0 or 1 is a model that
  stopped looking at the image and answers one word.

Robustness: ``quant8_forget_vqa_acc`` / ``quant4_...`` (``evaluation.quantization``: the weights quantized to 8 and
4 bits as a user loads them), ``relearn_acc`` / ``relearn_pre_acc`` (the calibrated relearning attack), the
membership AUCs (forget faces against the never-seen holdout faces); image rephrasing is ``test_vqa`` (the same
questions on a transformed portrait), reported as its own split.

The distance to the oracle (``TRUSTED_DISTANCE_METRICS``) is taken on the trusted metrics only: truth ratio and
ROUGE-L on the forget faces, the forget people's text, the retain faces and the drawn shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np
import torch
from transformers import set_seed

from ..data.identity_benchmark import POPE_ANSWERS
from ..data.image_processing_memo import memoized_image_processing
from ..data.rows import row_answers
from ..evaluation import metrics, text_metrics
from ..evaluation.attacks import RelearnConfig, relearn_rows
from ..evaluation.evaluator import Evaluator
from ..evaluation.quantization import BITS, quantized_copy
from ..evaluation.stats import RowValues
from ..features import memoized_image_features
from .evaluation import MIA_KEYS, MIA_SPLITS
from .identity import relearned_parts

SPLITS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "test_vqa", "test_retain_vqa", "general",
          "general_qa", "pope")
PER_SPLIT = ("acc", "prob", "truth", "rougeL", "bleu", "nll")
YES_NO_SPLITS = ("pope",)  # also report the yes-ratio
ATTACK_KEYS = (*(f"quant{b}_forget_vqa_acc" for b in BITS), "relearn_acc", "relearn_pre_acc", *MIA_KEYS.values())
METRIC_KEYS = (*(f"{s}_{m}" for s in SPLITS for m in PER_SPLIT), *(f"{s}_yes" for s in YES_NO_SPLITS), *ATTACK_KEYS)
TRUSTED_DISTANCE_METRICS = tuple(f"{s}_{m}" for s in ("forget_vqa", "forget_qa", "retain_vqa", "general")
                                 for m in ("truth", "rougeL"))


def split_rows(evaluator: Evaluator, dataset: datasets.Dataset, yes_no: bool = False) -> dict[str, RowValues]:
    """``PER_SPLIT``'s rows for one split, plus ``yes`` (the yes-ratio) for a yes/no split."""
    scores = evaluator.candidate_scores(dataset)  # answer, options and perturbed answers in one pass
    nll = -np.concatenate(scores["answer"].mean)
    ratios = text_metrics.truth_ratio(nll, [-values for values in scores["perturbed_answers"].mean])
    generated, answers = evaluator.generate(dataset), row_answers(dataset)
    chosen = metrics.mcq_predictions(scores["options"].table(evaluator.option_score))
    extra = {}
    if yes_no:
        extra["yes"] = RowValues.of([options[i] == POPE_ANSWERS[0] for options, i in zip(dataset["options"], chosen)])
    return {"acc": RowValues.of((chosen == np.asarray(dataset["label"])).astype(np.float64)), **extra,
            "prob": RowValues.of(text_metrics.answer_probability(nll)),
            "truth": RowValues.of(np.maximum(0.0, 1.0 - ratios)),
            "rougeL": RowValues.of(metrics.rouge_l_per_row(generated, answers)),
            "bleu": RowValues.of(metrics.bleu_per_row(generated, answers)),
            "nll": RowValues.of(nll)}


def evaluate_identity_rows(
    model: torch.nn.Module,
    processor: Any,
    benchmark: datasets.DatasetDict,
    *,
    seed: int,
    relearn: RelearnConfig | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    quantize: bool = True,
    batch_size: int = 64,
    max_new_tokens: int = 4,
) -> dict[str, RowValues]:
    """Every metric of ``METRIC_KEYS`` for ``model`` as the rows behind it (splits missing from ``benchmark`` and
    attacks not asked for are left out). ``reference``: the oracle's per-row NLLs for the reference membership
    attack (``demo.evaluation.reference_nll``)."""
    set_seed(seed)
    evaluator = Evaluator(model, processor, benchmark, batch_size=batch_size, max_new_tokens=max_new_tokens)
    with memoized_image_processing(processor):  # each picture is asked about ~10 times per split
        rows = _split_and_membership_rows(evaluator, model, benchmark, reference)
        if quantize:
            for bits in BITS:
                quantized = Evaluator(quantized_copy(model, bits), processor, benchmark, batch_size=batch_size)
                rows[f"quant{bits}_forget_vqa_acc"] = RowValues.of(quantized.mcq_correct("forget_vqa"))
                del quantized
        if relearn is not None:
            before, after = relearn_rows(model, processor, benchmark["forget_vqa"], relearn,
                                         eval_batch_size=batch_size, select_parameters=relearned_parts)
            rows["relearn_acc"], rows["relearn_pre_acc"] = RowValues.of(after), RowValues.of(before)
    return rows


def _split_and_membership_rows(evaluator: Evaluator, model: torch.nn.Module, benchmark: datasets.DatasetDict,
                               reference: Mapping[str, np.ndarray] | None) -> dict[str, RowValues]:
    """``PER_SPLIT``'s rows of every split and the membership AUCs, the frozen tower run once per image."""
    rows: dict[str, RowValues] = {}
    with memoized_image_features(model):
        for split in SPLITS:
            if len(benchmark.get(split, [])) > 0:
                rows.update({f"{split}_{k}": v for k, v in
                             split_rows(evaluator, benchmark[split], yes_no=split in YES_NO_SPLITS).items()})
        if all(len(benchmark.get(s, [])) > 0 for s in MIA_SPLITS):
            ref = reference or {}
            members, nonmembers = (evaluator.mia_scores(split, reference=ref.get(split)) for split in MIA_SPLITS)
            rows.update({key: RowValues.of(members[a], nonmembers[a]) for a, key in MIA_KEYS.items() if a in members})
    return rows


# Below this change of retain-QA NLL (nats; about 1% of the answer's probability) the ratio divides by noise.
MIN_RETAIN_CHANGE = 0.01


def text_damage_ratio(points: Mapping[str, float], vanilla: Mapping[str, float]) -> float | None:
    """How much more a method damaged what the forget people are known for in text than other people's text: the
    forget-QA NLL change over the retain-QA NLL change, both from the vanilla (issue 25 item 4). Above 1: the image
    unlearning reached the forget people's text facts specifically, the damage MMUnlearner exists to avoid. None when
    retain-QA moved by less than ``MIN_RETAIN_CHANGE`` (a ratio over noise)."""
    forget = points["forget_qa_nll"] - vanilla["forget_qa_nll"]
    retain = points["retain_qa_nll"] - vanilla["retain_qa_nll"]
    if abs(retain) < MIN_RETAIN_CHANGE:
        return None
    return float(forget / retain)
