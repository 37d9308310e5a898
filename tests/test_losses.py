"""Loss functions against hand computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_unlearn import losses


def test_sequence_log_probs_matches_manual_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100]])
    seq, n = losses.sequence_log_probs(logits, labels)
    logp = logits.log_softmax(-1)
    # position t predicts label t+1
    expected0 = logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 1]
    expected1 = logp[1, 0, 2] + logp[1, 1, 2]
    assert torch.allclose(seq, torch.stack([expected0, expected1]), atol=1e-6)
    assert n.tolist() == [3, 2]


def test_token_mean_nll_equals_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :2] = -100
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert losses.token_mean_nll(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_ascent_is_negated_nll():
    assert losses.gradient_ascent_loss(torch.tensor(2.5)).item() == -2.5


def test_npo_loss_hand_computed():
    policy = torch.tensor([-3.0, -1.0])
    ref = torch.tensor([-2.0, -2.0])
    beta = 0.5
    # -(2/beta) * mean(log sigmoid(-beta * (policy - ref)))
    hand = -(2 / beta) * ((math.log(1 / (1 + math.exp(-0.5))) + math.log(1 / (1 + math.exp(0.5)))) / 2)
    assert losses.npo_loss(policy, ref, beta).item() == pytest.approx(hand, rel=1e-6)
    # At policy == reference the loss is (2/beta) * log 2.
    assert losses.npo_loss(ref, ref, beta).item() == pytest.approx(4 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="beta"):
        losses.npo_loss(policy, ref, 0.0)


def test_kl_to_reference_zero_for_same_logits_and_positive_otherwise():
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 0, 1]])
    assert losses.kl_to_reference(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 4, 5)
    p_ref = other[:, :-1].softmax(-1)
    kl = (p_ref * (p_ref.log() - logits[:, :-1].log_softmax(-1))).sum(-1)
    mask = labels[:, 1:] != -100
    expected = (kl * mask).sum() / mask.sum()
    assert losses.kl_to_reference(logits, other, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_feature_distances_and_hinge():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert losses.feature_distance(a, b, "mse").tolist() == [0.5, 0.0]
    assert losses.feature_distance(a, a, "cosine").abs().max().item() < 1e-6
    assert losses.feature_distance(a, b, "smooth_l1").tolist() == [0.25, 0.0]
    assert losses.hinge_push_away(torch.tensor([0.5, 2.0]), margin=1.0).item() == 0.25
    with pytest.raises(ValueError, match="mse"):
        losses.feature_distance(a, b, "l3")
