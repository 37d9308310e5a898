"""End-to-end tests of the local fake Hub with the real huggingface_hub client and transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import (
    HfApi,
    ModelCard,
    constants,
    create_repo,
    delete_repo,
    hf_hub_download,
    is_offline_mode,
    list_repo_files,
    snapshot_download,
    upload_file,
    upload_folder,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.hub_server import LocalHubServer, local_hub


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(cfg).eval()


def _max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def _make_folder(root) -> dict[str, bytes]:
    files = {"a.txt": b"hello", "sub/b.bin": bytes(range(256)) * 12, "sub/deeper/c.json": b'{"x": 1}'}
    for rel, data in files.items():
        path = root / "folder" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_create_upload_list_download(tmp_path):
    files = _make_folder(tmp_path)
    with local_hub(tmp_path) as hub:
        assert HfApi().whoami()["name"] == "local-user"
        url = create_repo("tiny")  # no namespace -> the user's, as on the Hub
        assert url.repo_id == "local-user/tiny"
        assert create_repo("local-user/tiny", exist_ok=True).repo_id == "local-user/tiny"
        with pytest.raises(HfHubHTTPError) as err:
            create_repo("local-user/tiny")
        assert err.value.response.status_code == 409

        upload_folder(folder_path=str(tmp_path / "folder"), repo_id="local-user/tiny")
        assert sorted(list_repo_files("local-user/tiny")) == [".gitattributes", *sorted(files)]
        committed = hub.files("local-user/tiny")
        assert {k: v for k, v in committed.items() if k != ".gitattributes"} == files

        path = hf_hub_download("local-user/tiny", "sub/b.bin")
        assert path.startswith(str(tmp_path / "hf_home" / "hub"))  # the isolated cache
        assert open(path, "rb").read() == files["sub/b.bin"]
        snap = snapshot_download("local-user/tiny")
        for rel, data in files.items():
            assert open(os.path.join(snap, rel), "rb").read() == data

        tree = [e.path for e in HfApi().list_repo_tree("local-user/tiny")]
        assert sorted(tree) == [".gitattributes", "a.txt", "sub"]  # non-recursive: one level

        # Re-uploading unchanged files makes no commit; a changed file makes one.
        n_commits = len(hub.commits("local-user/tiny"))
        upload_folder(folder_path=str(tmp_path / "folder"), repo_id="local-user/tiny")
        assert len(hub.commits("local-user/tiny")) == n_commits
        upload_file(path_or_fileobj=b"bye", path_in_repo="a.txt", repo_id="local-user/tiny", commit_message="edit")
        assert hub.commits("local-user/tiny")[-1] == "edit"
        assert open(hf_hub_download("local-user/tiny", "a.txt"), "rb").read() == b"bye"

        with pytest.raises(EntryNotFoundError):
            hf_hub_download("local-user/tiny", "missing.txt")
        with pytest.raises(RepositoryNotFoundError):
            list_repo_files("local-user/nope")
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token="hf_wrong").create_repo("other")
        assert err.value.response.status_code == 401


def test_dataset_repos_and_delete(tmp_path):
    with local_hub(tmp_path) as hub:
        create_repo("local-user/data", repo_type="dataset")
        upload_file(path_or_fileobj=b"q,a\n1,2\n", path_in_repo="train.csv", repo_id="local-user/data",
                    repo_type="dataset")
        assert hub.files("local-user/data", repo_type="dataset")["train.csv"] == b"q,a\n1,2\n"
        assert open(hf_hub_download("local-user/data", "train.csv", repo_type="dataset"), "rb").read() == b"q,a\n1,2\n"
        assert hub.repo_ids("model") == []  # types are separate namespaces, as on the Hub
        delete_repo("local-user/data", repo_type="dataset")
        assert hub.repo_ids("dataset") == []
        with pytest.raises(RepositoryNotFoundError):
            delete_repo("local-user/data", repo_type="dataset")
        delete_repo("local-user/data", repo_type="dataset", missing_ok=True)


def test_model_and_processor_push_then_from_pretrained(tmp_path):
    with local_hub(tmp_path) as hub:
        llama = _tiny_llama()
        llama.push_to_hub("local-user/llama")
        reloaded = AutoModelForCausalLM.from_pretrained("local-user/llama")
        assert _max_weight_diff(llama, reloaded) == 0.0

        model, processor = tiny_llava()
        model.push_to_hub("local-user/llava")
        processor.push_to_hub("local-user/llava")
        assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json"} <= set(
            hub.files("local-user/llava"))
        model2 = AutoModelForImageTextToText.from_pretrained("local-user/llava")
        processor2 = AutoProcessor.from_pretrained("local-user/llava")
        assert type(model2).__name__ == "LlavaForConditionalGeneration"
        assert _max_weight_diff(model, model2) == 0.0
        text = "What is the name of the person in this image?"
        assert processor2.tokenizer(text).input_ids == processor.tokenizer(text).input_ids

        card = ModelCard("---\nlicense: mit\ntags:\n- hf_unlearn\n---\n# Tiny\n")
        card.push_to_hub("local-user/llava")
        assert hub.files("local-user/llava")["README.md"] == str(card).encode()


def test_trainer_push_to_hub(tmp_path):
    with local_hub(tmp_path) as hub:
        args = TrainingArguments(output_dir=str(tmp_path / "out"), push_to_hub=True, hub_model_id="local-user/trained",
                                 report_to=[], use_cpu=True)
        trainer = Trainer(model=_tiny_llama(), args=args)  # creates the repo (exist_ok) at init
        trainer.model.add_model_tags(["hf_unlearn"])
        trainer.push_to_hub(commit_message="end of training")
        assert hub.commits("local-user/trained") == ["initial commit", "end of training"]
        pushed = hub.files("local-user/trained")
        assert {"model.safetensors", "config.json", "README.md"} <= set(pushed)
        assert ModelCard(pushed["README.md"].decode()).data.tags[0] == "hf_unlearn"
        reloaded = AutoModelForCausalLM.from_pretrained("local-user/trained")
        assert _max_weight_diff(trainer.model, reloaded) == 0.0


def test_fail_commits_makes_the_push_raise_and_leaves_the_repo_unchanged(tmp_path):
    with local_hub(tmp_path) as hub:
        llama = _tiny_llama()
        llama.push_to_hub("local-user/llama")
        before = hub.files("local-user/llama")

        llama.config.unlearned = True  # a real change, so a commit is attempted
        hub.fail_commits(1)
        with pytest.raises(HfHubHTTPError) as err:
            llama.push_to_hub("local-user/llama")
        assert err.value.response.status_code == 500
        assert hub.files("local-user/llama") == before  # nothing half committed

        llama.push_to_hub("local-user/llama")  # only the next commit failed
        assert json.loads(hub.files("local-user/llama")["config.json"])["unlearned"] is True

        hub.fail_paths_matching = r"model\.safetensors$"
        with pytest.raises(HfHubHTTPError):
            upload_file(path_or_fileobj=b"x", path_in_repo="model.safetensors", repo_id="local-user/llama")
        upload_file(path_or_fileobj=b"ok", path_in_repo="notes.txt", repo_id="local-user/llama")
        assert hub.files("local-user/llama")["notes.txt"] == b"ok"
        with pytest.raises(ValueError, match="n must be >= 0"):
            hub.fail_commits(-1)


def test_local_hub_restores_the_client_configuration(tmp_path):
    endpoint, cache, offline = constants.ENDPOINT, constants.HF_HUB_CACHE, is_offline_mode()
    env_before = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE")}
    with local_hub(tmp_path) as hub:
        assert constants.ENDPOINT == hub.endpoint and hub.endpoint.startswith("http://127.0.0.1:")
        assert constants.HF_HUB_CACHE == str(tmp_path / "hf_home" / "hub")
        assert is_offline_mode() is False
        assert os.environ["HF_TOKEN"] == hub.token
    assert (constants.ENDPOINT, constants.HF_HUB_CACHE, is_offline_mode()) == (endpoint, cache, offline)
    assert {k: os.environ.get(k) for k in env_before} == env_before


def test_env_points_a_subprocess_at_the_server(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # this process talks to the server by explicit endpoint
    with LocalHubServer(root=str(tmp_path / "store")) as hub:
        hub.hf_home = str(tmp_path / "sub_home")
        HfApi(endpoint=hub.endpoint, token=hub.token).create_repo("local-user/data")
        HfApi(endpoint=hub.endpoint, token=hub.token).upload_file(
            path_or_fileobj=b"payload-123", path_in_repo="x.txt", repo_id="local-user/data")
        code = "from huggingface_hub import hf_hub_download as d; print(open(d('local-user/data', 'x.txt')).read())"
        env = {**os.environ, **hub.env()}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "payload-123"
        assert (tmp_path / "sub_home" / "hub" / "models--local-user--data").is_dir()
    with pytest.raises(RuntimeError, match="not running"):
        LocalHubServer().env()
