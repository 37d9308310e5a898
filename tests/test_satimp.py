"""SatImp: its loss equals a hand computation of OpenUnlearning's formula; the defaults are its yaml's."""

import pytest
import torch
import torch.nn.functional as F

from hf_unlearn import SatImpConfig, SatImpTrainer

from conftest import perturbed_trainer


@torch.no_grad()
def hand_satimp(model, inputs, beta1: float, beta2: float) -> float:
    logp = F.log_softmax(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits, -1)
    terms = []
    for b in range(logp.shape[0]):
        labels = inputs["labels"][b].tolist()
        for t in range(len(labels) - 1):
            if labels[t + 1] != -100:
                lp = logp[b, t, labels[t + 1]].item()
                p = torch.tensor(lp).exp().item()
                terms.append(-(p ** beta1) * ((1 - p) ** beta2) * -lp)
    return sum(terms) / len(terms)


def test_satimp_loss_equals_the_hand_computation_and_uses_openunlearnings_defaults(tmp_path):
    trainer, model, _, batch = perturbed_trainer(SatImpTrainer, SatImpConfig, tmp_path, retain_loss_type="none")
    args = trainer.args
    assert (args.beta1, args.beta2, args.forget_weight) == (5.0, 1.0, 0.1)  # configs/trainer/SatImp.yaml
    expected = args.forget_weight * hand_satimp(model, batch["forget"], args.beta1, args.beta2)
    assert trainer.compute_loss(model, batch).item() == pytest.approx(expected, rel=1e-5)


def test_satimp_refuses_negative_exponents(tmp_path):
    with pytest.raises(ValueError, match="beta2"):
        SatImpConfig(output_dir=str(tmp_path), beta2=-0.5)
