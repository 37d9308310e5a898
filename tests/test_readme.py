"""The README's promises, executed: its code runs as written (push included) and its mask statement holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from hf_unlearn import GAConfig, GATrainer
from hf_unlearn.saliency import SaliencyMask, SaliencyMaskConfig, compute_saliency_mask
from hf_unlearn.testing.hub_server import local_hub

from conftest import load_llava, mean_nll

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_readme_keeps_exactly_two_setup_commands():
    setup = README.read_text(encoding="utf-8").split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 1 and len(commands[0].strip().splitlines()) == 2


def test_swap_one_class_snippet_runs_as_written_and_pushes(memorised_llava, toy_data, tmp_path, monkeypatch):
    swap, mask_snippet = _python_blocks("Swap one class")[0], _python_blocks("Methods")[0]
    model, processor = load_llava(memorised_llava)
    forget_before = mean_nll(model, processor, toy_data["forget"])
    retain = toy_data["retain"]
    names = {"model": model, "processor": processor, "forget_set": toy_data["forget"], "retain_set": retain,
             "retain_vqa": retain.select(range(4)), "text_qa": retain.select(range(4, len(retain)))}
    monkeypatch.chdir(tmp_path)  # output_dir="out" and mask.save_pretrained("my-mask") are relative
    with local_hub(tmp_path) as hub:
        exec(compile(swap, "README.md (Swap one class)", "exec"), names)  # noqa: S102 - the README's own code
        pushed = hub.files("your-name/llava-npo")
        exec(compile(mask_snippet, "README.md (Methods)", "exec"), names)  # noqa: S102
        pushed_mask = SaliencyMask.from_pretrained("me/my-mask")

    trainer = names["trainer"]
    assert type(trainer).__name__ == "NPOTrainer" and trainer.state.global_step == 50
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md"} <= set(pushed)
    assert pushed["model.safetensors"] == (tmp_path / "out" / "model.safetensors").read_bytes()
    assert "npo" in ModelCard(pushed["README.md"].decode()).data.tags
    assert mean_nll(trainer.model, processor, toy_data["forget"]) > forget_before  # it unlearned (a little: lr 1e-5)
    mask = names["mask"]
    assert list(pushed_mask) == list(mask) and all(torch.equal(pushed_mask[n], mask[n]) for n in mask)
    assert (tmp_path / "my-mask" / "saliency_mask.safetensors").is_file()


@pytest.mark.parametrize("scope", ["all", "forget"])
def test_mask_promise_per_mask_scope(scope, memorised_llava, toy_data, tmp_path):
    """README: uncovered parameters never move; held entries are bit-identical with mask_scope="all" only."""
    model, processor = load_llava(memorised_llava)
    config = SaliencyMaskConfig(target_modules="vision", score="random", threshold=0.3, seed=0)
    mask = compute_saliency_mask(model, config, None, None, None, show_progress=False)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = GAConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=3, learning_rate=1e-2,
                    weight_decay=0.1, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                    retain_loss_type="nll", mask_scope=scope)
    GATrainer(model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
              processing_class=processor, saliency_mask=mask).train()
    params = dict(model.named_parameters())
    held_moved = sum(int((params[n][~m] != start[n][~m]).sum()) for n, m in mask.masks.items())
    uncovered_moved = [n for n in params if n not in mask.masks and not torch.equal(params[n], start[n])]
    selected_moved = sum(int((params[n][m] != start[n][m]).sum()) for n, m in mask.masks.items())
    assert uncovered_moved == [] and selected_moved > 0
    if scope == "all":
        assert held_moved == 0
    else:
        assert held_moved > 0  # the retain gradient moves what the mask holds for the forget gradient
