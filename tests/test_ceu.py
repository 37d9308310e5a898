"""CE-U: its loss equals a hand computation (OpenUnlearning's formula), the first answer token is skipped, and its
gradient lowers the answer token's probability without being unbounded like gradient ascent."""

import pytest
import torch
import torch.nn.functional as F

from hf_unlearn import CEUConfig, CEUTrainer

from conftest import perturbed_trainer


@torch.no_grad()
def hand_ceu(model, inputs, skip: int) -> float:
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    terms = []
    for b in range(logits.shape[0]):
        labels = inputs["labels"][b].tolist()
        seen = 0
        for t in range(len(labels) - 1):
            if labels[t + 1] == -100:
                continue
            seen += 1
            if seen <= skip:
                continue
            z = logits[b, t].clone()
            target = z.clone()
            target[labels[t + 1]] = float("-inf")
            terms.append(-(F.softmax(target, -1) * F.log_softmax(z, -1)).sum().item())
    return sum(terms) / len(terms)


@pytest.mark.parametrize("skip", [0, 1, 2])
def test_ceu_loss_equals_the_hand_computation(skip, tmp_path):
    trainer, model, _, batch = perturbed_trainer(CEUTrainer, CEUConfig, tmp_path, skip_first_answer_tokens=skip,
                                                 retain_loss_type="none")
    assert trainer.compute_loss(model, batch).item() == pytest.approx(hand_ceu(model, batch["forget"], skip),
                                                                     rel=1e-5)


def test_ceu_step_lowers_the_answer_probability(tmp_path):
    trainer, model, _, batch = perturbed_trainer(CEUTrainer, CEUConfig, tmp_path, retain_loss_type="none")
    forget = trainer.model_inputs(batch["forget"])
    before = model(**forget).loss.item()
    trainer.compute_loss(model, batch).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad
    assert model(**forget).loss.item() > before
