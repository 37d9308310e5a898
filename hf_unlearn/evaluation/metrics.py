"""Pure metric functions: multiple-choice accuracy, ROUGE-L and ROC-AUC.

Nothing here touches a model; the evaluator computes scores and hands them over, so every metric can be checked
against a hand computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mcq_predictions(option_scores: np.ndarray) -> np.ndarray:
    """Index of the best-scoring option per question, (N, K) -> (N,). Ties go to the first option (deterministic)."""
    scores = np.asarray(option_scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"option_scores must be (num_questions, num_options), got shape {scores.shape}.")
    return scores.argmax(axis=1)


def mcq_accuracy(option_scores: np.ndarray, labels: Sequence[int]) -> float:
    """Fraction of questions whose highest-scoring option is the labelled one."""
    labels = np.asarray(labels)
    preds = mcq_predictions(option_scores)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape[0]} questions scored but {labels.shape[0]} labels given.")
    if len(labels) == 0:
        raise ValueError("Cannot compute an accuracy over zero questions.")
    return float((preds == labels).mean())


_ROUGE_SCORER = None
ROUGE_MEASURES = ("fmeasure", "recall", "precision")


def rouge_l_per_row(predictions: Sequence[str], references: Sequence[str], measure: str = "fmeasure") -> np.ndarray:
    """ROUGE-L of each prediction against its reference (``rouge_score``, Porter stemmer on, as MLLMU-Bench's
    ``eval.py``). ``measure``: ``"fmeasure"`` (MLLMU-Bench, MUSE), ``"recall"`` (TOFU, CLEAR) or ``"precision"``."""
    global _ROUGE_SCORER
    if measure not in ROUGE_MEASURES:
        raise ValueError(f"measure={measure!r}; use one of {ROUGE_MEASURES}.")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        raise ValueError("Cannot compute ROUGE-L over zero predictions.")
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([getattr(_ROUGE_SCORER.score(ref, pred)["rougeL"], measure)
                     for pred, ref in zip(predictions, references)], dtype=np.float64)


def bleu_per_row(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Sentence BLEU of each prediction against its reference (nltk, whitespace tokens, lower-cased), up to 4-grams
    but no longer than the reference, with Chen & Cherry's smoothing 1 (a short answer with no 4-gram match is not
    0). On one-word answers it is 1 for the exact word and 0 otherwise, times the brevity penalty."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        raise ValueError("Cannot compute BLEU over zero predictions.")
    smoothing = SmoothingFunction().method1
    scores = []
    for pred, ref in zip(predictions, references):
        ref_tokens, pred_tokens = ref.lower().split(), pred.lower().split()
        if not ref_tokens or not pred_tokens:
            scores.append(float(ref_tokens == pred_tokens))
            continue
        n = min(4, len(ref_tokens))
        scores.append(sentence_bleu([ref_tokens], pred_tokens, weights=(1.0 / n,) * n, smoothing_function=smoothing))
    return np.array(scores, dtype=np.float64)


def rouge_l(predictions: Sequence[str], references: Sequence[str], measure: str = "fmeasure") -> float:
    """Mean ROUGE-L (F-measure by default) over rows; see ``rouge_l_per_row``."""
    return float(np.mean(rouge_l_per_row(predictions, references, measure)))


def roc_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float:
    """Area under the ROC curve of telling positives from negatives by score (higher score = "positive").

    Equals the Mann-Whitney statistic P(score_pos > score_neg) + 0.5 * P(tie): 0.5 means no signal; 1.0 means every
    positive outscores every negative; below 0.5 means the ordering is reversed (which is a signal too). Computed by
    ``sklearn.metrics.roc_auc_score`` (O(n log n)); infinite scores (a loss that overflowed) keep their rank.
    """
    from sklearn.metrics import roc_auc_score

    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"ROC-AUC needs both classes; got {pos.size} positives and {neg.size} negatives.")
    scores = np.concatenate([pos, neg])
    if np.isnan(scores).any():
        raise ValueError("ROC-AUC scores contain NaN (the model's loss is NaN: it diverged); evaluate a finite model.")
    # sklearn rejects infinities; moving them just past the finite range keeps every rank and tie.
    finite = scores[np.isfinite(scores)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    above, below = np.nextafter(high, np.inf), np.nextafter(low, -np.inf)
    scores = np.where(scores == np.inf, above, np.where(scores == -np.inf, below, scores))
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    return float(roc_auc_score(labels, scores))
