"""After a bf16 run the model's forward must be the one it had before (issue 16 item 2).

accelerate wraps ``model.forward`` in an autocast context for mixed precision and never unwraps it, so evaluation
after ``train()`` silently ran in bf16 and before/after numbers were not comparable.
"""

import torch

from hf_unlearn import GAConfig, GATrainer

from conftest import load_llava, mean_nll


def test_bf16_training_at_lr_zero_leaves_fp32_losses_identical(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    before = {"forget": mean_nll(model, processor, toy_data["forget"]),
              "retain": mean_nll(model, processor, toy_data["retain"])}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = GAConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=2, bf16=True,
                    use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, retain_loss_type="nll")
    # The config refuses learning_rate=0 (a run that cannot move is no unlearning run); an optimizer of our own at
    # lr 0 still trains the steps without moving a weight.
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = GATrainer(model=model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                        processing_class=processor, optimizers=(frozen, None))
    trainer.train()
    assert all(torch.equal(p.detach(), weights[n]) for n, p in model.named_parameters())  # nothing could move
    after = {"forget": mean_nll(model, processor, toy_data["forget"]),
             "retain": mean_nll(model, processor, toy_data["retain"])}
    assert after == before  # bit-identical fp32 losses, not bf16 ones
    assert "forward" not in model.__dict__ and "_original_forward" not in model.__dict__  # the class method again
