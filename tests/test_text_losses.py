"""SimNPO, DPO, RMU and UNDIAL losses against hand computation (Python floats, explicit loops)."""

import math

import pytest
import torch

from hf_unlearn import IdkPOConfig, RMUConfig, SimNPOConfig, UNDIALConfig, losses
from hf_unlearn.data.refusals import REFUSALS, refusal_for


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_simnpo_loss_equals_the_paper_formula():
    logps = torch.tensor([-3.0, -10.0, -0.5])  # summed answer log-probs
    counts = torch.tensor([3, 5, 1])
    beta, gamma = 2.5, 0.7
    got = losses.simnpo_loss(logps, counts, beta, gamma).item()
    hand = sum(-(2 / beta) * _log_sigmoid(-(beta / n) * lp - gamma) for lp, n in zip(logps.tolist(),
                                                                                      counts.tolist())) / 3
    assert got == pytest.approx(hand, rel=1e-6)
    # OpenUnlearning puts its margin inside beta: delta_OU = gamma / beta gives the same value.
    ou = sum(-(2 / beta) * _log_sigmoid(beta * (-lp / n - gamma / beta)) for lp, n in zip(logps.tolist(),
                                                                                        counts.tolist())) / 3
    assert got == pytest.approx(ou, rel=1e-6)
    # Bounded and decreasing as the forget answers become less likely.
    assert losses.simnpo_loss(logps - 100, counts, beta).item() < losses.simnpo_loss(logps, counts, beta).item()
    assert losses.simnpo_loss(logps - 1e4, counts, beta).item() == pytest.approx(0.0, abs=1e-6)


def test_dpo_loss_equals_the_standard_formula_without_two_over_beta():
    chosen, rejected = torch.tensor([-5.0, -8.0]), torch.tensor([-2.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-6.0, -7.5]), torch.tensor([-2.5, -1.0])
    beta = 0.1
    got = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta).item()
    hand = sum(-_log_sigmoid(beta * ((c - rc) - (r - rr))) for c, r, rc, rr in zip(
        chosen.tolist(), rejected.tolist(), ref_chosen.tolist(), ref_rejected.tolist())) / 2
    assert got == pytest.approx(hand, rel=1e-6)
    # Policy == reference: log 2, whatever beta (OpenUnlearning's 2/beta factor would give 20 * log 2 at 0.1).
    assert losses.dpo_loss(chosen, rejected, chosen, rejected, beta).item() == pytest.approx(math.log(2), rel=1e-6)


def test_masked_activation_mse_is_per_row_mean_of_squared_distance_over_d():
    torch.manual_seed(0)
    h, target = torch.randn(3, 4, 5), torch.randn(5)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # row 2: no answer position
    got = losses.masked_activation_mse(h, target, mask).item()
    per_row = []
    for b in range(2):
        pos = [t for t in range(4) if mask[b, t]]
        per_row.append(sum(sum((h[b, t, k].item() - target[k].item()) ** 2 for k in range(5)) / 5
                           for t in pos) / len(pos))
    assert got == pytest.approx(sum(per_row) / 2, rel=1e-5)
    empty = losses.masked_activation_mse(h.requires_grad_(), target, torch.zeros(3, 4, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


def test_undial_loss_equals_cross_entropy_to_adjusted_teacher_on_answer_tokens_only():
    torch.manual_seed(0)
    B, T, V, gamma = 2, 5, 7, 3.0
    logits, ref = torch.randn(B, T, V), torch.randn(B, T, V)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 2, 6, -100, -100]])  # -100: prompt and padding
    got = losses.undial_loss(logits, ref, labels, gamma).item()
    terms = []
    for b in range(B):
        for t in range(T - 1):
            y = labels[b, t + 1].item()
            if y == -100:
                continue
            z = ref[b, t].tolist()
            z[y] -= gamma
            target = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
            logp = torch.log_softmax(logits[b, t], -1).tolist()
            terms.append(-sum(p * lp for p, lp in zip(target, logp)))
    assert len(terms) == 4 and got == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # Positions that predict no answer token do not matter (OpenUnlearning averages over all of them).
    noisy = logits.clone()
    noisy[0, 0] += 50.0
    noisy[1, 4] -= 50.0
    assert losses.undial_loss(noisy, ref, labels, gamma).item() == pytest.approx(got, rel=1e-6)
    # gamma = 0 is plain distillation: minimal (the teacher's entropy) when the student equals the teacher.
    assert losses.undial_loss(ref, ref, labels, 0.0).item() < losses.undial_loss(logits, ref, labels, 0.0).item()


def test_refusals_are_seeded_per_row_and_cover_the_list():
    picks = [refusal_for(i, seed=3) for i in range(200)]
    assert picks == [refusal_for(i, seed=3) for i in range(200)]  # pure function of (index, seed)
    assert picks != [refusal_for(i, seed=4) for i in range(200)]
    assert set(picks) == set(REFUSALS)
    assert refusal_for(5, 0, ["only one"]) == "only one"


@pytest.mark.parametrize("cls, kwargs, match", [
    (SimNPOConfig, {"beta": 0}, "beta must be > 0"),
    (SimNPOConfig, {"gamma": -1}, "gamma must be >= 0"),
    (RMUConfig, {"steering_coeff": 0}, "steering_coeff must be > 0"),
    (RMUConfig, {"retain_loss_type": "kl"}, "does not support retain_loss_type='kl'"),
    (RMUConfig, {"trainable_layers": []}, "trainable_layers is empty"),
    (RMUConfig, {"stop_forget_loss_above": 5.0}, "stop_forget_loss_above"),
    (IdkPOConfig, {"beta": -1}, "beta must be > 0"),
    (IdkPOConfig, {"refusals": [""]}, "non-empty list"),
    (IdkPOConfig, {"refusals": ["no"], "refusal_column": "idk"}, "not both"),
    (UNDIALConfig, {"gamma": -0.1}, "gamma must be >= 0"),
])
def test_config_validation(tmp_path, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(output_dir=str(tmp_path), **kwargs)


def test_configs_parse_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (rmu,) = HfArgumentParser(RMUConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--steer_layer", "3", "--trainable_layers", "1", "2", "3"])
    assert rmu.steer_layer == 3 and rmu.trainable_layers == [1, 2, 3] and rmu.retain_weight == 1200.0
    (idk,) = HfArgumentParser(IdkPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--refusals", "No idea.", "Can't say."])
    assert idk.refusals == ["No idea.", "Can't say."]
    simnpo = SimNPOConfig(output_dir=str(tmp_path))
    assert (simnpo.beta, simnpo.gamma, simnpo.forget_weight) == (4.5, 0.0, 0.125)
