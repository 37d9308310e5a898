"""Membership-inference attacks as pure functions of per-token quantities.

Every attack turns one row (a question and its answer) into a score, **higher = "looks like a member"** (trained
on); the ROC-AUC of forget rows (members) against never-seen holdout rows (non-members) then reads the same for all
of them: 0.5 = no signal, 1.0 = every forget row looks trained on, below 0.5 = the forget rows look *less* familiar
than unseen text, which gives them away too (typical after gradient ascent).

Only answer tokens are scored (no prompt, image or padding positions): the evaluator's answer-only labels.

==============  ==========================================================================  =====================
attack          score of one row (``lp_t`` = log p(answer token t), ``T`` answer tokens)     source
==============  ==========================================================================  =====================
``loss``        mean_t lp_t  (= -mean NLL)                                                  Yeom et al. 2018
``zlib``        mean_t lp_t / zlib-compressed byte length of the answer text                Carlini et al. 2021
``min_k``       mean of the lowest ``max(1, int(k T))`` values of lp_t (k = 0.2)            Shi et al. 2024
``min_k_pp``    the same over z_t = (lp_t - mu_t) / sigma_t, mu_t and sigma_t the mean and  Zhang et al. 2024
                std of log p(v) under the model's own next-token distribution p(v)
``reference``   NLL_reference - NLL_target (mean NLLs): the target finds the row easier     Carlini et al. 2021
                than a model that never saw it (in the demo: the retain-only oracle)
``gradnorm``    -||grad_theta NLL||_2 over all trainable parameters (white-box, one         arXiv 2402.17012 [#]
                backward per row)
==============  ==========================================================================  =====================

[#] OpenUnlearning averages per-tensor norms; we take the global L2 norm of the whole gradient (the norm of the
update one SGD step on the row would make); the two rank rows alike whenever one tensor dominates, not always.

Where we differ from OpenUnlearning's signs: it orients every statistic like a loss (higher = non-member) and
labels members 0; flipping both gives the same AUC, so our AUCs are directly comparable with its ``mia_*`` values.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..data.collators import IGNORE_INDEX
from .metrics import roc_auc

DEFAULT_K = 0.2
# Variance floor for Min-K%++ (a next-token distribution that is one-hot has zero spread).
_MIN_VARIANCE = 1e-6
ATTACKS = ("loss", "zlib", "min_k", "min_k_pp", "reference", "gradnorm")


# --------------------------------------------------------------------------------------------------------------------
# Per-token quantities from logits (torch; the only place that touches a (.., V) tensor)
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def answer_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, list[np.ndarray]]:
    """Per answer token: ``log_prob`` (log p of the label), ``vocab_mean`` and ``vocab_std`` (mean and std of
    log p(v) over the next-token distribution, the Min-K%++ normalisers) and ``argmax_match`` (whether the greedy
    next token is the label), each a list of one float64 array per row.

    ``logits`` (B, T, V) are next-token logits, ``labels`` (B, T) hold -100 outside the answer. Only the answer
    positions are gathered before the log-softmax, so the float32 work tensor is (answer tokens, V), not (B, T, V).
    """
    logits, labels = logits[:, :-1, :], labels[:, 1:]  # position t predicts token t+1
    mask = labels != IGNORE_INDEX  # (B, T-1)
    logz = logits[mask].float().log_softmax(-1)  # (N, V), N = answer tokens in the batch
    target = labels[mask]  # (N,)
    log_prob = logz.gather(-1, target[:, None])[:, 0]
    p = logz.exp()
    mean = (p * logz).sum(-1)
    var = (p * (logz - mean[:, None]).square()).sum(-1)
    match = logz.argmax(-1) == target
    del logz, p
    counts = mask.sum(-1).tolist()
    out = {}
    std = var.clamp(min=_MIN_VARIANCE).sqrt()
    for key, values in (("log_prob", log_prob), ("vocab_mean", mean), ("vocab_std", std), ("argmax_match", match)):
        out[key] = [v.double().cpu().numpy() for v in values.split(counts)]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Scores (numpy; one value per row, higher = member)
# --------------------------------------------------------------------------------------------------------------------
def _check_rows(rows: Sequence[np.ndarray], what: str) -> None:
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"Row {i} has no answer tokens to score ({what}); its answer was empty or truncated "
                             "away. Drop empty answers or raise the collator's max_length.")


def loss_score(log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """LOSS attack: the mean answer-token log-prob (= -mean NLL) per row."""
    _check_rows(log_probs, "loss")
    return np.array([np.mean(lp) for lp in log_probs], dtype=np.float64)


def zlib_score(log_probs: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """zlib attack: the LOSS score divided by the zlib-compressed length (bytes) of each row's answer text, so that
    answers that are easy for any model (repetitive, low entropy) count less."""
    if len(log_probs) != len(texts):
        raise ValueError(f"{len(log_probs)} rows of log-probs but {len(texts)} answer texts.")
    lengths = np.array([len(zlib.compress(str(t).encode("utf-8"))) for t in texts], dtype=np.float64)
    return loss_score(log_probs) / lengths


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"Min-K% needs k in (0, 1] (the fraction of tokens kept), got {k}.")


def _mean_of_lowest(values: np.ndarray, k: float) -> float:
    count = max(1, int(len(values) * k))  # at least one token, as OpenUnlearning and the Min-K% code
    return float(np.mean(np.sort(values)[:count]))


def min_k_score(log_probs: Sequence[np.ndarray], k: float = DEFAULT_K) -> np.ndarray:
    """Min-K% Prob (Shi et al. 2024, arXiv 2310.16789): the mean of the lowest ``k`` fraction of answer-token
    log-probs. Unseen text has a few surprising tokens; memorised text has none."""
    _check_k(k)
    _check_rows(log_probs, "min_k")
    return np.array([_mean_of_lowest(np.asarray(lp), k) for lp in log_probs], dtype=np.float64)


def min_k_pp_score(
    log_probs: Sequence[np.ndarray], vocab_mean: Sequence[np.ndarray], vocab_std: Sequence[np.ndarray],
    k: float = DEFAULT_K,
) -> np.ndarray:
    """Min-K%++ (Zhang et al. 2024, arXiv 2404.02936): Min-K% over z_t = (lp_t - mu_t) / sigma_t, where mu_t and
    sigma_t are the mean and std of log p(v) under the model's next-token distribution at t. A token scores high
    when it is a mode of that distribution (what training on it produces), not merely likely."""
    _check_k(k)
    _check_rows(log_probs, "min_k_pp")
    scores = []
    for i, (lp, mu, sigma) in enumerate(zip(log_probs, vocab_mean, vocab_std, strict=True)):
        lp, mu, sigma = (np.asarray(a, dtype=np.float64) for a in (lp, mu, sigma))
        if not lp.shape == mu.shape == sigma.shape:
            raise ValueError(f"Row {i}: {lp.shape} log-probs but {mu.shape} means and {sigma.shape} stds.")
        scores.append(_mean_of_lowest((lp - mu) / np.maximum(sigma, np.sqrt(_MIN_VARIANCE)), k))
    return np.array(scores, dtype=np.float64)


def reference_score(target_nll: np.ndarray, reference_nll: np.ndarray) -> np.ndarray:
    """Reference attack: reference NLL minus target NLL (mean per answer token), per row. Calibrates away how hard a
    row is for any model; with a retain-only oracle as the reference, an unlearned model scores ~0 on forget rows."""
    target_nll, reference_nll = np.asarray(target_nll, np.float64), np.asarray(reference_nll, np.float64)
    if target_nll.shape != reference_nll.shape:
        raise ValueError(f"{target_nll.shape} target NLLs but {reference_nll.shape} reference NLLs: score the same "
                         "rows with both models.")
    return reference_nll - target_nll


def gradnorm_score(grad_norms: np.ndarray) -> np.ndarray:
    """Gradient-norm attack: minus the per-row gradient norm (trained rows sit near a minimum: small gradients)."""
    return -np.asarray(grad_norms, dtype=np.float64)


def attack_scores(
    stats: Mapping[str, Sequence[np.ndarray]],
    answers: Sequence[str],
    k: float = DEFAULT_K,
    reference_nll: np.ndarray | None = None,
    grad_norms: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every attack's per-row scores from ``answer_token_stats`` output (rows concatenated over batches).

    ``reference`` is included when ``reference_nll`` (the reference model's mean answer NLL per row) is given,
    ``gradnorm`` when ``grad_norms`` is.
    """
    lp = stats["log_prob"]
    scores = {
        "loss": loss_score(lp),
        "zlib": zlib_score(lp, answers),
        "min_k": min_k_score(lp, k),
        "min_k_pp": min_k_pp_score(lp, stats["vocab_mean"], stats["vocab_std"], k),
    }
    if reference_nll is not None:
        scores["reference"] = reference_score(-scores["loss"], reference_nll)
    if grad_norms is not None:
        scores["gradnorm"] = gradnorm_score(grad_norms)
    return scores


def attack_aucs(
    member_scores: Mapping[str, np.ndarray], nonmember_scores: Mapping[str, np.ndarray], prefix: str = "mia_"
) -> dict[str, float]:
    """``{f"{prefix}{attack}_auc": ROC-AUC}`` for every attack scored on both sides (members = positives)."""
    missing = sorted(set(member_scores) ^ set(nonmember_scores))
    if missing:
        raise ValueError(f"Attacks {missing} were scored on only one side; score members and non-members alike.")
    return {f"{prefix}{name}_auc": roc_auc(member_scores[name], nonmember_scores[name]) for name in member_scores}
