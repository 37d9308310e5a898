"""The drop-in example: a Trainer script becomes an unlearning script by swapping the class."""

import importlib.util
from pathlib import Path

import pytest

from conftest import load_llava, mean_nll

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drop_in_trainer.py"


def load_example():
    spec = importlib.util.spec_from_file_location("drop_in_trainer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("trainer", ["GATrainer", "NPOTrainer"])
def test_swapping_the_trainer_class_unlearns(trainer, memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    before = mean_nll(model, processor, toy_data["forget"])
    result = load_example().main(trainer, memorised_llava, str(tmp_path / "run"), max_steps=8)
    after = mean_nll(result.model, processor, toy_data["forget"])
    retain_after = mean_nll(result.model, processor, toy_data["retain"])
    assert type(result).__name__ == trainer
    assert after > before + 0.5  # the forget answers got less likely
    assert retain_after < 1.0    # the retain term kept the rest
    reloaded, _ = load_llava(str(tmp_path / "run"))
    assert mean_nll(reloaded, processor, toy_data["forget"]) == pytest.approx(after, rel=1e-5)
