"""The multi-GPU recipes (examples/accelerate/*.sh) run in tiny mode: 2 CPU processes, tiny LLaVA, 2 steps.

Each recipe is the command a GPU node runs (``accelerate launch --config_file examples/accelerate/<launcher>.yaml
examples/deepspeed/unlearn_llava.py ...``) with ``--tiny``: the script builds the tiny model, computes the saliency
mask in-process and runs on CPU. Checked: 2 processes under the launcher the config names, the saved model reloads,
the language model (outside the vision mask, frozen) is bit-identical and the vision side moved.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "deepspeed" / "unlearn_llava.py"
WRAPPER = {"ddp": "DistributedDataParallel", "fsdp2": "FSDPLlavaForConditionalGeneration",
           "zero2": "DeepSpeedEngine", "zero3": "DeepSpeedEngine"}


def _example():
    if "unlearn_llava" not in sys.modules:
        spec = importlib.util.spec_from_file_location("unlearn_llava", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["unlearn_llava"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["unlearn_llava"]



@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(WRAPPER))
def test_recipe_runs_in_tiny_mode(launcher, tmp_path):
    if launcher.startswith("zero"):
        pytest.importorskip("deepspeed")
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "run"
    env = {**os.environ, "OUT": str(out), "PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "accelerate" / f"{launcher}.sh"), "--tiny"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    summary = re.search(r"launcher: (\w+), world size (\d+), steps (\d+)", log)
    assert summary, log[-3000:]
    assert summary.groups() == (WRAPPER[launcher], "2", "2")

    trained = AutoModelForImageTextToText.from_pretrained(out / "final")
    start, _ = _example().tiny_model()
    before = dict(start.named_parameters())
    language = [n for n in before if n.startswith(("model.language_model.", "lm_head."))]
    assert language and all(torch.equal(p, before[n]) for n, p in trained.named_parameters() if n in language)
    moved = [n for n, p in trained.named_parameters() if n not in language and not torch.equal(p, before[n])]
    assert moved  # the masked vision tower / projector learned
    assert (out / "final" / "saliency_mask" / "saliency_mask.safetensors").is_file()


def test_datasets_replace_the_default_benchmark():
    """``--forget_dataset`` / ``--retain_dataset`` used to be ignored unless ``--benchmark ""`` was passed."""
    example = _example()
    given = example.ScriptArguments(forget_dataset="forget", retain_dataset="retain")
    assert given.benchmark is None
    assert example.ScriptArguments().benchmark == example.DEFAULT_BENCHMARK
    with pytest.raises(ValueError, match="not both"):
        example.ScriptArguments(benchmark="MLLMMU/MLLMU-Bench", forget_dataset="f", retain_dataset="r")
    with pytest.raises(ValueError, match="both --forget_dataset and --retain_dataset"):
        example.ScriptArguments(forget_dataset="f")
    with pytest.raises(ValueError, match="--tiny uses the built-in synthetic benchmark"):
        example.ScriptArguments(tiny=True, benchmark="MLLMMU/MLLMU-Bench")


def test_tiny_mask_phase_writes_a_mask(tmp_path):
    """Phase 1 of the recipe (``--compute_mask``) in tiny mode: one process, a saved SaliencyMask over vision."""
    from hf_unlearn.saliency.mask import SaliencyMask

    example = _example()
    example.compute_mask(example.ScriptArguments(tiny=True, mask_path=str(tmp_path / "mask"), mask_max_batches=1))
    mask = SaliencyMask.from_pretrained(str(tmp_path / "mask"))
    assert mask.num_covered > 0
    assert all(".vision_tower." in n or ".multi_modal_projector." in n for n in mask.names())
