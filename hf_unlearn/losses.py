"""Unlearning losses as pure tensor functions.

Conventions: ``logits`` are (B, T, V) next-token logits as returned by a causal LM (position t predicts token t+1),
``labels`` (B, T) hold ``-100`` where no loss is taken. Sequence log-probabilities are *summed* over answer tokens
(NPO as in the paper and OpenUnlearning); ``token_mean_nll`` is the usual token-averaged cross-entropy (HF ``.loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl.trainer.utils import selective_log_softmax

IGNORE_INDEX = -100


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1."""
    return logits[:, :-1, :], labels[:, 1:]  # (B, T-1, V), (B, T-1)


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) and the mask of scored positions, both (B, T-1)."""
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    logps = selective_log_softmax(logits.float(), labels.masked_fill(~mask, 0))
    return logps * mask, mask


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probability per sequence and the number of answer tokens, both (B,)."""
    logps, mask = token_log_probs(logits, labels)
    return logps.sum(-1), mask.sum(-1)


def token_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over all answer tokens of the batch (equals ``model(...).loss``)."""
    logps, mask = token_log_probs(logits, labels)
    return -logps.sum() / mask.sum().clamp(min=1)


def gradient_ascent_loss(forget_nll: torch.Tensor) -> torch.Tensor:
    """GA: minimise the negative forget NLL, i.e. push the forget answers' likelihood down (unbounded)."""
    return -forget_nll


def unlikelihood_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unlikelihood (Welleck et al. 2020) on the answer tokens: mean over them of -log(1 - p(y_t)).

    Where gradient ascent's gradient on a token's logit is 1 - p (it vanishes on answers the model is sure of, the
    memorised forget set), this one's is p: largest at the start, and falling to 0 as the answer becomes unlikely, so
    it is bounded below by 0 and stops by itself. ``log(1 - p)`` is computed as logsumexp over the other tokens
    minus logsumexp over all, exact even where p rounds to 1.
    """
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    z = logits[mask].float()  # (N, V): answer positions only
    y = labels[mask]
    log_all = torch.logsumexp(z, dim=-1)
    log_others = torch.logsumexp(z.scatter(-1, y[:, None], float("-inf")), dim=-1)
    return -(log_others - log_all).sum() / mask.sum().clamp(min=1)


def npo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al. 2024), averaged over the batch.

    L = -(2/beta) * mean log sigmoid(-beta * (log pi(y|x) - log pi_ref(y|x))). Bounded below by 0 and approaching
    0 as the policy's likelihood of the forget answers falls below the reference's, so it cannot diverge like GA.
    """
    if beta <= 0:
        raise ValueError(f"NPO beta must be > 0, got {beta}.")
    log_ratio = policy_logps - ref_logps  # (B,)
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-level KL(p_ref || p_theta) over the full vocabulary, averaged over the scored positions."""
    logits, labels = shift_for_next_token(logits, labels)
    ref_logits = ref_logits[:, :-1, :]
    mask = labels != IGNORE_INDEX  # (B, T-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-row distance between feature tensors of shape (N, D) (or (B, N, D), flattened to rows).

    ``mse``: mean squared error over D; ``cosine``: 1 - cosine similarity; ``smooth_l1``: Huber with beta 1.
    Returns (N,) distances, so callers can average them or apply a margin per token.
    """
    s = student.reshape(-1, student.shape[-1]).float()
    t = teacher.reshape(-1, teacher.shape[-1]).float()
    if kind == "mse":
        return (s - t).pow(2).mean(-1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=-1)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(s, t, reduction="none").mean(-1)
    raise ValueError(f"Unknown feature distance {kind!r}; use 'mse', 'cosine' or 'smooth_l1'.")


def hinge_push_away(distances: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of max(0, margin - d): zero once every feature is at least ``margin`` away (bounded, unlike ascent)."""
    return F.relu(margin - distances).mean()


# ------------------------------------------------------------------------------------------------------------------
# SimNPO, RMU, IdkPO (DPO) and UNDIAL (docs/methods/); each mirrors one formula of its paper.
# ------------------------------------------------------------------------------------------------------------------
def simnpo_loss(policy_logps: torch.Tensor, num_tokens: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): -(2/beta) mean log sigmoid(-(beta/|y|) log pi(y|x) - gamma), no reference model.

    ``policy_logps`` are summed answer log-probs (B,), ``num_tokens`` the answer lengths |y| (B,). The margin
    ``gamma`` is subtracted after scaling by beta, as in the paper (OpenUnlearning's ``delta`` = gamma / beta).
    """
    if beta <= 0:
        raise ValueError(f"SimNPO beta must be > 0, got {beta}.")
    mean_logp = policy_logps / num_tokens.clamp(min=1).to(policy_logps)  # (B,) average log-prob per answer token
    return -(2.0 / beta) * F.logsigmoid(-beta * mean_logp - gamma).mean()


def dpo_loss(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor, beta: float,
) -> torch.Tensor:
    """Standard DPO (Rafailov et al. 2023), batch mean: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)).

    TRL's DPOTrainer computes the same ``loss_type="sigmoid"`` term inside its ``_compute_loss`` (it needs a trainer
    instance), hence this one-line pure version. No 2/beta factor (OpenUnlearning keeps one).
    """
    if beta <= 0:
        raise ValueError(f"DPO beta must be > 0, got {beta}.")
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)  # (B,)
    return -F.logsigmoid(beta * margin).mean()


def masked_activation_mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU's distance: per position the mean over the hidden size of (h - target)^2, averaged over each row's masked
    positions, then over the rows that have any (rows with none are left out).

    ``activations`` (B, T, D); ``target`` broadcastable to it ((D,) for RMU's c*u); ``mask`` (B, T) bool.
    """
    per_position = (activations.float() - target.float()).pow(2).mean(-1)  # (B, T)
    mask = mask.to(per_position.dtype)
    counts = mask.sum(-1)  # (B,)
    per_row = (per_position * mask).sum(-1) / counts.clamp(min=1)
    has_tokens = counts > 0
    if not has_tokens.any():
        return per_position.sum() * 0.0  # keeps the graph; nothing to steer in this batch
    return per_row[has_tokens].mean()


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """UNDIAL (Dong et al. 2024): cross-entropy of the student toward softmax(z_ref - gamma * onehot(y_t)).

    Averaged over the answer tokens of the batch (positions whose label is not -100, after the next-token shift).
    Logits are upcast to fp32; only the scored positions are materialised.
    """
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX  # (B, T-1)
    if not mask.any():
        return logits.sum() * 0.0
    student = logits[mask].float()  # (N, V)
    teacher = ref_logits[:, :-1, :][mask].float()  # (N, V)
    targets = labels[mask]  # (N,)
    adjusted = teacher.scatter_add(-1, targets[:, None], torch.full_like(targets[:, None], -gamma, dtype=teacher.dtype))
    soft_labels = F.softmax(adjusted, dim=-1)
    return -(soft_labels * F.log_softmax(student, dim=-1)).sum(-1).mean()


def random_feature_target(dim: int, rms: float, seed: int = 0) -> torch.Tensor:
    """A fixed random feature vector (D,) with root-mean-square entry ``rms`` (RMU, Li et al. 2024, arXiv 2403.03218).

    As in RMU the direction has independent entries drawn uniformly from [0, 1), then normalised; seeded, so every
    process and a resumed run draw the same target.
    """
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return u / u.norm() * (rms * dim ** 0.5)


def weighted_gradient_ascent_loss(logits: torch.Tensor, labels: torch.Tensor, beta1: float,
                                  beta2: float = 0.0) -> torch.Tensor:
    """-mean over answer tokens of w_t * NLL_t, with w_t = p_t^beta1 * (1 - p_t)^beta2 and p_t = p(y_t) detached.

    ``beta2=0`` is WGA (Wang et al. 2025, arXiv 2502.19301: tokens the model is sure of weigh most, so ascent stops
    pushing once a token is forgotten); ``beta2 > 0`` is SatImp (Yang et al. 2025, arXiv 2505.11953: the weight also
    vanishes at p = 1, where a token carries no information to unlearn).
    """
    logps, mask = token_log_probs(logits, labels)  # (B, T-1)
    p = logps.detach().exp()
    weights = p.pow(beta1) * (1 - p).pow(beta2) if beta2 else p.pow(beta1)
    return (weights * logps)[mask].mean()  # -mean(w * NLL) = mean(w * log p)


def cross_entropy_unlearning_loss(logits: torch.Tensor, labels: torch.Tensor, skip_first: int = 1) -> torch.Tensor:
    """CE-U (Yang et al. 2025, arXiv 2503.01224): cross-entropy of the model's next-token distribution against its own
    detached distribution with the answer token's logit set to -inf, averaged over answer positions; the first
    ``skip_first`` answer tokens of each row are skipped (the paper's footnote: they carry the question's topic)."""
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    if skip_first:
        mask = mask & (mask.cumsum(dim=-1) > skip_first)
    scored_logits = logits[mask].float()  # (N, V)
    target = scored_logits.detach().scatter(-1, labels[mask].unsqueeze(-1), float("-inf")).softmax(-1)
    return F.cross_entropy(scored_logits, target)


def logit_flatness_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PDU's forget term (Entesari et al. 2025, arXiv 2502.17823): mean over the positions that predict answer tokens
    of (max_v z - mean_v z)^2: zero when the next-token logits are flat (no token preferred)."""
    logits, labels = shift_for_next_token(logits, labels)
    scored = logits[labels != IGNORE_INDEX].float()  # (N, V)
    return (scored.max(-1).values - scored.mean(-1)).pow(2).mean()
