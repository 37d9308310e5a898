"""Hub ids wherever a model, reference, mask or dataset is named, and what a pushed card declares (model-index,
license, base_model), end to end against the local Hub with the real client."""

from __future__ import annotations

import json
import os

import pytest
import torch
from datasets import Dataset
from huggingface_hub import EvalResult, HfApi, ModelCard
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from hf_unlearn import GAConfig, GATrainer
from hf_unlearn.cli import main
from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, benchmark_corpus, build_synthetic_benchmark
from hf_unlearn.hub.card import EVAL_DATASET_NAME, EVAL_DATASET_TYPE, EVAL_TASK_NAME
from hf_unlearn.saliency import SaliencyMask, SaliencyMaskConfig, compute_saliency_mask
from hf_unlearn.testing import tiny_llama, tiny_llava
from hf_unlearn.testing.hub_server import local_hub

from conftest import JOBS, NAMES

BENCH = dict(num_people=4, num_holdout_people=2, forget_ratio=0.25, num_general=4)
BASE_CARD = "---\nlicense: apache-2.0\ntags: [tiny]\n---\n# A tiny base model\n"


@pytest.fixture(scope="module")
def bench():
    return build_synthetic_benchmark(SyntheticBenchmarkConfig(**BENCH))


@pytest.fixture(scope="module")
def llava_dir(bench, tmp_path_factory):
    model, processor = tiny_llava(corpus=benchmark_corpus(bench))
    path = tmp_path_factory.mktemp("base") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _push_model(folder, repo_id, card: str | None = None):
    model = AutoModelForImageTextToText.from_pretrained(folder)
    model.push_to_hub(repo_id)
    AutoProcessor.from_pretrained(folder).push_to_hub(repo_id)
    if card is not None:
        ModelCard(card).push_to_hub(repo_id)


def _push_parquet(dataset, repo_id, tmp_path):
    path = tmp_path / f"{repo_id.replace('/', '_')}.parquet"
    dataset.to_parquet(str(path))
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=str(path), path_in_repo="data/train-00000.parquet", repo_id=repo_id,
                    repo_type="dataset")


# ------------------------------------------------------------------------------------------------------------------
# Hub ids: eval --model, and run's model / ref_model / mask / data
# ------------------------------------------------------------------------------------------------------------------
def test_eval_and_run_take_hub_ids(llava_dir, bench, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with local_hub(tmp_path) as hub:
        _push_model(llava_dir, "local-user/tiny-llava")
        # `hf-unlearn eval --model org/name` loads from the Hub and measures the same model as the local folder.
        assert main(["eval", "--model", "local-user/tiny-llava", "--output", "hub.json", "--batch-size", "8",
                     "--no-rouge", "--seed", "1", "--benchmark", "builtin"]) == 0
        assert main(["eval", "--model", str(llava_dir), "--output", "local.json", "--batch-size", "8", "--no-rouge",
                     "--seed", "1", "--benchmark", "builtin"]) == 0
        from_hub, local = (json.loads((tmp_path / f).read_text())["metrics"] for f in ("hub.json", "local.json"))
        assert set(from_hub) >= {"forget_vqa_acc", "retain_vqa_acc", "general_acc", "mia_auc"}
        assert from_hub == local
        assert any(m == "GET" and u.startswith("/local-user/tiny-llava/resolve/") and u.endswith("/model.safetensors")
                   for m, u in hub.requests)  # the weights came from the Hub

        # A missing Hub id: one line that says no local folder of that name exists either.
        capsys.readouterr()
        assert main(["eval", "--model", "local-user/nothing-here", "--benchmark", "builtin"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hf-unlearn eval: error: --model: no local folder 'local-user/nothing-here', and "
                              "loading it from the Hub failed") and err.count("\n") == 1

        # run: the model, the reference, a saved mask and the forget set all from Hub ids.
        model = AutoModelForImageTextToText.from_pretrained(llava_dir)
        mask = compute_saliency_mask(model, SaliencyMaskConfig(target_modules="vision", score="random",
                                                               threshold=0.3), None, None, None, show_progress=False)
        mask.push_to_hub("local-user/tiny-llava-mask")
        _push_parquet(bench["forget_vqa"].select(range(3)), "local-user/forget-rows", tmp_path)
        (tmp_path / "run.yaml").write_text(f"""\
method: npo
model: local-user/tiny-llava
ref_model: local-user/tiny-llava
output_dir: out
max_steps: 2
mask: {{path: local-user/tiny-llava-mask}}
data:
  forget: local-user/forget-rows
  retain: builtin:retain_vqa
  benchmark: {json.dumps(BENCH)}
""")
        assert main(["run", "--config", "run.yaml"]) == 0
    info = json.loads((tmp_path / "out" / "hf_unlearn_run.json").read_text())
    assert info["rows"]["forget"] == 3 and info["ref_model"] == "local-user/tiny-llava"
    used = SaliencyMask.from_pretrained(tmp_path / "out" / "saliency_mask")
    assert list(used) == list(mask) and all(torch.equal(used[n], mask[n]) for n in mask)


def test_trainer_reference_and_teacher_strings_are_local_first_then_hub(llava_dir, bench, tmp_path, monkeypatch):
    from hf_unlearn import NPOConfig, NPOTrainer, VKDConfig, VKDTrainer

    monkeypatch.chdir(tmp_path)
    forget = bench["forget_vqa"].select(range(2))
    processor = AutoProcessor.from_pretrained(llava_dir)
    common = dict(use_cpu=True, report_to="none", max_steps=1, disable_tqdm=True, save_strategy="no")
    with pytest.raises(FileNotFoundError, match=r"ref_model: './reference' does not exist \(looked for the local"):
        NPOTrainer(AutoModelForImageTextToText.from_pretrained(llava_dir), args=NPOConfig("o1", **common),
                   train_dataset=forget, processing_class=processor, ref_model="./reference")
    with local_hub(tmp_path):
        _push_model(llava_dir, "local-user/teacher")
        model = AutoModelForImageTextToText.from_pretrained(llava_dir)
        with torch.no_grad():  # a teacher that differs from the student, so it is visibly the Hub one
            next(model.parameters()).add_(1.0)
        npo = NPOTrainer(model, args=NPOConfig("o2", **common), train_dataset=forget, processing_class=processor,
                         ref_model="local-user/teacher")
        vkd = VKDTrainer(model, args=VKDConfig("o3", **common), train_dataset=forget, processing_class=processor,
                         teacher_model="local-user/teacher")
    hub_weights = AutoModelForImageTextToText.from_pretrained(llava_dir).state_dict()
    for trainer in (npo, vkd):
        reference = trainer.accelerator.unwrap_model(trainer.ref_model)
        assert all(torch.equal(v, hub_weights[k]) for k, v in reference.state_dict().items())


# ------------------------------------------------------------------------------------------------------------------
# The card: model-index eval results, license from the base model's card, base_model, what drove the run
# ------------------------------------------------------------------------------------------------------------------
def _expected_results(before: dict, after: dict, task: str) -> list[EvalResult]:
    kinds = {"acc": "accuracy", "auc": "roc_auc", "rougeL": "rouge"}
    return [EvalResult(task_type=task, task_name=EVAL_TASK_NAME, dataset_type=EVAL_DATASET_TYPE,
                       dataset_name=EVAL_DATASET_NAME, metric_type=kinds[name.rsplit("_", 1)[-1]],
                       metric_name=f"{name} ({stage} unlearning)", metric_config=stage, metric_value=value)
            for stage, metrics in (("before", before), ("after", after)) for name, value in metrics.items()]


def test_pushed_card_declares_eval_results_license_and_base_model(llava_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with local_hub(tmp_path) as hub:
        _push_model(llava_dir, "local-user/base-llava", card=BASE_CARD)
        (tmp_path / "run.yaml").write_text(f"""\
method: ga_diff
model: local-user/base-llava
output_dir: out
max_steps: 2
data:
  benchmark: {json.dumps(BENCH)}
eval: {{benchmark: builtin, batch_size: 8, relearn: true}}
""")
        assert main(["run", "--config", "run.yaml"]) == 0
        assert main(["push", "out", "local-user/unlearned"]) == 0
        card = ModelCard.load("local-user/unlearned")
        info = json.loads((tmp_path / "out" / "hf_unlearn_run.json").read_text())

        assert card.data.license == "apache-2.0"  # from the base model's card
        assert card.data.base_model == "local-user/base-llava"  # from config._name_or_path, a Hub id
        names = {r.metric_name for r in card.data.eval_results}
        for metric in ("forget_vqa_acc", "retain_vqa_acc", "test_vqa_acc", "general_acc", "mia_auc", "relearn_acc"):
            assert {f"{metric} (before unlearning)", f"{metric} (after unlearning)"} <= names, metric
        # card.data.eval_results round-trips: the parsed results are exactly the measured numbers.
        expected = _expected_results(info["metrics_before"], info["metrics_after"], "image-text-to-text")
        assert len(card.data.eval_results) == len(expected) == 2 * len(info["metrics_after"])
        assert sorted(card.data.eval_results, key=repr) == sorted(expected, key=repr)
        assert ModelCard(str(card)).data.to_dict()["model-index"] == card.data.to_dict()["model-index"]
        # max_steps drove the run: the settings table shows it, not the unused num_train_epochs.
        assert "| `max_steps` | 2 |" in card.text and "num_train_epochs" not in card.text

        # Explicit values win: --license and --base-model on the push.
        assert main(["push", "out", "local-user/unlearned-2", "--license", "mit", "--base-model",
                     "local-user/other-base"]) == 0
        card = ModelCard.load("local-user/unlearned-2")
        assert (card.data.license, card.data.base_model) == ("mit", "local-user/other-base")
        capsys.readouterr()
        assert main(["push", "out", "local-user/unlearned-3", "--license", "Not A License"]) == 1
        assert "is not a Hub license id" in capsys.readouterr().err
        assert "local-user/unlearned-3" not in hub.repo_ids()


def test_card_license_and_base_model_from_the_trainer(tmp_path):
    model, tokenizer = tiny_llama(corpus=NAMES + JOBS)
    forget = Dataset.from_list([{"image": None, "question": f"What is the job of {NAMES[0]}?", "answer": JOBS[0]}])
    args = GAConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", num_train_epochs=3)
    trainer = GATrainer(model, args=args, train_dataset=forget, processing_class=tokenizer)
    card = trainer.create_model_card()
    assert card.data.license is None and card.data.base_model is None  # a fresh local model: nothing known
    assert "| `num_train_epochs` | 3 |" in card.text and "max_steps" not in card.text  # epochs drove this one
    with pytest.raises(ValueError, match="local path is never published"):
        trainer.set_card_metadata(base_model=str(tmp_path))
    trainer.set_card_metadata(license="llama3.1", base_model="org/tiny-llama")
    card = trainer.create_model_card()
    assert (card.data.license, card.data.base_model) == ("llama3.1", "org/tiny-llama")
    saved = json.loads((tmp_path / "run" / "hf_unlearn_card.json").read_text())
    assert (saved["license"], saved["base_model"]) == ("llama3.1", "org/tiny-llama")  # for a later hf-unlearn push
    # A local base model's README.md gives the license.
    base = tmp_path / "base"
    model.save_pretrained(base)
    (base / "README.md").write_text(BASE_CARD)
    local = GATrainer(AutoModelForCausalLM.from_pretrained(base), args=args, train_dataset=forget,
                      processing_class=tokenizer)
    assert local.create_model_card().data.license == "apache-2.0"


# ------------------------------------------------------------------------------------------------------------------
# LoRA on a locally saved base model: push with a base_model override
# ------------------------------------------------------------------------------------------------------------------
def test_lora_adapter_on_a_local_base_pushes_with_a_base_model_override(tmp_path):
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model

    base, tokenizer = tiny_llama(corpus=NAMES + JOBS)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    forget = Dataset.from_list([{"image": None, "question": f"What is the job of {n}?", "answer": j}
                                for n, j in zip(NAMES[:2], JOBS[:2])])
    args = GAConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", max_steps=2,
                    learning_rate=1e-2, hub_model_id="local-user/lora", disable_tqdm=True, save_strategy="no")
    trainer = GATrainer(model, args=args, train_dataset=forget, processing_class=tokenizer)
    trainer.train()
    with local_hub(tmp_path) as hub:
        with pytest.raises(ValueError, match=r"push_to_hub\(base_model="):  # the adapter names a local path
            trainer.push_to_hub()
        AutoModelForCausalLM.from_pretrained(tmp_path / "base").push_to_hub("local-user/base-llama")
        tokenizer.push_to_hub("local-user/base-llama")
        trainer.push_to_hub(base_model="local-user/base-llama")
        pushed = hub.files("local-user/lora")
        assert json.loads(pushed["adapter_config.json"])["base_model_name_or_path"] == "local-user/base-llama"
        assert ModelCard(pushed["README.md"].decode()).data.base_model == "local-user/base-llama"
        assert str(tmp_path).encode() not in b"".join(pushed.values())
        local_config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
        assert local_config["base_model_name_or_path"] == str(tmp_path / "base")  # local files are left as they are
        reloaded = AutoPeftModelForCausalLM.from_pretrained("local-user/lora")  # fetches the base from the Hub too
    ids = tokenizer("What is the job of", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert os.path.isfile(tmp_path / "run" / "adapter_model.safetensors")
