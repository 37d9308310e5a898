"""WGA: its loss equals a hand computation and OpenUnlearning's formula; beta=0 is plain gradient ascent."""

import pytest
import torch
import torch.nn.functional as F

from hf_unlearn import WGAConfig, WGATrainer

from conftest import perturbed_trainer


@torch.no_grad()
def hand_wga(model, inputs, beta: float) -> float:
    """-mean over answer tokens of p^beta * NLL, with explicit loops (OpenUnlearning's compute_wga_loss, spelled out)."""
    logp = F.log_softmax(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits, -1)
    terms = []
    for b in range(logp.shape[0]):
        labels = inputs["labels"][b].tolist()
        for t in range(len(labels) - 1):
            if labels[t + 1] != -100:
                lp = logp[b, t, labels[t + 1]].item()
                terms.append(-(torch.tensor(lp).exp().item() ** beta) * -lp)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_wga_loss_equals_the_hand_computation(beta, tmp_path):
    trainer, model, _, batch = perturbed_trainer(WGATrainer, WGAConfig, tmp_path, beta=beta, retain_loss_type="none")
    assert trainer.compute_loss(model, batch).item() == pytest.approx(hand_wga(model, batch["forget"], beta),
                                                                     rel=1e-5)


def test_wga_at_beta_zero_is_gradient_ascent(tmp_path):
    trainer, model, _, batch = perturbed_trainer(WGATrainer, WGAConfig, tmp_path, beta=0.0, retain_loss_type="none")
    forget = trainer.model_inputs(batch["forget"])
    assert trainer.compute_loss(model, batch).item() == pytest.approx(-model(**forget).loss.item(), rel=1e-6)


def test_wga_refuses_a_negative_exponent(tmp_path):
    with pytest.raises(ValueError, match="beta"):
        WGAConfig(output_dir=str(tmp_path), beta=-1.0)
