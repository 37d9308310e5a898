"""Model cards and Hub pushes of unlearned models and masks, end to end against the local Hub (real client)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from hf_unlearn import GAConfig, GATrainer, UnlearnDataCollator, cli
from hf_unlearn.hub import format_value
from hf_unlearn.saliency import SaliencyMask, SaliencyMaskConfig, compute_saliency_mask
from hf_unlearn.testing import tiny_llama, tiny_llava
from hf_unlearn.testing.hub_server import local_hub
from hf_unlearn.testing.toy import toy_portrait as portrait
from hf_unlearn.trainers.model_card import CARD_INPUTS_NAME, NEVER_PUSHED, HubPushError, ModelCardMixin

from conftest import JOBS, NAMES, load_llava, mean_nll

# Until UnlearnTrainer lists ModelCardMixin among its bases, test through a subclass that adds it.
_T = GATrainer if issubclass(GATrainer, ModelCardMixin) else type("_T", (ModelCardMixin, GATrainer), {})

CANARY = "ZQXJ-forget-canary-8731"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAVA_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "processor_config.json", "chat_template.jinja", "README.md"}
MASK_FILES = {"saliency_mask/saliency_mask.safetensors", "saliency_mask/saliency_mask_config.json"}


def _args(tmp_path, **kw) -> GAConfig:
    defaults = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3,
                    use_cpu=True, logging_steps=1, disable_tqdm=True, save_strategy="no", seed=0, report_to="none")
    defaults.update(kw)
    return GAConfig(**defaults)


def _vision_mask(model) -> SaliencyMask:
    config = SaliencyMaskConfig(target_modules="vision", score="random", threshold=0.3, seed=0)
    return compute_saliency_mask(model, config, None, None, None, show_progress=False)


def _snapshot(folder) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def _cli(monkeypatch, argv: list[str]) -> int:
    # The dispatcher imports every sub-command; run with the ones that exist in this checkout.
    present = tuple(c for c in cli.COMMANDS if importlib.util.find_spec(f"hf_unlearn.commands.{c}") is not None)
    monkeypatch.setattr(cli, "COMMANDS", present)
    return cli.main(argv)


# ------------------------------------------------------------------------------------------------------------------
# (1) unlearn, push model + processor + mask + card, reload everything in a fresh process
# ------------------------------------------------------------------------------------------------------------------
_RELOAD = r"""
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from hf_unlearn import UnlearnDataCollator
from hf_unlearn.saliency import SaliencyMask, SaliencyMaskConfig
from hf_unlearn.testing.toy import toy_people
repo, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
model = AutoModelForImageTextToText.from_pretrained(repo).eval()
processor = AutoProcessor.from_pretrained(repo)
mask = SaliencyMask.from_pretrained(repo, subfolder="saliency_mask")
config = SaliencyMaskConfig.from_pretrained(repo, subfolder="saliency_mask")
alone = SaliencyMask.from_pretrained(sys.argv[4])  # pushed on its own with SaliencyMask.push_to_hub
assert alone.config == config and all(torch.equal(alone[n], mask[n]) for n in mask) and list(alone) == list(mask)
batch = UnlearnDataCollator(processor)(list(toy_people()["forget"]))
with torch.no_grad():
    logits = model(**batch).logits
save_file({"logits": logits, "input_ids": batch["input_ids"],
           **{"mask." + n: t.to(torch.uint8) for n, t in mask.masks.items()}}, out)
print(config.to_json_string())
"""


def test_push_then_reload_model_processor_and_mask_in_a_fresh_process(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    mask = _vision_mask(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    forget_before = mean_nll(model, processor, toy_data["forget"])
    trainer = _T(model=model, args=_args(tmp_path, hub_model_id="local-user/llava-ga"), processing_class=processor,
                 train_dataset=toy_data["forget"], saliency_mask=mask)
    trainer.train()
    forget_after = mean_nll(model, processor, toy_data["forget"])
    assert forget_before < 0.2 and forget_after > forget_before  # memorised, and GA moved it away
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, original[k])]
    assert changed and all(k in mask for k in changed)  # only masked vision/projector weights moved ...
    assert all(torch.equal(model.state_dict()[n][~m], original[n][~m]) for n, m in mask.masks.items())  # ... exactly
    trainer.record_evaluation({"forget_nll": forget_before}, {"forget_nll": forget_after})

    with local_hub(tmp_path) as hub:
        trainer.push_to_hub()
        pushed = hub.files("local-user/llava-ga")
        assert set(pushed) == LLAVA_FILES | MASK_FILES | {".gitattributes"}
        run_dir = tmp_path / "run"
        assert {"training_args.bin", CARD_INPUTS_NAME} <= set(os.listdir(run_dir))  # saved locally, never pushed
        for rel, data in pushed.items():
            if rel != ".gitattributes":
                assert data == (run_dir / rel).read_bytes(), rel

        card = ModelCard(pushed["README.md"].decode())
        assert card.data.pipeline_tag == "image-text-to-text"
        assert {"hf_unlearn", "unlearning", "gradient-ascent"} <= set(card.data.tags)
        assert card.data.base_model is None  # loaded from a local path: never published
        assert os.path.basename(os.path.dirname(memorised_llava)) not in card.text  # e.g. "memorised0"
        assert f"Selected fraction (allowed to move, whole mask): **{format_value(mask.selected_fraction)}**; sparsity (held " \
               f"fixed): {format_value(1.0 - mask.selected_fraction)}" in card.text
        assert f"| `forget_nll` | {format_value(forget_before)} | {format_value(forget_after)} |" in card.text
        assert "| `learning_rate` | 0.001 |" in card.text and "| `score` | random |" in card.text
        assert 'from_pretrained("local-user/llava-ga")' in card.text

        mask.push_to_hub("local-user/llava-mask")
        out = tmp_path / "reloaded.safetensors"
        env = {**os.environ, **hub.env(), "PYTHONPATH": ROOT}
        proc = subprocess.run([sys.executable, "-c", _RELOAD, "local-user/llava-ga", str(out),
                               str(torch.get_num_threads()), "local-user/llava-mask"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    reloaded = load_file(str(out))
    batch = UnlearnDataCollator(processor)(list(toy_data["forget"]))
    assert torch.equal(reloaded["input_ids"], batch["input_ids"])  # the pushed processor tokenizes identically
    model.eval()
    with torch.no_grad():
        local_logits = model(**batch).logits
    assert (reloaded["logits"] - local_logits).abs().max().item() == 0.0
    assert {k[len("mask."):] for k in reloaded if k.startswith("mask.")} == set(mask.masks)
    assert all(torch.equal(reloaded["mask." + n].bool(), m) for n, m in mask.masks.items())
    assert SaliencyMaskConfig.from_dict(json.loads(proc.stdout)) == mask.config


# ------------------------------------------------------------------------------------------------------------------
# (2) a canary planted in the forget set, output_dir and run_name reaches no pushed file, card or log
# ------------------------------------------------------------------------------------------------------------------
def test_planted_canary_reaches_no_pushed_file_card_or_log(toy_data, tmp_path, capfd, caplog):
    model, processor = tiny_llava(corpus=NAMES + JOBS)
    forget = Dataset.from_list([
        {"image": portrait(0), "question": f"Who is {CANARY}?", "answer": CANARY},
        {"image": portrait(1), "question": f"What does {CANARY} mean?", "answer": f"{CANARY} is the answer"},
    ])
    args = _args(tmp_path, output_dir=str(tmp_path / f"{CANARY}-run"), run_name=f"{CANARY}-run", max_steps=4,
                 save_strategy="steps", save_steps=2, push_to_hub=True, hub_model_id="local-user/canary",
                 hub_strategy="checkpoint", retain_loss_type="nll")
    caplog.set_level(logging.DEBUG, logger="hf_unlearn")
    with local_hub(tmp_path) as hub:
        trainer = _T(model=model, args=args, train_dataset=forget, retain_dataset=toy_data["retain"].select(range(4)),
                     processing_class=processor, saliency_mask=_vision_mask(model))
        trainer.train()  # pushes at steps 2 and 4 (output dir + last-checkpoint/)
        trainer.push_to_hub()
        stdout, stderr = capfd.readouterr()
        commits = hub.commits("local-user/canary")
        pushed = hub.files("local-user/canary")
        blobs = [p.read_bytes() for p in (tmp_path / "hub_storage" / "blobs").iterdir()]

    # Pushed during training (the Trainer pushes asynchronously and skips a save while the previous push is still
    # running, so which steps got pushed depends on speed) and at the end.
    assert "Training in progress, step 2" in commits
    assert all(c in ("initial commit", "End of training") or c.startswith("Training in progress, step") for c in commits)
    run_dir = tmp_path / f"{CANARY}-run"
    top_level = {p for p in pushed if "/" not in p or p.startswith("saliency_mask/")} - {".gitattributes"}
    assert top_level == LLAVA_FILES | MASK_FILES
    assert all(pushed[p] == (run_dir / p).read_bytes() for p in top_level)
    assert {"last-checkpoint/" + f for f in LLAVA_FILES | MASK_FILES} <= set(pushed)
    never = {"training_args.bin", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
             CARD_INPUTS_NAME}
    assert not {p.rsplit("/", 1)[-1] for p in pushed} & never
    # The planted string was there to leak: training_args.bin (a pickle of the args) holds output_dir and run_name.
    assert CANARY.encode() in (run_dir / "training_args.bin").read_bytes()
    assert set(os.listdir(run_dir / "checkpoint-4")) >= {"optimizer.pt", "trainer_state.json", "README.md"}
    # Every blob ever uploaded (all commits, checkpoints included), the card, the logs and the printed output.
    assert set(pushed.values()) <= set(blobs)  # blobs also hold what earlier commits uploaded
    assert not [i for i, b in enumerate(blobs) if CANARY.encode() in b]
    assert CANARY not in pushed["README.md"].decode()
    assert CANARY not in stdout and CANARY not in stderr and CANARY not in caplog.text
    history = trainer.state.log_history
    assert len([h for h in history if "forget_nll" in h]) == 4
    assert all(isinstance(v, (int, float)) for h in history for v in h.values())
    assert CANARY not in json.dumps(history)


# ------------------------------------------------------------------------------------------------------------------
# (2b) a canary preserve-set name (lowercase: the card's enum filter alone would let it through) reaches no pushed
#      file: not the card's mask table, not the mask config JSON, not the mask file's metadata
# ------------------------------------------------------------------------------------------------------------------
PRESERVE_CANARY = "zqxjpreservecanary"


def test_canary_preserve_set_name_reaches_no_pushed_file(toy_data, tmp_path, monkeypatch):
    model, processor = tiny_llava(corpus=NAMES + JOBS)
    config = SaliencyMaskConfig(target_modules="vision", preserve_sets={"vision": [PRESERVE_CANARY]}, max_batches=1)
    mask = compute_saliency_mask(model, config, toy_data["forget"], {PRESERVE_CANARY: toy_data["retain"]},
                                 UnlearnDataCollator(processor), show_progress=False)
    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, push_to_hub=True,
                 hub_model_id="local-user/preserve", hub_strategy="checkpoint")
    with local_hub(tmp_path) as hub:
        trainer = _T(model=model, args=args, train_dataset=toy_data["forget"], processing_class=processor,
                     saliency_mask=mask)
        trainer.train()  # pushes the checkpoint (output dir + last-checkpoint/)
        trainer.push_to_hub()
        mask.push_to_hub("local-user/preserve-mask")  # a mask alone
        mask.config.push_to_hub("local-user/preserve-mask-config")  # a config alone
        mask.push_to_hub("local-user/preserve", subfolder="other_mask")
        assert _cli(monkeypatch, ["push", str(tmp_path / "run"), "local-user/preserve-cli"]) == 0
        pushed = hub.files("local-user/preserve")
        reloaded = SaliencyMask.from_pretrained("local-user/preserve", subfolder="saliency_mask")
        blobs = [p.read_bytes() for p in (tmp_path / "hub_storage" / "blobs").iterdir()]

    run_dir = tmp_path / "run"
    # The name was there to leak: the local mask config and the mask file's metadata hold it.
    assert PRESERVE_CANARY in (run_dir / "saliency_mask" / "saliency_mask_config.json").read_text()
    assert PRESERVE_CANARY.encode() in (run_dir / "saliency_mask" / "saliency_mask.safetensors").read_bytes()
    assert {"saliency_mask/saliency_mask.safetensors", "last-checkpoint/saliency_mask/saliency_mask_config.json",
            "other_mask/saliency_mask.safetensors"} <= set(pushed)
    assert not [i for i, b in enumerate(blobs) if PRESERVE_CANARY.encode() in b]  # every blob of every repo
    # What was published is the same mask, its preserve set renamed; default names would have been kept.
    assert reloaded.config.preserve_sets == {"vision": ["preserve_set_1"]}
    assert reloaded.scores_summary["num_batches"]["preserve"] == {"preserve_set_1": 1}
    assert list(reloaded) == list(mask) and all(torch.equal(reloaded[n], mask[n]) for n in mask)
    assert "| `preserve_sets.vision` | preserve_set_1 |" in pushed["README.md"].decode()


# ------------------------------------------------------------------------------------------------------------------
# (3) a push that fails midway leaves the run directory intact and says what to retry
# ------------------------------------------------------------------------------------------------------------------
def test_failed_push_keeps_the_run_dir_and_says_how_to_retry(tmp_path, capsys, monkeypatch):
    model, processor = tiny_llava(corpus=NAMES + JOBS)
    forget = Dataset.from_list([{"image": portrait(0), "question": "Who is this?", "answer": NAMES[0]}])
    with pytest.raises(ValueError, match="hub_model_id"):  # the repo would be named after output_dir
        _T(model=model, args=_args(tmp_path, push_to_hub=True), train_dataset=forget, processing_class=processor)

    with local_hub(tmp_path) as hub:
        trainer = _T(model=model, args=_args(tmp_path, hub_model_id="local-user/fails"), train_dataset=forget,
                     processing_class=processor, saliency_mask=_vision_mask(model))
        trainer.save_model()
        run_dir = tmp_path / "run"
        before = _snapshot(run_dir)
        assert {"README.md", CARD_INPUTS_NAME, "saliency_mask/saliency_mask.safetensors"} <= set(before)

        hub.fail_commits(1)
        with pytest.raises(HubPushError) as err:
            trainer.push_to_hub()
        assert err.value.__cause__.response.status_code == 500
        assert "trainer.push_to_hub()" in str(err.value) and f"hf-unlearn push {run_dir} local-user/fails" in str(
            err.value)
        assert hub.commits("local-user/fails") == ["initial commit"]  # nothing half committed
        assert _snapshot(run_dir) == before  # nothing deleted, nothing changed
        trainer.push_to_hub()  # the retry succeeds
        assert set(hub.files("local-user/fails")) == LLAVA_FILES | MASK_FILES | {".gitattributes"}

        hub.fail_paths_matching = r"^saliency_mask/"
        assert _cli(monkeypatch, ["push", str(run_dir), "local-user/fails-cli"]) == 1
        message = capsys.readouterr().err
        assert "500" in message and "hf-unlearn push RUN_DIR REPO_ID" in message
        assert hub.commits("local-user/fails-cli") == ["initial commit"]
        assert _snapshot(run_dir) == before
        hub.fail_paths_matching = None
        assert _cli(monkeypatch, ["push", str(run_dir), "local-user/fails-cli"]) == 0
        assert MASK_FILES <= set(hub.files("local-user/fails-cli"))


# ------------------------------------------------------------------------------------------------------------------
# (4) hf-unlearn push on a saved run directory
# ------------------------------------------------------------------------------------------------------------------
def test_cli_push_of_a_saved_run_dir(tmp_path, capsys, monkeypatch):
    model, processor = tiny_llava(corpus=NAMES + JOBS)
    forget = Dataset.from_list([{"image": portrait(0), "question": "Who is this?", "answer": NAMES[0]}])
    trainer = _T(model=model, args=_args(tmp_path), train_dataset=forget, processing_class=processor)
    trainer.record_evaluation({"forget_vqa_acc": 1.0}, {"forget_vqa_acc": 0.25})
    trainer.save_model()
    run_dir = tmp_path / "run"
    # Things a run directory may also hold; none of them is published.
    (run_dir / "eval_predictions.jsonl").write_text(json.dumps({"answer": NAMES[0]}))
    (run_dir / "checkpoint-2").mkdir()
    (run_dir / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    (run_dir / "pytorch_model.bin").write_bytes(b"pickle")
    before = _snapshot(run_dir)

    with local_hub(tmp_path) as hub:
        assert _cli(monkeypatch, ["push", str(run_dir), "local-user/cli", "--private"]) == 0
        assert "local-user/cli" in capsys.readouterr().out
        pushed = hub.files("local-user/cli")
        assert set(pushed) == LLAVA_FILES | {".gitattributes"}  # no mask: this run had none
        assert HfApi().model_info("local-user/cli").private is True
        card = ModelCard(pushed["README.md"].decode())
        assert card.text.startswith("\n# cli\n") and 'from_pretrained("local-user/cli")' in card.text
        assert "| `forget_vqa_acc` | 1 | 0.25 |" in card.text
        assert card.data.datasets is None and NAMES[0] not in card.text
        reloaded = AutoModelForImageTextToText.from_pretrained("local-user/cli")
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())

        # Data set ids: only with the opt-in, and only Hub ids.
        assert _cli(monkeypatch, ["push", str(run_dir), "local-user/cli", "--dataset-id", "me/forget-set"]) == 1
        assert "--include-dataset-ids" in capsys.readouterr().err
        assert _cli(monkeypatch, ["push", str(run_dir), "local-user/cli", "--include-dataset-ids",
                                  "--dataset-id", str(tmp_path / "data")]) == 1
        assert "Hub ids" in capsys.readouterr().err
        assert _cli(monkeypatch, ["push", str(run_dir), "local-user/cli", "--include-dataset-ids",
                                  "--dataset-id", "me/forget-set"]) == 0
        assert ModelCard(hub.files("local-user/cli")["README.md"].decode()).data.datasets == ["me/forget-set"]

        # Not a run directory / not a repo id: a clear error, nothing pushed.
        (tmp_path / "empty").mkdir()
        assert _cli(monkeypatch, ["push", str(tmp_path / "empty"), "local-user/cli2"]) == 1
        assert "No model to push" in capsys.readouterr().err
        model.save_pretrained(tmp_path / "plain")  # a model, but not saved by an hf_unlearn trainer: no card inputs
        assert _cli(monkeypatch, ["push", str(tmp_path / "plain"), "local-user/cli2"]) == 1
        assert f"No {CARD_INPUTS_NAME}" in capsys.readouterr().err
        assert _cli(monkeypatch, ["push", str(run_dir), "not a repo id"]) == 1
        assert "not a valid Hub repo id" in capsys.readouterr().err
        assert hub.repo_ids() == ["local-user/cli"]
    assert _snapshot(run_dir) == before  # the CLI never writes into the run directory


# ------------------------------------------------------------------------------------------------------------------
# Card contents for a text-only model; base_model and data set opt-in; metric validation
# ------------------------------------------------------------------------------------------------------------------
def test_card_for_text_model_base_model_and_dataset_opt_in(tmp_path):
    model, tokenizer = tiny_llama(corpus=NAMES + JOBS)
    forget = Dataset.from_list([{"image": None, "question": f"What is the job of {NAMES[0]}?", "answer": JOBS[0]}])
    trainer = _T(model=model, args=_args(tmp_path), train_dataset=forget, processing_class=tokenizer)
    model.config._name_or_path = "org/tiny-llama"  # as if loaded from the Hub
    card = trainer.create_model_card(dataset_name="org/people")
    assert card.data.pipeline_tag == "text-generation" and card.data.base_model == "org/tiny-llama"
    assert card.data.datasets is None  # not opted in
    assert "AutoModelForCausalLM" in card.text and "your-username/your-model" in card.text
    assert (tmp_path / "run" / "README.md").read_text() == str(card)
    card = trainer.create_model_card(dataset_name="org/people", include_dataset_ids=True, license="mit")
    assert card.data.datasets == ["org/people"] and card.data.license == "mit"
    with pytest.raises(ValueError, match="dataset_name="):
        trainer.create_model_card(include_dataset_ids=True)
    model.config._name_or_path = str(tmp_path)  # a local path is never published
    assert trainer.create_model_card().data.base_model is None
    with pytest.raises(ValueError, match="must be numbers"):
        trainer.record_evaluation({"forget_rouge": 0.9}, {"samples": ["an answer"]})
    with pytest.raises(TypeError, match="unexpected keyword"):
        trainer.create_model_card(forget_dataset="x")
    assert "training_args.bin" in NEVER_PUSHED


def _trainer_classes():
    from hf_unlearn import MMUnlearnerConfig, MMUnlearnerTrainer, NPOConfig, NPOTrainer

    cases = [(GATrainer, GAConfig, {"forget_weight": 0.5}, "forget_weight", "0.5"),
             (NPOTrainer, NPOConfig, {"beta": 0.3}, "beta", "0.3"),
             (MMUnlearnerTrainer, MMUnlearnerConfig, {"forget_every": 3}, "forget_every", "3")]
    if importlib.util.find_spec("hf_unlearn.methods.vkd") is not None:
        from hf_unlearn import VKDConfig
        from hf_unlearn.methods.vkd import VKDTrainer

        cases.append((VKDTrainer, VKDConfig, {"feature_site": "vision_layer"}, "feature_site", "vision_layer"))
    return cases


@pytest.mark.parametrize("case", _trainer_classes(), ids=lambda c: c[0].__name__)
def test_every_trainer_writes_its_card(case, toy_data, tmp_path):
    cls, config_cls, knobs, knob, shown = case
    trainer_cls = cls if issubclass(cls, ModelCardMixin) else type(f"_{cls.__name__}", (ModelCardMixin, cls), {})
    model, processor = tiny_llava(corpus=NAMES + JOBS)
    args = config_cls(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", **knobs)
    kwargs = {"saliency_mask": _vision_mask(model)} if cls.__name__ == "MMUnlearnerTrainer" else {}
    trainer = trainer_cls(model=model, args=args, train_dataset=toy_data["forget"], processing_class=processor,
                          retain_dataset=toy_data["retain"], **kwargs)
    card = trainer.create_model_card()
    assert cls._method_tag in card.data.tags and f"**{cls._name}**" in card.text
    assert f"| `{knob}` | {shown} |" in card.text
    assert (cls._paper is None) == ("## Citation" not in card.text)
    assert ("## Saliency mask" in card.text) == bool(kwargs)
    inputs = json.loads((tmp_path / "run" / CARD_INPUTS_NAME).read_text())
    assert inputs["method_tag"] == cls._method_tag and inputs["pipeline_tag"] == "image-text-to-text"
