"""Evaluation: MLLMU-Bench-style metrics, TOFU/MUSE text metrics, membership inference, robustness attacks (the
registry of ``attack_registry``: relearning, probing, rephrased images, typographic and jailbreak prompts,
quantization), reports."""

# Importing the attack modules registers their attacks (attack_registry.ATTACKS).
from . import input_attacks, probing, quantization  # noqa: F401
from .attack_registry import ATTACKS, AttackContext, AttackSkipped, AttackSpec, attack_names, register_attack
from .attacks import RelearnConfig, membership_inference_auc, relearn_attack, split_for_relearning
from .evaluator import MCQ_SPLITS, Evaluator
from .metrics import mcq_accuracy, mcq_predictions, roc_auc, rouge_l
from .probe import Probe
from .report import markdown_table, plot_tradeoff, render_report
from .text_evaluator import TextEvaluator

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackSkipped",
    "AttackSpec",
    "Evaluator",
    "MCQ_SPLITS",
    "Probe",
    "RelearnConfig",
    "TextEvaluator",
    "attack_names",
    "markdown_table",
    "mcq_accuracy",
    "mcq_predictions",
    "membership_inference_auc",
    "plot_tradeoff",
    "register_attack",
    "relearn_attack",
    "render_report",
    "roc_auc",
    "rouge_l",
    "split_for_relearning",
]
