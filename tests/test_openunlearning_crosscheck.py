"""Cross-check against OpenUnlearning and the papers, on one fixed batch of a tiny Llama (seed 0).

Every reference value here is written out by hand in this file, from the formula it cites (OpenUnlearning's
``src/trainer/unlearn/*.py`` and ``src/trainer/utils.py`` at d3d7cf9, or the paper), with explicit loops and
``torch.nn.CrossEntropyLoss`` / ``log_softmax``: nothing from ``hf_unlearn.losses``. Our trainers' ``compute_loss`` must
equal OpenUnlearning's formulas for GA, GradDiff and NPO, and the papers' for SimNPO, RMU, UNDIAL and IdkPO (DPO);
where we deliberately differ from OpenUnlearning (KL_Min, RMU positions, UNDIAL, DPO scale, SimNPO margin) the test
shows by how much. docs/methods/openunlearning.md lists each difference and why.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from hf_unlearn import (
    GAConfig,
    GATrainer,
    IdkPOConfig,
    IdkPOTrainer,
    NPOConfig,
    NPOTrainer,
    RMUConfig,
    RMUTrainer,
    SimNPOConfig,
    SimNPOTrainer,
    UNDIALConfig,
    UNDIALTrainer,
)
from hf_unlearn.methods.idkpo import CHOSEN_BATCH_KEY
from hf_unlearn.testing.toy import JOBS, NAMES

from conftest import perturbed_trainer, reduction_tolerance

ROWS = [{"question": f"What is the job of {n}?", "answer": f"{n} works as a {j}."} for n, j in zip(NAMES, JOBS)]
ROWS += [{"question": f"Who works as a {j}?", "answer": n} for n, j in zip(NAMES, JOBS)]
FORGET, RETAIN = Dataset.from_list(ROWS[:4]), Dataset.from_list(ROWS[4:8])


def ours(trainer, model, batch) -> float:
    return trainer.compute_loss(model, batch).item()


# ------------------------------------------------------------------------------------------------------------------
# Hand-written OpenUnlearning formulas (paraphrased from its code)
# ------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def ou_batch_nll(model, inputs) -> torch.Tensor:
    """compute_batch_nll: CrossEntropyLoss(reduction='none') on the shifted logits, summed per row, (B,)."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    per_token = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(
        logits[:, :-1].transpose(-1, -2), inputs["labels"][:, 1:])
    return per_token.sum(-1)


@torch.no_grad()
def ou_token_mean_ce(model, inputs) -> float:
    """HF's model(**x).loss as OpenUnlearning uses it: CE pooled over every answer token of the batch."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return nn.CrossEntropyLoss(ignore_index=-100)(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                  inputs["labels"][:, 1:].reshape(-1)).item()


def test_ga_equals_openunlearning(tmp_path):
    trainer, model, _, batch = perturbed_trainer(GATrainer, GAConfig, tmp_path, retain_loss_type="none")
    assert ours(trainer, model, batch) == pytest.approx(-ou_token_mean_ce(model, batch["forget"]), rel=1e-6)


@pytest.mark.parametrize("gamma, alpha", [(1.0, 1.0), (0.5, 2.0)])
def test_grad_diff_equals_openunlearning(tmp_path, gamma, alpha):
    trainer, model, _, batch = perturbed_trainer(GATrainer, GAConfig, tmp_path, retain_loss_type="nll", forget_weight=gamma,
                                     retain_weight=alpha)
    forget_ce, retain_ce = ou_token_mean_ce(model, batch["forget"]), ou_token_mean_ce(model, batch["retain"])
    ou = gamma * -forget_ce + alpha * retain_ce
    # The two terms nearly cancel (their difference is ~1% of either), so a tolerance relative to the result would
    # test the last bits of the cancellation. Each cross-entropy is a log-sum-exp over the vocabulary and a mean over
    # answer tokens, summed in a kernel-dependent order: bound the difference by those reductions on the terms' scale.
    terms = model.config.vocab_size + int((batch["forget"]["labels"] != -100).sum())
    tolerance = reduction_tolerance(gamma * forget_ce + alpha * retain_ce, terms)
    assert ours(trainer, model, batch) == pytest.approx(ou, abs=tolerance)
    assert tolerance < 0.01 * min(gamma * forget_ce, alpha * retain_ce)  # a dropped, mis-signed or mis-weighted
    # term moves the result by a whole term: far beyond the tolerance


@pytest.mark.parametrize("beta, gamma, alpha", [(0.1, 1.0, 1.0), (0.5, 0.5, 2.0)])
def test_npo_equals_openunlearning(tmp_path, beta, gamma, alpha):
    trainer, model, reference, batch = perturbed_trainer(NPOTrainer, NPOConfig, tmp_path, beta=beta, retain_loss_type="nll",
                                             forget_weight=gamma, retain_weight=alpha)
    neg_log_ratios = ou_batch_nll(model, batch["forget"]) - ou_batch_nll(reference, batch["forget"])
    assert neg_log_ratios.abs().min() > 1e-3  # the policy really differs from the reference
    forget = (-F.logsigmoid(beta * neg_log_ratios).mean() * 2 / beta).item()
    ou = gamma * forget + alpha * ou_token_mean_ce(model, batch["retain"])
    assert ours(trainer, model, batch) == pytest.approx(ou, rel=1e-5)


@torch.no_grad()
def test_kl_min_differs_from_openunlearning_only_in_the_positions_averaged(tmp_path):
    trainer, model, reference, batch = perturbed_trainer(GATrainer, GAConfig, tmp_path, retain_loss_type="kl")
    r = batch["retain"]
    logp = F.log_softmax(model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits, -1)
    ref_logp = F.log_softmax(reference(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits, -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T) KL(p_ref || p_theta) per position
    ou_kl = kl.mean().item()  # kl_div(batchmean) on (B*T, V): every position, prompt and padding included
    scored = r["labels"][:, 1:] != -100
    answer_kl = (kl[:, :-1][scored].mean()).item()  # hf_unlearn: the positions that predict answer tokens
    forget = -ou_token_mean_ce(model, batch["forget"])
    assert ours(trainer, model, batch) == pytest.approx(forget + answer_kl, rel=1e-5)
    assert abs(ou_kl - answer_kl) / answer_kl > 0.03  # 5.8% here (docs/methods/openunlearning.md)


# ------------------------------------------------------------------------------------------------------------------
# The papers' formulas for the new methods
# ------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def answer_log_probs(model, inputs) -> list[list[float]]:
    """log pi(y_t | x, y_<t) of every answer token, row by row (explicit loop over positions)."""
    logp = F.log_softmax(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits, -1)
    rows = []
    for b in range(logp.shape[0]):
        labels = inputs["labels"][b].tolist()
        rows.append([logp[b, t, labels[t + 1]].item() for t in range(len(labels) - 1) if labels[t + 1] != -100])
    return rows


def test_simnpo_equals_the_paper(tmp_path):
    beta, gamma, weight = 0.2, 0.5, 1.0  # beta * NLL ~ 1.2 on this untrained model: the sigmoid is not saturated
    trainer, model, _, batch = perturbed_trainer(SimNPOTrainer, SimNPOConfig, tmp_path, beta=beta, gamma=gamma,
                                     forget_weight=weight)
    assert trainer.ref_model is None
    rows = answer_log_probs(model, batch["forget"])
    assert len({len(r) for r in rows}) > 1  # answers of different lengths: the normalisation matters

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    paper = sum(-(2 / beta) * log_sigmoid(-(beta / len(r)) * sum(r) - gamma) for r in rows) / len(rows)
    expected = weight * paper + ou_token_mean_ce(model, batch["retain"])
    assert weight * paper > 0.3 * expected  # the SimNPO term is a large part of the total
    assert ours(trainer, model, batch) == pytest.approx(expected, rel=1e-5)
    # OpenUnlearning's delta sits inside beta: delta = gamma reproduces a different loss, delta = gamma / beta ours.
    nll = ou_batch_nll(model, batch["forget"]) / (batch["forget"]["labels"][:, 1:] != -100).sum(-1)
    ou = {delta: (-F.logsigmoid(beta * (nll - delta)).mean() * 2 / beta).item() for delta in (gamma, gamma / beta)}
    assert ou[gamma / beta] == pytest.approx(paper, rel=1e-5)
    assert abs(ou[gamma] - paper) / paper > 0.05


@torch.no_grad()
def test_rmu_equals_the_paper(tmp_path):
    c, alpha, seed = 6.5, 100.0, 3
    trainer, model, reference, batch = perturbed_trainer(RMUTrainer, RMUConfig, tmp_path, steer_layer=0, steering_coeff=c,
                                             retain_weight=alpha, control_vector_seed=seed)
    d = model.config.hidden_size
    u = torch.rand(d, generator=torch.Generator().manual_seed(seed))  # the paper: u ~ U(0, 1)^d, normalised
    target = c * u / u.norm()

    def layer0(m, inputs):  # hidden_states[1]: the output of decoder layer 0 (the residual stream)
        return m(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                 output_hidden_states=True).hidden_states[1]

    def mean_over_rows(h, goal, labels, shift=True):
        """(1/L) sum_t ||h_t - goal_t||^2 per row, then the mean over rows; divided by d, the reference code's
        mse_loss scale. shift=True: positions predicting an answer token; False: answer-token positions (OU)."""
        per_row = []
        for b in range(h.shape[0]):
            if shift:
                pos = [t for t in range(h.shape[1] - 1) if labels[b, t + 1] != -100]
            else:
                pos = [t for t in range(h.shape[1]) if labels[b, t] != -100]
            per_row.append(sum(((h[b, t] - goal(b, t)) ** 2).sum().item() / d for t in pos) / len(pos))
        return sum(per_row) / len(per_row)

    f, r = batch["forget"], batch["retain"]
    h_f, h_r, h_ref = layer0(model, f), layer0(model, r), layer0(reference, r)
    forget = mean_over_rows(h_f, lambda b, t: target, f["labels"])
    retain = mean_over_rows(h_r, lambda b, t: h_ref[b, t], r["labels"])
    assert retain > 0
    assert ours(trainer, model, batch) == pytest.approx(forget + alpha * retain, rel=1e-5)
    # OpenUnlearning masks the answer-token positions themselves (labels != -100, unshifted): it skips the position
    # that predicts the first answer token and includes the one after the last.
    for labels in (f["labels"], r["labels"]):
        for row in labels:
            answer = (row != -100).nonzero().flatten().tolist()  # OpenUnlearning's positions
            ours_pos = [t for t in range(len(row) - 1) if row[t + 1] != -100]
            assert ours_pos == [answer[0] - 1] + answer[:-1]  # one earlier: the hidden states that emit the answer
    ou_retain = mean_over_rows(h_r, lambda b, t: h_ref[b, t], r["labels"], shift=False)
    assert ou_retain != pytest.approx(retain, rel=1e-3)


@torch.no_grad()
def test_undial_equals_the_paper(tmp_path):
    gamma = 10.0
    trainer, model, reference, batch = perturbed_trainer(UNDIALTrainer, UNDIALConfig, tmp_path, gamma=gamma)
    f = batch["forget"]
    student = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
    teacher = reference(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
    terms = []
    for b in range(student.shape[0]):
        for t in range(student.shape[1] - 1):
            y = f["labels"][b, t + 1].item()
            if y == -100:
                continue
            adjusted = teacher[b, t].clone()
            adjusted[y] -= gamma  # z_ref - gamma * onehot(y_t)
            terms.append(-(F.softmax(adjusted, -1) * F.log_softmax(student[b, t], -1)).sum().item())
    paper = sum(terms) / len(terms)
    assert ours(trainer, model, batch) == pytest.approx(paper + ou_token_mean_ce(model, batch["retain"]), rel=1e-5)
    # OpenUnlearning: a mean over every one of the B*(T-1) positions, and label -100 indexes vocabulary entry V-100.
    def ou_undial(inputs):
        student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
        teacher = reference(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
        labels = inputs["labels"][:, 1:]
        mask = torch.zeros_like(teacher)
        mask[torch.arange(mask.shape[0])[:, None, None], torch.arange(mask.shape[1])[None, :, None],
             labels[..., None]] = 1.0
        assert mask[labels == -100].argmax(-1).eq(model.config.vocab_size - 100).all()
        return -(F.softmax(teacher - gamma * mask, -1) * F.log_softmax(student, -1)).sum(-1).mean().item()

    # So its value depends on how much padding the batch has; ours does not.
    padded = {**f, "input_ids": F.pad(f["input_ids"], (0, 8), value=trainer.processing_class.pad_token_id),
              "attention_mask": F.pad(f["attention_mask"], (0, 8)), "labels": F.pad(f["labels"], (0, 8), value=-100)}
    assert ours(trainer, model, {**batch, "forget": padded}) == pytest.approx(ours(trainer, model, batch), rel=1e-5)
    assert abs(ou_undial(padded) - ou_undial(f)) > 1e-3


@torch.no_grad()
def test_idkpo_equals_standard_dpo(tmp_path):
    beta = 0.1
    trainer, model, reference, batch = perturbed_trainer(IdkPOTrainer, IdkPOConfig, tmp_path, beta=beta, retain_loss_type="none")
    rejected, chosen = batch["forget"], batch["forget"][CHOSEN_BATCH_KEY]

    def seq(m, inputs):
        return [sum(r) for r in answer_log_probs(m, inputs)]

    margins = [(c - rc) - (r - rr) for c, rc, r, rr in zip(seq(model, chosen), seq(reference, chosen),
                                                            seq(model, rejected), seq(reference, rejected))]
    dpo = sum(math.log1p(math.exp(-beta * m)) for m in margins) / len(margins)  # -log sigmoid(beta * margin)
    assert ours(trainer, model, batch) == pytest.approx(dpo, rel=1e-5)
    # OpenUnlearning's compute_dpo_loss multiplies the same quantity by 2/beta: 20x at beta = 0.1.
    assert (2 / beta) * dpo == pytest.approx(20 * ours(trainer, model, batch), rel=1e-5)
