"""`hf-unlearn run` / `eval` on a user's own VLM, data and LoRA (issue 28, items 2 and 3): trl.ModelConfig keys,
TRL-format rows with a holdout set, the card's model-index without an eval section, the run's own data evaluated by
default, TOFU through the CLI, QLoRA where bitsandbytes runs."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import PeftModel

from hf_unlearn.cli import main
from hf_unlearn.commands.eval import load_model_and_processor
from hf_unlearn.testing import tiny_llama, tiny_llava
from hf_unlearn.testing.toy import JOBS, NAMES


def prompt_completion(row):
    return {"images": [row["image"]] if row["image"] is not None else [],
            "prompt": [{"role": "user", "content": row["question"]}],
            "completion": [{"role": "assistant", "content": row["answer"]}]}


@pytest.fixture(scope="module")
def user_files(toy_data, tmp_path_factory):
    """A user's fine-tuned VLM (a local folder) and TRL prompt/completion rows with images, saved with
    `save_to_disk`: 2 forget people, retain rows of both kinds, 2 holdout people."""
    root = tmp_path_factory.mktemp("user")
    model, processor = tiny_llava(corpus=NAMES + JOBS)
    model.save_pretrained(root / "my-vlm")
    processor.save_pretrained(root / "my-vlm")
    rows = list(toy_data["all"])
    images = [r for r in rows if r["image"] is not None]
    texts = [r for r in rows if r["image"] is None]
    for name, subset in (("forget", images[:2]), ("retain", images[2:4] + texts[2:6]), ("holdout", images[4:6])):
        Dataset.from_list([prompt_completion(r) for r in subset]).save_to_disk(root / name)
    return root


LORA_YAML = """\
method: npo
model: {root}/my-vlm
output_dir: {out}
base_model: my-org/my-vlm        # the Hub id the adapter names when it is pushed
max_steps: 3
learning_rate: 1.0e-2
per_device_train_batch_size: 2
logging_steps: 1
save_strategy: "no"
disable_tqdm: true
# trl.ModelConfig's keys, as in `trl sft`
use_peft: true
lora_r: 4
lora_alpha: 8
lora_target_modules: [q_proj, v_proj]
torch_dtype: float32
attn_implementation: eager
data:
  forget: {root}/forget
  retain: {root}/retain
  holdout: {root}/holdout
"""


@pytest.fixture(scope="module")
def lora_run(user_files, tmp_path_factory):
    """One LoRA run on the user's VLM and TRL-format data, with a holdout set and no eval section."""
    out = tmp_path_factory.mktemp("runs") / "lora"
    config = tmp_path_factory.mktemp("cfg") / "run.yaml"
    config.write_text(LORA_YAML.format(root=user_files, out=out))
    assert main(["run", "--config", str(config)]) == 0
    return out


def test_lora_yaml_saves_an_adapter_whose_card_says_peft_and_it_reloads(lora_run, user_files):
    assert (lora_run / "adapter_config.json").is_file() and (lora_run / "adapter_model.safetensors").is_file()
    assert not (lora_run / "model.safetensors").exists()  # an adapter, not a merged copy of the base
    card = ModelCard.load(lora_run / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "my-org/my-vlm"
    info = json.loads((lora_run / "hf_unlearn_run.json").read_text())
    assert info["model_args"] == {"attn_implementation": "eager", "lora_alpha": 8, "lora_r": 4,
                                  "lora_target_modules": ["q_proj", "v_proj"], "torch_dtype": "float32",
                                  "use_peft": True}
    assert info["rows"] == {"forget": 2, "retain": 6, "holdout": 2}
    # The adapter reloads: by `hf-unlearn eval`'s loader (base from adapter_config.json, then the adapter) and by
    # PEFT directly, to the same model.
    model, processor = load_model_and_processor(str(lora_run))
    assert isinstance(model, PeftModel)
    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and sorted(adapter["target_modules"]) == ["q_proj",
                                                                                                      "v_proj"]
    base, _ = load_model_and_processor(str(user_files / "my-vlm"))
    direct = PeftModel.from_pretrained(base, str(lora_run)).eval()
    row = Dataset.load_from_disk(str(user_files / "forget"))[0]
    from hf_unlearn import UnlearnDataCollator

    batch = UnlearnDataCollator(processor)([row])
    batch.pop("labels")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, direct(**batch).logits)
        base_logits = load_model_and_processor(str(user_files / "my-vlm"))[0](**batch).logits
        assert not torch.equal(model(**batch).logits, base_logits)  # the adapter is applied: unlearning moved it


def test_a_run_without_eval_section_puts_forget_retain_holdout_before_after_in_the_model_index(lora_run):
    card = ModelCard.load(lora_run / "README.md")  # the Hub's own parser of model-index
    results = {(r.metric_name, r.metric_config): r.metric_value for r in card.data.eval_results}
    for name in ("forget_nll", "retain_nll", "holdout_nll", "mia_auc"):
        for stage, words in (("before", "before unlearning"), ("after", "after unlearning")):
            assert isinstance(results[(f"{name} ({words})", stage)], float), (name, stage)
    assert results[("forget_nll (after unlearning)", "after")] > results[("forget_nll (before unlearning)", "before")]
    info = json.loads((lora_run / "hf_unlearn_run.json").read_text())
    assert info["card_metrics"] == "probe" and info["metrics_after"] is None  # no eval section ran
    # Privacy: the card names no set, path or row (the run's folders are called forget / retain / holdout).
    assert str(lora_run.parent) not in card.text and "Who is" not in card.text


def test_eval_scores_the_runs_own_data_by_default_and_says_so(lora_run, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(lora_run), "--output", str(out), "--no-rouge"]) == 0
    err = capsys.readouterr().err
    assert ("evaluating the run's own data (recorded in hf_unlearn_run.json): forget (2 rows), retain (6 rows), "
            "holdout (2 rows)") in err
    payload = json.loads(out.read_text())
    assert payload["benchmark"] is None and payload["sets"] == {"forget": 2, "retain": 6, "holdout": 2}
    assert set(payload["metrics"]) == {"forget_nll", "retain_nll", "holdout_nll", "mia_auc"}
    # The same numbers as the run's own after-training probe (the same rows, the same model)
    info = ModelCard.load(lora_run / "README.md").data.eval_results
    after = {r.metric_name: r.metric_value for r in info if r.metric_config == "after"}
    assert payload["metrics"]["forget_nll"] == pytest.approx(after["forget_nll (after unlearning)"], rel=1e-5)


def test_eval_with_benchmark_builtin_says_what_it_scores(lora_run, tmp_path, capsys, monkeypatch):
    import hf_unlearn.commands.eval as eval_command
    from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark

    from conftest import CLI_BENCH

    # The default built-in benchmark takes minutes on this CPU; the line under test does not depend on its size.
    small = build_synthetic_benchmark(SyntheticBenchmarkConfig(**CLI_BENCH))
    monkeypatch.setattr(eval_command, "load_benchmark", lambda *a, **k: small)
    assert main(["eval", "--model", str(lora_run), "--benchmark", "builtin", "--output", str(tmp_path / "e.json"),
                 "--no-rouge", "--no-mia"]) == 0
    err = capsys.readouterr().err
    assert ("evaluating the built-in synthetic benchmark (--benchmark builtin); note: this model was not trained on "
            "it, so its forget-set numbers do not measure what it unlearned") in err
    assert json.loads((tmp_path / "e.json").read_text())["benchmark"] == "builtin"


def test_eval_section_with_your_own_rows_goes_into_the_card(user_files, tmp_path, capsys):
    """`eval: {holdout: ...}` replaces one set of the run's data; the Evaluator's numbers go into the model-index."""
    config = tmp_path / "run.yaml"
    text = LORA_YAML.format(root=user_files, out=tmp_path / "out").replace("max_steps: 3", "max_steps: 1")
    config.write_text(text + f"eval:\n  holdout: {user_files}/retain\n  rouge: false\n")
    assert main(["run", "--config", str(config)]) == 0
    assert "evaluated on your rows: forget (2 rows), retain (6 rows), holdout (6 rows)" in capsys.readouterr().out
    card = ModelCard.load(tmp_path / "out" / "README.md")
    names = {r.metric_name for r in card.data.eval_results}
    assert {"forget_nll (before unlearning)", "holdout_nll (after unlearning)", "mia_auc (after unlearning)"} <= names
    info = json.loads((tmp_path / "out" / "hf_unlearn_run.json").read_text())
    assert info["card_metrics"] == "eval" and set(info["metrics_after"]) == {"forget_nll", "retain_nll",
                                                                             "holdout_nll", "mia_auc"}


ERRORS = {
    "quantized-without-peft": ("load_in_4bit: true\n", "load_in_4bit: quantized weights cannot be trained; QLoRA "
                                                       "trains adapters on top of them. Add `use_peft: true`"),
    "lora-typo": ("use_peft: true\nlora_alpah: 8\n", "unknown key 'lora_alpah'. Did you mean 'lora_alpha'?"),
    "dtype-clash": ("dtype: bfloat16\ntorch_dtype: float16\n", "dtype 'bfloat16' and torch_dtype 'float16' disagree"),
    "benchmark-and-rows": ("eval: {benchmark: builtin, holdout: x}\n", "eval: `benchmark` and your own rows (holdout) "
                                                                       "are two different evaluations"),
    "eval-benchmark-typo": ("eval: {benchmark: tofoo:x}\n", "eval.benchmark: 'tofoo:x' is not one of builtin, "
                                                            "mllmu:PATH, clear:PATH, tofu:PATH, muse:PATH"),
    "eval-attack-typo": ("eval: {benchmark: builtin, attacks: 'probing,jailbrek'}\n",
                         "eval.attacks: Unknown attack 'jailbrek'. Did you mean 'jailbreak'?"),
    "attacks-on-rows": ("eval: {holdout: x, attacks: [probing]}\n", "eval.attacks: the attacks score a benchmark's "
                                                                     "multiple-choice splits"),
    "holdout-typo": ("data: {forget: f, holdot: h}\n", "data: unknown key 'holdot'. Did you mean 'holdout'?"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_model_and_eval_keys_are_checked_before_anything_loads(case, user_files, tmp_path, capsys):
    extra, expected = ERRORS[case]
    config = tmp_path / "run.yaml"
    config.write_text(f"method: npo\nmodel: {user_files}/my-vlm\noutput_dir: {tmp_path / 'out'}\n{extra}")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-unlearn run: error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_rows_without_an_answer_column_are_named(user_files, tmp_path, capsys):
    Dataset.from_list([{"text": "a"}, {"text": "b"}]).to_json(tmp_path / "rows.jsonl")
    config = tmp_path / "run.yaml"
    config.write_text(f"method: ga\nmodel: {user_files}/my-vlm\noutput_dir: {tmp_path / 'out'}\n"
                      f"data: {{forget: {tmp_path / 'rows.jsonl'}}}\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.forget: " in err and "has no answer column; columns found: ['text']. Rows need `question` and " \
        "`answer` (+ optional `image`), TRL's `prompt` and `completion`, or chat `messages`" in err


def test_qlora_from_the_command_line(toy_data, tmp_path, capsys):
    """load_in_4bit + use_peft: the base loads in 4 bits (bitsandbytes' CPU kernels here), adapters train."""
    pytest.importorskip("bitsandbytes")
    model, tok = tiny_llama(corpus=NAMES + JOBS)
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    texts = [{"prompt": [{"role": "user", "content": r["question"]}],
              "completion": [{"role": "assistant", "content": r["answer"]}]}
             for r in toy_data["all"] if r["image"] is None]
    Dataset.from_list(texts[:2]).to_json(tmp_path / "forget.jsonl")
    Dataset.from_list(texts[2:]).to_json(tmp_path / "retain.jsonl")
    config = tmp_path / "run.yaml"
    config.write_text(f"""method: ga_diff
model: {tmp_path / 'llama'}
output_dir: {tmp_path / 'out'}
max_steps: 2
learning_rate: 1.0e-2
save_strategy: "no"
disable_tqdm: true
use_peft: true
load_in_4bit: true
lora_r: 4
lora_target_modules: [q_proj, v_proj]
data: {{forget: {tmp_path / 'forget.jsonl'}, retain: {tmp_path / 'retain.jsonl'}}}
""")
    assert main(["run", "--config", str(config)]) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    lora_b = [t for n, t in load_file(tmp_path / "out" / "adapter_model.safetensors").items() if "lora_B" in n]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # initialised to 0: only training moved them
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    info = json.loads((tmp_path / "out" / "hf_unlearn_run.json").read_text())
    assert info["model_args"]["load_in_4bit"] is True


def test_tofu_benchmark_from_the_command_line(tmp_path, capsys):
    """`--benchmark tofu:PATH` scores TOFU's metrics on a local snapshot (offline)."""
    from test_text_loaders import build_tofu_snapshot

    root = build_tofu_snapshot(tmp_path / "tofu")
    model, tok = tiny_llama()
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    assert main(["eval", "--model", str(tmp_path / "llama"), "--benchmark", f"tofu:{root}", "--output",
                 str(tmp_path / "e.json"), "--no-rouge"]) == 0
    assert f"evaluating the tofu benchmark (tofu:{root})" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert {"forget_truth_ratio", "forget_prob", "model_utility"} <= set(metrics)
