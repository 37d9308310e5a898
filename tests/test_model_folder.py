"""A model folder is one whole save (issue 23): saves delete only what a save wrote, a save killed while it is moved
into place is never pushed and is finished by the next run, push checks the manifest, killed runs are cleaned up.

A kill inside the publish is simulated by an exception raised from ``os.remove`` / ``os.replace``: nothing catches it
on the way out of ``save_model`` (no ``finally`` or ``except`` between), so the folder is left exactly as a SIGKILL
at that instruction would leave it. Real SIGKILLs at random moments: ``test_sigkill_battery.py``.
"""

import json
import logging
import os

import pytest
import torch
from transformers import AutoModelForImageTextToText

from hf_unlearn import GAConfig, GATrainer, SaliencyMask
from hf_unlearn.cli import main as cli_main
from hf_unlearn.hub.push import publishable_files, push_run_dir
from hf_unlearn.model_folder import MANIFEST_NAME, SAVE_STAGING, ModelFolderError, check_publishable
from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.hub_server import local_hub
from hf_unlearn.trainers.checkpointing import LOCK_NAME

from conftest import JOBS, NAMES, load_llava

# What one save of the tiny LLaVA writes (and nothing else: no checkpoint, log or user file).
SAVE_FILES = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "hf_unlearn_card.json",
              "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
              "training_args.bin"}
PUSHED = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
          "processor_config.json", "tokenizer.json", "tokenizer_config.json"}


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no ``except Exception`` on the way out runs."""


def _args(out, **kw) -> GAConfig:
    values = dict(output_dir=str(out), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-3, use_cpu=True,
                  disable_tqdm=True, logging_steps=1, seed=0, save_strategy="no", report_to="none")
    values.update(kw)
    return GAConfig(**values)


def _trainer(model_dir, toy_data, out, mask=None, **kw):
    model, processor = load_llava(model_dir)
    return GATrainer(model=model, args=_args(out, **kw), train_dataset=toy_data["forget"],
                     retain_dataset=toy_data["retain"], processing_class=processor,
                     saliency_mask=mask(model) if mask else None)


def _projector_mask(model) -> SaliencyMask:
    return SaliencyMask({n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
                         if "multi_modal_projector" in n})


def _manifest(out) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


# ------------------------------------------------------------------------------------------------------------------
# Saves never delete what no save wrote
# ------------------------------------------------------------------------------------------------------------------
def test_saves_and_pushes_after_training_keep_checkpoints_logs_and_user_files(memorised_llava, toy_data, tmp_path):
    """train(); save_model() with push_to_hub=True (a save, then the push's own save); push_to_hub() again (a
    retried push): the issue measured ['checkpoint-1', 'checkpoint-2'] after train and [] after save_model."""
    out = tmp_path / "run"
    with local_hub(tmp_path) as hub:
        trainer = _trainer(memorised_llava, toy_data, out, max_steps=2, save_strategy="steps", save_steps=1,
                           push_to_hub=True, hub_model_id="local-user/kept", hub_strategy="end")
        trainer.train()
        (out / "runs").mkdir()
        (out / "runs" / "events.log").write_text("step 1\n")  # a logger's file
        (out / "notes.txt").write_text("mine\n")  # the user's file
        trainer.save_model()
        trainer.push_to_hub()
        pushed = hub.files("local-user/kept")
    assert sorted(os.listdir(out)) == sorted([*SAVE_FILES, "checkpoint-1", "checkpoint-2", "runs", "notes.txt",
                                              MANIFEST_NAME])
    manifest = _manifest(out)
    assert manifest["kind"] == "model" and set(manifest["files"]) == SAVE_FILES  # only what a save wrote
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "runs" / "events.log").is_file()
    assert trainer.resolve_resume_checkpoint(True) == str(out / "checkpoint-2")  # was: "No complete checkpoint"
    assert set(pushed) == PUSHED | {".gitattributes"}
    assert all(pushed[rel] == (out / rel).read_bytes() for rel in PUSHED)


def test_a_version_1_manifest_that_listed_the_whole_folder_deletes_only_save_files(memorised_llava, toy_data,
                                                                                    tmp_path):
    """Folders saved before this fix carry a manifest listing everything, checkpoints included: trusted for nothing
    but the known save artifacts."""
    out = tmp_path / "run"
    _trainer(memorised_llava, toy_data, out, mask=_projector_mask).save_model()
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "optimizer.pt").write_bytes(b"state")
    (out / "notes.txt").write_text("mine\n")
    old = _manifest(out)
    old["files"] = {rel: os.path.getsize(out / rel) for rel in [*old["files"], "checkpoint-1/optimizer.pt",
                                                                   "notes.txt"]}
    old.pop("kind"), old.pop("replaces")
    old["version"] = 1
    (out / MANIFEST_NAME).write_text(json.dumps(old))
    _trainer(memorised_llava, toy_data, out).save_model()  # no mask this time
    assert (out / "checkpoint-1" / "optimizer.pt").read_bytes() == b"state" and (out / "notes.txt").is_file()
    assert not (out / "saliency_mask").exists()  # the earlier save's mask is gone: one save, not two
    assert set(_manifest(out)["files"]) == SAVE_FILES


# ------------------------------------------------------------------------------------------------------------------
# A save killed while it is moved into place
# ------------------------------------------------------------------------------------------------------------------
def test_a_save_killed_while_moved_into_place_is_refused_by_push_then_finished_by_the_next_run(
        memorised_llava, toy_data, tmp_path, monkeypatch, capsys, caplog):
    """The issue's repro: run A saved with a mask; run B (no mask, other weights) is killed once its files are in
    place, before A's mask is deleted. Both push paths published B's weights and a card saying "no mask" next to A's
    mask. Now they refuse, naming the file; the next run in the folder finishes B's save."""
    out = tmp_path / "run"
    _trainer(memorised_llava, toy_data, out, mask=_projector_mask).save_model()
    b = _trainer(memorised_llava, toy_data, out)
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(0.5)  # run B's weights differ from A's
    b_weights = {k: v.clone() for k, v in b.model.state_dict().items()}
    real_remove = os.remove

    def killed_before_removing_the_old_mask(path, *a, **kw):
        if str(path).endswith("saliency_mask.safetensors"):
            raise _Killed
        return real_remove(path, *a, **kw)

    monkeypatch.setattr(os, "remove", killed_before_removing_the_old_mask)
    with pytest.raises(_Killed):
        b.save_model()
    monkeypatch.setattr(os, "remove", real_remove)
    assert (out / "saliency_mask" / "saliency_mask.safetensors").is_file()  # A's mask next to B's files

    with local_hub(tmp_path) as hub:
        capsys.readouterr()
        assert cli_main(["push", str(out), "local-user/mixed"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"hf-unlearn push: error: Refusing to push '{out}': "
                                                   f"{MANIFEST_NAME} is missing: a save into it was killed while its "
                                                   "files were moved into place, so it may mix two saves.")
        with pytest.raises(ModelFolderError, match="Save the model into it again, or start the next run in it"):
            push_run_dir(out, "local-user/mixed")
        assert hub.repo_ids() == []

        caplog.set_level(logging.WARNING, logger="hf_unlearn")
        _trainer(memorised_llava, toy_data, out).train()  # the next run in the folder (it saves nothing itself)
        assert "Finished a model save that a killed run left half moved into place" in caplog.text
        assert str(out) not in caplog.text  # no folder path in logs
        assert cli_main(["push", str(out), "local-user/whole"]) == 0
        pushed = hub.files("local-user/whole")
    assert set(pushed) == PUSHED | {".gitattributes"}  # B's save, whole: no mask
    assert set(_manifest(out)["files"]) == SAVE_FILES and not (out / "saliency_mask").exists()
    assert sorted(os.listdir(out)) == sorted([*SAVE_FILES, MANIFEST_NAME])
    saved = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in b_weights.items())


@pytest.mark.parametrize("when", ["writing", "moving"])
def test_a_save_killed_before_any_file_moved_leaves_the_earlier_files(when, memorised_llava, toy_data, tmp_path,
                                                                       monkeypatch, caplog):
    """Killed while writing (renames inside the staging folder): the earlier save is untouched and still pushable.
    Killed at the first move into place (the save prepared, the folder's manifest withdrawn): every file is still
    the earlier save's, push refuses, and the next save finishes the killed one first."""
    out = tmp_path / "run"
    _trainer(memorised_llava, toy_data, out, mask=_projector_mask).save_model()
    before = {rel: (out / rel).read_bytes() for rel in [*_manifest(out)["files"], MANIFEST_NAME]}
    assert "saliency_mask/saliency_mask.safetensors" in before
    real_replace = os.replace

    def killed(src, dst, *a, **kw):
        into_place = os.path.dirname(os.fspath(dst)) == str(out)
        if SAVE_STAGING in os.fspath(src) and into_place == (when == "moving"):
            raise _Killed
        return real_replace(src, dst, *a, **kw)

    b = _trainer(memorised_llava, toy_data, out)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(_Killed):
        b.save_model()
    monkeypatch.setattr(os, "replace", real_replace)
    files = publishable_files(out)
    if when == "writing":
        check_publishable(out, files)  # the earlier save, whole: its manifest matches every file
        assert {rel: (out / rel).read_bytes() for rel in before} == before
        return
    with pytest.raises(ModelFolderError, match=f"{MANIFEST_NAME} is missing: a save into it was killed"):
        check_publishable(out, files)
    assert {rel: (out / rel).read_bytes() for rel in before if rel != MANIFEST_NAME} == \
        {k: v for k, v in before.items() if k != MANIFEST_NAME}
    caplog.set_level(logging.WARNING, logger="hf_unlearn")
    b.save_model()
    assert "Finished a model save that a killed run left half moved into place" in caplog.text
    check_publishable(out, publishable_files(out))
    assert set(_manifest(out)["files"]) == SAVE_FILES and not (out / "saliency_mask").exists()


# ------------------------------------------------------------------------------------------------------------------
# push checks the manifest
# ------------------------------------------------------------------------------------------------------------------
def _damage(out, case):
    if case == "manifest_missing":
        (out / MANIFEST_NAME).unlink()
        return rf"{MANIFEST_NAME} is missing: the folder was not saved whole by hf_unlearn's `save_model`"
    if case == "manifest_damaged":
        (out / MANIFEST_NAME).write_text("{")
        return rf"{MANIFEST_NAME} is damaged \(not an hf_unlearn manifest\)"
    if case == "file_missing":
        (out / "tokenizer.json").unlink()
        return r"tokenizer.json is missing \(the last save wrote it\)\. Save the model into it again"
    if case == "file_changed":
        with open(out / "model.safetensors", "ab") as f:
            f.write(b"\0")
        return r"model.safetensors has \d+ bytes, the last save wrote \d+: it was changed after the save"
    # another save's mask, dropped next to this save's files
    model, _ = tiny_llava(corpus=NAMES + JOBS)
    _projector_mask(model).save_pretrained(out / "saliency_mask")
    return (r"saliency_mask/saliency_mask.safetensors is not in hf_unlearn_manifest.json: the last save did not "
            r"write it, so it would be published next to another save's files. Move it out of the folder")


@pytest.mark.parametrize("case", ["manifest_missing", "manifest_damaged", "file_missing", "file_changed",
                                  "foreign_mask"])
def test_push_refuses_a_folder_that_is_not_one_whole_save_naming_the_file(case, memorised_llava, toy_data,
                                                                          tmp_path, capsys):
    out = tmp_path / "run"
    _trainer(memorised_llava, toy_data, out).save_model()
    expected = _damage(out, case)
    with pytest.raises(ModelFolderError, match=rf"Refusing to push '{out}': {expected}"):
        push_run_dir(out, "someone/model")
    capsys.readouterr()
    assert cli_main(["push", str(out), "someone/model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-unlearn push: error: Refusing to push")


def test_push_of_damaged_card_inputs_names_the_file(memorised_llava, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    _trainer(memorised_llava, toy_data, out).save_model()
    card = out / "hf_unlearn_card.json"
    card.write_bytes(b"{" + b" " * (card.stat().st_size - 1))  # damaged in place, same size
    capsys.readouterr()
    assert cli_main(["push", str(out), "someone/model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-unlearn push: error: hf_unlearn_card.json in '{out}' is damaged "
                                               "(not JSON: ")
    assert "trainer.save_model()" in err[0]


# ------------------------------------------------------------------------------------------------------------------
# base_model: a relative local path that looks like a Hub id
# ------------------------------------------------------------------------------------------------------------------
def test_a_relative_local_model_folder_is_never_published_as_base_model_after_a_chdir(toy_data, tmp_path,
                                                                                      monkeypatch):
    model, processor = tiny_llava(corpus=NAMES + JOBS)
    model.save_pretrained(tmp_path / "acme" / "tiny-llava")
    processor.save_pretrained(tmp_path / "acme" / "tiny-llava")
    monkeypatch.chdir(tmp_path)
    model, processor = load_llava("acme/tiny-llava")  # a relative path that reads as a Hub id
    assert model.config._name_or_path == "acme/tiny-llava"
    out = tmp_path / "run"
    trainer = GATrainer(model=model, args=_args(out), train_dataset=toy_data["forget"], processing_class=processor)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # at push time the folder cannot be found from here
    trainer.save_model()
    assert json.loads((out / "hf_unlearn_card.json").read_text())["base_model"] is None
    assert "acme/tiny-llava" not in (out / "README.md").read_text()
    model.config._name_or_path = "acme/hub-model"  # a real Hub id (not a local folder when the trainer was made)
    assert trainer.create_model_card().data.base_model == "acme/hub-model"


# ------------------------------------------------------------------------------------------------------------------
# What a killed run leaves, cleaned by the next run
# ------------------------------------------------------------------------------------------------------------------
def test_the_next_run_cleans_what_a_killed_run_left(memorised_llava, toy_data, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_bytes(b"")  # killed between creating the lock and writing it
    (out / ".tmp-k3x9a2b1-README.md").write_text("half")  # an atomic write's temporary
    (out / SAVE_STAGING).mkdir()  # a save killed while writing
    (out / SAVE_STAGING / "model.safetensors").write_bytes(b"half")
    (out / "checkpoint-3.tmp" / "checkpoint-3").mkdir(parents=True)  # a checkpoint killed while writing
    (out / "checkpoint-2.old").mkdir()  # killed while replacing an earlier run's checkpoint-2
    (out / "notes.txt").write_text("mine\n")
    caplog.set_level(logging.WARNING, logger="hf_unlearn")
    trainer = _trainer(memorised_llava, toy_data, out)
    trainer.train()  # was: OutputDirInUseError, "delete the lock" by hand
    assert trainer.state.global_step == 1
    assert sorted(os.listdir(out)) == ["notes.txt"]  # the lock released, everything else of the killed run gone
    assert ("Removed 3 temporary file(s) or folder(s) that a killed run left in output_dir: "
            ".tmp-k3x9a2b1-README.md, checkpoint-2.old/, checkpoint-3.tmp/.") in caplog.text
    assert "Removed the unfinished model save a killed run left" in caplog.text
    assert str(tmp_path) not in caplog.text
