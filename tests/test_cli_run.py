"""`hf-unlearn run` the way `trl sft` works: flat training arguments in YAML, flags override, every key checked."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from hf_unlearn.cli import main
from hf_unlearn.saliency import SaliencyMask, SaliencyMaskConfig
from hf_unlearn.trainers.registry import METHODS

from conftest import CLI_BENCH as BENCH


@pytest.fixture(scope="module")
def model_dir(tiny_llava_dir):
    return tiny_llava_dir


def _write(path, text):
    path.write_text(text)
    return str(path)


def _base_yaml(method, model_dir, out, extra=""):
    return f"method: {method}\nmodel: {model_dir}\noutput_dir: {out}\ndata:\n  benchmark: {json.dumps(BENCH)}\n{extra}"


# ------------------------------------------------------------------------------------------------------------------
# Every registered method, with command-line overrides; logs and checkpoints stay in output_dir
# ------------------------------------------------------------------------------------------------------------------
# Every method runs from `hf-unlearn run` on its defaults in tests/test_method_contract.py; here the overrides, logs and
# checkpoints, on a plain method and a masked one.
@pytest.mark.parametrize("method", ["npo", "mmunlearner"])
def test_run_with_flag_overrides_keeps_logs_and_checkpoints(method, model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    config = _write(tmp_path / "run.yaml", _base_yaml(method, model_dir, out, """\
max_steps: 1              # the flags below override these two
learning_rate: 1.0e-3
logging_steps: 1
save_strategy: steps
save_steps: 2
"""))
    assert main(["run", "--config", config, "--learning_rate", "1e-5", "--max_steps", "3"]) == 0
    assert f"{method}: unlearned in" in capsys.readouterr().out

    info = json.loads((out / "hf_unlearn_run.json").read_text())
    assert info["overrides"] == {"learning_rate": 1e-5, "logging_steps": 1, "max_steps": 3, "save_steps": 2,
                                 "save_strategy": "steps"}
    # The record holds the values used: the flags, and the method's library defaults for the rest.
    assert info["args"]["learning_rate"] == 1e-5 and info["args"]["max_steps"] == 3 and info["global_step"] == 3
    assert all(info["args"][k] == v for k, v in METHODS[method].defaults.items())
    # Logs and checkpoints are in output_dir, not in a folder that was deleted.
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
    assert all("forget_loss" in h for h in state["log_history"] if "loss" in h)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and (out / "checkpoint-2" / "README.md").is_file()
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    assert (method == "mmunlearner") == (out / "saliency_mask" / "saliency_mask.safetensors").is_file()
    assert info["rows"]["forget"] == 10  # the built-in default forget split: the 1 forget person's 10 image questions


# ------------------------------------------------------------------------------------------------------------------
# Every problem: one `hf-unlearn run: error:` line, exit status 2, nothing written
# ------------------------------------------------------------------------------------------------------------------
ERROR_CASES = {
    # Misspelled keys under data: today's silent fallbacks to the built-in default.
    "data-forget-typo": ("data:\n  forgett: builtin:forget_qa\n", [], "data: unknown key 'forgett'. Did you mean "
                                                                         "'forget'?"),
    "data-retain-typo": ("data:\n  forget: builtin:forget_vqa\n  retian: builtin:retain_qa\n", [],
                         "data: unknown key 'retian'. Did you mean 'retain'?"),
    "data-entry-typo": ("data:\n  forget: {path: x, splitt: train}\n", [], "data.forget: unknown key 'splitt'. Did "
                                                                           "you mean 'split'?"),
    "benchmark-typo": ("data:\n  benchmark: {num_peple: 4}\n", [], "data.benchmark: unknown key 'num_peple'. Did "
                                                                   "you mean 'num_people'?"),
    "top-level-typo": ("learning_rat: 1.0e-3\n", [], "unknown key 'learning_rat'. Did you mean 'learning_rate'?"),
    "flag-typo": ("", ["--learning_rat", "1e-3"], "unrecognized argument '--learning_rat'. Did you mean "
                                                  "'learning_rate'?"),
    "method-typo": ("", ["--method", "npoo"], "method: unknown 'npoo'. Did you mean 'npo'?"),
    "mask-typo": ("mask: {treshold: 0.5}\n", [], "mask: unknown key 'treshold'. Did you mean 'threshold'?"),
    "eval-typo": ("eval: {batchsize: 8}\n", [], "eval: unknown key 'batchsize'. Did you mean 'batch_size'?"),
    "old-schema": ("training: {max_steps: 2}\n", [], "'training' is no longer a key: training arguments are flat"),
    # Values
    "max-steps-abc": ("max_steps: abc\n", [], "max_steps: argument --max_steps/--max-steps: invalid int value: "
                                             "'abc'"),
    "max-steps-flag": ("", ["--max_steps", "abc"], "argument --max_steps/--max-steps: invalid int value: 'abc'"),
    "bad-beta": ("beta: -1\n", [], "beta must be > 0"),
    "mask-value": ("mask: {score: random, threshold: abc}\n", [], "mask.threshold: 'abc' is not a valid float."),
    "mask-range": ("mask: {score: random, threshold: 2}\n", [], "mask: threshold=2 is the fraction"),
    "eval-benchmark": ("eval: {benchmark: tofu}\n", [], "eval.benchmark: 'tofu' is not one of builtin"),
    "base-model-path": ("base_model: /some/local/base\n", [], "base_model: '/some/local/base' is not a Hub id"),
    "license": ("license: My License\n", [], "license: license 'My License' is not a Hub license id"),
    # The file itself, and paths
    "malformed-yaml": ("data: [unclosed\n", [], "is not valid YAML: expected ',' or ']'"),
    "missing-relative-model": ("", ["--model", "./models/tiny"], "model: './models/tiny' does not exist (looked "
                                                                 "for the local path"),
    "missing-ref-model": ("ref_model: ./ref\n", [], "ref_model: './ref' does not exist"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_run_errors_are_one_line_exit_2_and_write_nothing(case, model_dir, tmp_path, capsys, monkeypatch):
    extra, argv, expected = ERROR_CASES[case]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    config = _write(tmp_path / "run.yaml", f"method: npo\nmodel: {model_dir}\noutput_dir: {out}\n{extra}")
    assert main(["run", "--config", config, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-unlearn run: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not out.exists()


def test_a_relative_model_path_under_an_existing_folder_is_a_missing_path(model_dir, tmp_path, capsys, monkeypatch):
    # `models/tiny` is also a valid Hub id; the folder `models/` exists here, so it can only mean a local path.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    config = _write(tmp_path / "run.yaml", f"method: ga\nmodel: models/tiny\noutput_dir: {tmp_path}/out\n")
    assert main(["run", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "model: 'models/tiny' does not exist (looked for the local path" in err and "Hub" not in err.split(";")[0]


def test_run_help_lists_the_methods_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--method", "npo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--config", "--learning_rate", "--beta", "--precompute_ref_log_probs",
                                         "--ref_model", "--base_model"))


# ------------------------------------------------------------------------------------------------------------------
# Every SaliencyMaskConfig knob is reachable from the file
# ------------------------------------------------------------------------------------------------------------------
MASK_KNOBS = {
    "target_modules": ["multi_modal_projector", "fc1"], "exclude_modules": ["linear_2"], "score": "fisher_ratio",
    "threshold": 0.5, "preserve_sets": {"vision": ["retain"], "projector": ["retain"]},
    "preserve_combine": "every", "epsilon": 1.0e-12, "seed": 3, "batch_size": 2, "max_batches": 1,
}


def test_every_mask_knob_is_reachable_from_the_config(model_dir, tmp_path):
    reserved = {"hf_unlearn_version", "mask_type"}  # filled in by the library
    knobs = {f.name for f in dataclasses.fields(SaliencyMaskConfig)} - reserved
    assert set(MASK_KNOBS) == knobs  # a new SaliencyMaskConfig field must be added here (and is reachable)
    defaults = SaliencyMaskConfig().to_dict()
    # Every value differs from its default (the score stays fisher_ratio: it is the one that uses the preserve knobs).
    assert all(MASK_KNOBS[k] != defaults[k] for k in knobs - {"score"})

    out = tmp_path / "run"
    config = _write(tmp_path / "run.yaml", _base_yaml("ga_diff", model_dir, out,
                                                      f"max_steps: 2\nmask: {json.dumps(MASK_KNOBS)}\n"))
    assert main(["run", "--config", config]) == 0
    info = json.loads((out / "hf_unlearn_run.json").read_text())
    saved = SaliencyMaskConfig.from_pretrained(out / "saliency_mask").to_dict()
    for key, value in MASK_KNOBS.items():
        assert info["mask"][key] == value and saved[key] == value, key
    mask = SaliencyMask.from_pretrained(out / "saliency_mask")
    expected = {"model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_1.bias",
                *(f"model.vision_tower.encoder.layers.{i}.mlp.fc1.{p}" for i in (0, 1) for p in ("weight", "bias"))}
    assert set(mask.masks) == expected  # target_modules and exclude_modules took effect
    # The mask (and freezing of what it does not cover) held: only covered, selected entries moved.
    before, after = load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    moved = {f"model.{k}" for k in before if not torch.equal(before[k], after[k])}  # the file has LLaVA's old names
    assert moved and moved <= expected
