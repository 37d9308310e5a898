"""PDU: the forget term is the flatness of the logits that predict answer tokens; epsilon defaults to the starting
retain NLL; the retain weight follows the dual update; a retain set is required."""

import pytest
import torch

from hf_unlearn import PDUConfig, PDUTrainer

from conftest import perturbed_trainer


def test_pdu_forget_term_is_the_squared_gap_between_max_and_mean_logit(tmp_path):
    trainer, model, _, batch = perturbed_trainer(PDUTrainer, PDUConfig, tmp_path, forget_weight=1.0, retain_weight=0.0)
    forget = trainer.model_inputs(batch["forget"])
    with torch.no_grad():
        logits = model(**forget).logits
    gaps = []
    for b in range(logits.shape[0]):
        labels = forget["labels"][b].tolist()
        for t in range(len(labels) - 1):
            if labels[t + 1] != -100:  # the positions that predict answer tokens
                z = logits[b, t]
                gaps.append((z.max() - z.mean()).item() ** 2)
    loss, _ = trainer.forget_loss(model, batch["forget"])
    assert loss.item() == pytest.approx(sum(gaps) / len(gaps), rel=1e-5)


def test_pdu_threshold_is_the_starting_retain_nll_and_the_multiplier_follows_the_dual_update(tmp_path):
    trainer, model, _, batch = perturbed_trainer(PDUTrainer, PDUConfig, tmp_path, max_steps=3, learning_rate=5e-3,
                                                 logging_steps=1, dual_step_size=0.5)
    start = trainer.starting_retain_loss()
    trainer.train()
    assert trainer.precomputed.scalar("pdu.retain_epsilon") == pytest.approx(start)
    # lambda_k = max(0, lambda_{k-1} + eta * (L_r,k - epsilon)) from lambda_0 = retain_weight (1.0)
    logged = [h for h in trainer.state.log_history if "retain_nll" in h]
    expected = 1.0
    for h in logged:
        assert h["retain_multiplier"] == pytest.approx(expected, rel=1e-5)  # the weight this step used
        expected = max(0.0, expected + 0.5 * (h["retain_nll"] - start))
    assert trainer.precomputed.scalar("pdu.retain_multiplier") == pytest.approx(expected, rel=1e-4)


def test_pdu_needs_a_retain_set(tmp_path):
    from datasets import Dataset

    from hf_unlearn.testing import tiny_llama

    model, tok = tiny_llama()
    rows = Dataset.from_list([{"question": "Q?", "answer": "A."}] * 2)
    with pytest.raises(ValueError, match="needs `retain_dataset=`"):
        PDUTrainer(model, args=PDUConfig(output_dir=str(tmp_path), use_cpu=True), train_dataset=rows,
                   processing_class=tok)
