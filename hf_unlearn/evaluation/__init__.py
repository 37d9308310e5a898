"""Evaluation: MLLMU-Bench-style metrics, TOFU/MUSE text metrics, membership inference, relearning, reports."""

from .attacks import RelearnConfig, membership_inference_auc, relearn_attack, split_for_relearning
from .evaluator import MCQ_SPLITS, Evaluator
from .metrics import mcq_accuracy, mcq_predictions, roc_auc, rouge_l
from .probe import Probe
from .report import markdown_table, plot_tradeoff, render_report
from .text_evaluator import TextEvaluator

__all__ = [
    "Evaluator",
    "MCQ_SPLITS",
    "Probe",
    "RelearnConfig",
    "TextEvaluator",
    "markdown_table",
    "mcq_accuracy",
    "mcq_predictions",
    "membership_inference_auc",
    "plot_tradeoff",
    "relearn_attack",
    "render_report",
    "roc_auc",
    "rouge_l",
    "split_for_relearning",
]
