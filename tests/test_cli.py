"""The `hf-unlearn` command: --help, demo argument checks, `run --config` on a tiny YAML, `eval`."""

import json
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hf_unlearn.cli import main
from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, benchmark_corpus, build_synthetic_benchmark

from conftest import CLI_BENCH as BENCH


@pytest.fixture(scope="module")
def model_dir(tiny_llava_dir):
    return tiny_llava_dir


def _yaml(path, text):
    path.write_text(text)
    return str(path)


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "hf_unlearn.cli", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0
    for command in ("demo", "run", "eval"):
        assert command in out.stdout


def test_subcommand_help(capsys):
    for command, flags in (("demo", ("--quick", "--methods", "--cache-dir")), ("run", ("--config",)),
                           ("eval", ("--model", "--benchmark", "mllmu:PATH"))):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags), command


def test_demo_lists_methods_and_rejects_unknown_ones(capsys):
    assert main(["demo", "--list-methods"]) == 0
    listing = capsys.readouterr().out
    for name in ("ga", "ga_diff", "kl_min", "npo", "mmunlearner", "vkd"):
        assert f"\n{name} " in "\n" + listing
    assert main(["demo", "--methods", "ga,bogus"]) == 2
    assert "unknown method(s) ['bogus']" in capsys.readouterr().err


def test_run_config_unlearns_saves_and_evaluates(model_dir, tmp_path, capsys):
    out = tmp_path / "run-ga"
    config = _yaml(tmp_path / "ga.yaml", f"""
method: ga_diff
model: {model_dir}
output_dir: {out}
seed: 0
max_steps: 2
learning_rate: 1.0e-2
data:
  forget: builtin:forget_vqa
  benchmark: {json.dumps(BENCH)}
eval: {{benchmark: builtin, batch_size: 8, attacks: jailbreak}}
""")
    assert main(["run", "--config", config]) == 0
    assert "ga_diff: unlearned in" in capsys.readouterr().out
    info = json.loads((out / "hf_unlearn_run.json").read_text())
    assert info["method"] == "ga_diff" and info["overrides"] == {"max_steps": 2, "learning_rate": 0.01}
    assert info["benchmark"]["num_people"] == 4
    assert set(info["metrics_after"]) >= {"forget_vqa_acc", "retain_qa_acc", "mia_auc", "jailbreak_max_acc"}
    # Each attack metric is its own entry of the card's model-index, before and after.
    names = {r.metric_name for r in ModelCard.load(out / "README.md").data.eval_results}
    assert {"jailbreak_max_acc (before unlearning)", "jailbreak_mean_acc (after unlearning)"} <= names
    before, after = load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights moved
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the staging folder is gone

    # `eval` reads the benchmark settings recorded next to the model and reproduces the run's numbers.
    result = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--output", str(result), "--batch-size", "8",
                 "--attacks", "jailbreak"]) == 0
    metrics = json.loads(result.read_text())["metrics"]
    assert metrics == pytest.approx(info["metrics_after"])
    assert "forget_vqa_acc" in capsys.readouterr().out


def test_run_config_errors_name_the_problem(model_dir, tmp_path, capsys):
    bad = _yaml(tmp_path / "bad.yaml", f"method: ga\nmodel: {model_dir}\noutput_dir: {tmp_path}/o\nepochs: 3\n")
    assert main(["run", "--config", bad]) == 2
    assert "unknown key 'epochs'" in capsys.readouterr().err
    unknown = _yaml(tmp_path / "m.yaml", f"method: sgd\nmodel: {model_dir}\noutput_dir: {tmp_path}/o\n")
    assert main(["run", "--config", unknown]) == 2
    assert "unknown 'sgd'. Registered methods" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    taken = _yaml(tmp_path / "t.yaml", f"method: ga\nmodel: {model_dir}\noutput_dir: {tmp_path}/full\n")
    assert main(["run", "--config", taken]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    missing = _yaml(tmp_path / "d.yaml", f"method: ga\nmodel: {model_dir}\noutput_dir: {tmp_path}/o\n"
                                          f"data:\n  forget: {tmp_path}/nothing-here.parquet\n")
    assert main(["run", "--config", missing]) == 2
    assert "nothing-here.parquet' does not exist" in capsys.readouterr().err


def test_run_config_reads_local_files(model_dir, tmp_path):
    bench = build_synthetic_benchmark(SyntheticBenchmarkConfig(**BENCH))
    bench["forget_qa"].to_parquet(str(tmp_path / "forget.parquet"))
    bench["retain_qa"].save_to_disk(str(tmp_path / "retain"))
    out = tmp_path / "run-npo"
    config = _yaml(tmp_path / "npo.yaml", f"""
method: npo
model: {model_dir}
output_dir: {out}
data:
  forget: {tmp_path}/forget.parquet
  retain: {tmp_path}/retain
max_steps: 1
""")
    assert main(["run", "--config", config]) == 0
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "hf_unlearn_run.json").read_text())["benchmark"] is None


def test_eval_reports_a_missing_model_directory(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope" / "model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-unlearn eval: error: --model:") and "does not exist" in err and err.count("\n") == 1


def test_eval_text_only_model_skips_image_splits(tmp_path, capsys):
    from hf_unlearn.testing import tiny_llama

    bench = build_synthetic_benchmark(SyntheticBenchmarkConfig(**BENCH))
    model, tok = tiny_llama(corpus=benchmark_corpus(bench))
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    # No settings are recorded next to this model: --benchmark builtin names it, --seed picks it (default size).
    assert main(["eval", "--model", str(tmp_path / "llama"), "--output", str(tmp_path / "e.json"), "--no-rouge",
                 "--benchmark", "builtin"]) == 0
    payload = json.loads((tmp_path / "e.json").read_text())
    assert set(payload["metrics"]) == {"forget_qa_acc", "retain_qa_acc", "mia_auc"}
    assert set(payload["skipped"]) == {"forget_vqa", "retain_vqa", "test_vqa", "general"}
    assert "note: skipped forget_vqa: has images but the processing class has no image processor" in \
        capsys.readouterr().err


def test_eval_rejects_unknown_benchmarks(model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--benchmark", "tofoo:x"]) == 2
    assert ("Unknown benchmark 'tofoo:x'; use one of builtin, mllmu:PATH, clear:PATH, tofu:PATH, muse:PATH, "
            "fiubench:PATH, umubench:PATH, safeeraser:PATH, covubench:PATH" in capsys.readouterr().err)
    assert main(["eval", "--model", str(model_dir), "--benchmark", f"mllmu:{tmp_path}/no-such-snapshot"]) == 2
    assert "error:" in capsys.readouterr().err
