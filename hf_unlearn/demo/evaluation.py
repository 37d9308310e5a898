"""Evaluate one demo model: the rows behind every metric, so that intervals can cover seeds *and* questions.

``evaluate_rows`` returns ``{metric: RowValues}``: per-question correctness for the multiple-choice accuracies,
per-question ROUGE-L, member / non-member scores for every membership-inference attack, per-question correctness on
the relearning attack's test rows before and after the attack. ``RowValues.point()`` of each is the metric itself.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch
from transformers import set_seed

from ..evaluation import mia
from ..evaluation.attacks import RelearnConfig, relearn_rows
from ..evaluation.evaluator import MCQ_SPLITS, Evaluator
from ..evaluation.stats import RowValues

# Members are the forget people's image questions; non-members the holdout people's (never trained on).
MIA_SPLITS = ("forget_vqa", "holdout_vqa")
# results.json key of each attack of ``Evaluator.mia_scores``; the loss attack keeps the historical name.
MIA_KEYS = {"loss": "mia_auc", "min_k": "mia_min_k_auc", "min_k_pp": "mia_min_k_pp_auc", "zlib": "mia_zlib_auc",
            "reference": "mia_reference_auc"}
# The order of metrics in results.json and tables (wall time is added by the pipeline).
METRIC_KEYS = (
    "forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc", "retain_qa_acc", "test_vqa_acc", "general_acc",
    "forget_rougeL", *MIA_KEYS.values(), "relearn_acc", "relearn_pre_acc",
)  # fmt: skip


def reference_nll(model: torch.nn.Module, processor: Any, benchmark: datasets.DatasetDict,
                  batch_size: int = 16) -> dict[str, np.ndarray]:
    """The reference model's (the oracle's) mean answer NLL per row on the membership splits, computed once per seed
    and shared by every evaluated model's reference attack."""
    evaluator = Evaluator(model, processor, benchmark, batch_size=batch_size)
    # The loss attack's own computation, so that the oracle scored against itself gives exactly 0 (AUC 0.5).
    return {split: -mia.loss_score(evaluator.answer_token_stats(split)["log_prob"])
            for split in MIA_SPLITS if split in benchmark}


def evaluate_rows(
    model: torch.nn.Module,
    processor: Any,
    benchmark: datasets.DatasetDict,
    *,
    seed: int,
    relearn: RelearnConfig | None,
    reference: dict[str, np.ndarray] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 8,
) -> dict[str, RowValues]:
    """Every metric of ``METRIC_KEYS`` as the rows behind it (metrics whose splits are missing are left out)."""
    set_seed(seed)
    evaluator = Evaluator(model, processor, benchmark, batch_size=batch_size, max_new_tokens=max_new_tokens)
    rows: dict[str, RowValues] = {}
    for split in MCQ_SPLITS:
        if split in benchmark and len(benchmark[split]) > 0:
            rows[f"{split}_acc"] = RowValues.of(evaluator.mcq_correct(split))
    if len(benchmark.get("forget_vqa", [])) > 0:
        rows["forget_rougeL"] = RowValues.of(evaluator.rouge_l_scores("forget_vqa"))
    if all(len(benchmark.get(s, [])) > 0 for s in MIA_SPLITS):
        ref = reference or {}
        members, nonmembers = (evaluator.mia_scores(split, reference=ref.get(split)) for split in MIA_SPLITS)
        for attack, key in MIA_KEYS.items():
            if attack in members:
                rows[key] = RowValues.of(members[attack], nonmembers[attack])
    if relearn is not None and len(benchmark.get("forget_vqa", [])) > 1:
        before, after = relearn_rows(model, processor, benchmark["forget_vqa"], relearn, eval_batch_size=batch_size)
        rows["relearn_acc"], rows["relearn_pre_acc"] = RowValues.of(after), RowValues.of(before)
    return rows
