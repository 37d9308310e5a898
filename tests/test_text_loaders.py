"""TOFU and MUSE loaders on tiny local snapshots in the published layouts; the raw-continuation collator."""

import json
import os
import shutil

import datasets
import huggingface_hub.constants
import pytest
import torch
from datasets import Features, Value

from hf_unlearn.data.completion import CompletionCollator
from hf_unlearn.data.muse import load_muse
from hf_unlearn.data.schema import benchmark_features, has_options, truth_ratio_features
from hf_unlearn.data.tofu import load_tofu
from hf_unlearn.testing import build_tokenizer

# ---------------------------------------------------------------------------------------------------------------------
# TOFU: one JSON(-lines) file per config at the root, 20 questions per author listed consecutively in full.json
# ---------------------------------------------------------------------------------------------------------------------
AUTHORS = ["Ada Quill", "Bram Holt", "Cleo Marsh", "Dov Reyes"]  # the last one is the forget10 author
HOLDOUT = "Esme Vale"

from conftest import fit_batch


def _qa(author, i):
    return {"question": f"Q{i}: what about {author}?", "answer": f"{author} fact {i}."}


def _perturbed(author, i):
    return {**_qa(author, i), "paraphrased_question": f"P{i}?", "paraphrased_answer": f"In short, {author} fact {i}.",
            "perturbed_answer": [f"{author} wrong {i}.{k}" for k in range(5)]}


def _write_json(path, records, lines=True):
    with open(path, "w", encoding="utf-8") as f:
        if lines:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        else:
            json.dump(records, f)


def build_tofu_snapshot(root):
    os.makedirs(root, exist_ok=True)
    full = [_qa(a, i) for a in AUTHORS for i in range(20)]
    _write_json(root / "full.json", full)
    _write_json(root / "forget10.json", full[60:])
    _write_json(root / "retain90.json", full[:60], lines=False)  # a JSON array parses too
    _write_json(root / "forget10_perturbed.json", [_perturbed(AUTHORS[3], i) for i in range(20)])
    _write_json(root / "retain_perturbed.json", [_perturbed(AUTHORS[0], i) for i in range(20)])
    _write_json(root / "holdout10.json", [_qa(HOLDOUT, i) for i in range(20)])
    for name in ("real_authors", "world_facts"):
        _write_json(root / f"{name}_perturbed.json", [
            {"question": f"{name} {i}?", "answer": f"true {i}", "perturbed_answer": [f"false {i}{k}" for k in "abc"],
             "option1": "x", "option2": "y", "option3": "z", "option4": "w"} for i in range(3)])
    return root


@pytest.fixture(scope="module")
def tofu_root(tmp_path_factory):
    return build_tofu_snapshot(tmp_path_factory.mktemp("tofu"))


def test_tofu_conversion(tofu_root):
    dsd = load_tofu(str(tofu_root), "forget10")
    assert {k: v.num_rows for k, v in dsd.items()} == {
        "forget_qa": 20, "retain_qa": 20, "holdout_qa": 20, "real_authors": 3, "world_facts": 3, "retain_train": 60}
    for name, ds in dsd.items():
        assert ds.features == benchmark_features(truth_ratio_features()), name
        assert not has_options(ds)  # TOFU scores answers by probability and generation
    forget = dsd["forget_qa"][0]
    assert forget["question"] == "Q0: what about Dov Reyes?" and forget["answer"] == "Dov Reyes fact 0."
    assert forget["paraphrased_answer"] == "In short, Dov Reyes fact 0."
    assert forget["perturbed_answers"] == [f"Dov Reyes wrong 0.{k}" for k in range(5)] and forget["kind"] == "qa"
    # person_id = the author's position in full.json; holdout authors come after the 4 of full.
    assert set(dsd["forget_qa"]["person_id"]) == {3} and set(dsd["retain_qa"]["person_id"]) == {0}
    assert set(dsd["retain_train"]["person_id"]) == {0, 1, 2} and set(dsd["holdout_qa"]["person_id"]) == {4}
    ra = dsd["real_authors"][1]
    assert ra["person_id"] == -1 and ra["kind"] == "general" and ra["paraphrased_answer"] is None
    assert ra["perturbed_answers"] == ["false 1a", "false 1b", "false 1c"]


def test_tofu_errors_name_what_is_missing(tofu_root, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="forget_split must look like"):
        load_tofu(str(tofu_root), "forget_10")
    broken = tmp_path / "broken"
    shutil.copytree(tofu_root, broken)
    _write_json(broken / "forget10_perturbed.json", [_qa(AUTHORS[3], i) for i in range(3)])
    with pytest.raises(ValueError) as err:
        load_tofu(str(broken))
    msg = str(err.value)
    assert "forget10_perturbed" in msg and "['paraphrased_answer', 'perturbed_answer']" in msg
    assert "columns found: ['question', 'answer']" in msg and "locuslab/TOFU" in msg
    os.remove(broken / "forget10_perturbed.json")
    with pytest.raises(FileNotFoundError) as err:
        load_tofu(str(broken))
    msg = str(err.value)
    assert "TOFU config 'forget10_perturbed' not found" in msg and "'world_facts_perturbed'" in msg
    # Holdout configs came later: a snapshot without them loads, without the holdout split.
    shutil.copy(tofu_root / "forget10_perturbed.json", broken / "forget10_perturbed.json")
    os.remove(broken / "holdout10.json")
    assert "holdout_qa" not in load_tofu(str(broken))
    (broken / "full.json").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 1\n")
    with pytest.raises(ValueError, match="full.json is a Git LFS pointer file.*git lfs pull"):
        load_tofu(str(broken))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="hf download locuslab/TOFU --repo-type dataset"):
        load_tofu("locuslab/TOFU")


# ---------------------------------------------------------------------------------------------------------------------
# MUSE: <config>/<split>-00000-of-00001.parquet (the Hub folders also keep older .json copies)
# ---------------------------------------------------------------------------------------------------------------------
def _write_split(root, config, split, rows):
    os.makedirs(root / config, exist_ok=True)
    features = Features({k: Value("string") for k in rows[0]})
    path = root / config / f"{split}-00000-of-00001.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def build_muse_snapshot(root, old_names=False):
    datasets.disable_progress_bars()
    retain = "retain2" if old_names else "retain"
    _write_split(root, "verbmem", "forget", [{"prompt": f"Once upon a time {i}", "gt": f"the end {i}."}
                                             for i in range(3)])
    for side in ("forget", retain):
        _write_split(root, "knowmem", f"{side}_qa", [{"question": f"{side} q{i}?", "answer": f"{side} a{i}"}
                                                     for i in range(4)])
        _write_split(root, "knowmem", f"{side}_qa_icl", [{"question": f"icl q{i}?", "answer": f"icl a{i}"}
                                                         for i in range(2)])
    for split in ("forget", "holdout", retain):
        _write_split(root, "privleak", split, [{"text": f"{split} document {i}."} for i in range(3)])
    for split in ("forget", "retain1", "retain2", "holdout"):
        _write_split(root, "raw", split, [{"text": f"raw {split} {i}."} for i in range(2)])
    (root / "privleak" / "forget.json").write_text("[]")  # a stale JSON copy, as on the Hub: ignored
    return root


def test_muse_conversion(tmp_path):
    for old_names in (False, True):  # MUSE renamed retain2_qa / retain2 to retain_qa / retain
        dsd = load_muse(str(build_muse_snapshot(tmp_path / f"muse{old_names}", old_names)), "news")
        assert {k: v.num_rows for k, v in dsd.items()} == {
            "verbmem_forget": 3, "knowmem_forget": 4, "knowmem_retain": 4, "privleak_forget": 3,
            "privleak_holdout": 3, "privleak_retain": 3, "forget_train": 2, "retain_train": 2}
        assert all(set(ds["kind"]) == {"text"} for ds in dsd.values())
    row = dsd["verbmem_forget"][1]
    assert row["question"] == "Once upon a time 1" and row["answer"] == "the end 1."
    kf = dsd["knowmem_forget"][2]
    assert kf["question"] == ("Question: icl q0?\nAnswer: icl a0\n\nQuestion: icl q1?\nAnswer: icl a1\n\n"
                              "Question: forget q2?\nAnswer:") and kf["answer"] == "forget a2"
    assert dsd["knowmem_retain"][0]["question"].endswith("Question: retain2 q0?\nAnswer:")
    holdout = dsd["privleak_holdout"][0]
    assert holdout["question"] == "" and holdout["answer"] == "holdout document 0."
    assert dsd["forget_train"]["answer"] == ["raw forget 0.", "raw forget 1."]
    assert dsd["retain_train"]["answer"] == ["raw retain1 0.", "raw retain1 1."]


def test_muse_errors(tmp_path, monkeypatch):
    root = build_muse_snapshot(tmp_path / "muse")
    os.remove(root / "verbmem" / "forget-00000-of-00001.parquet")
    _write_split(root, "verbmem", "forget", [{"prompt": "p", "text": "t"}])  # an old layout without gt
    with pytest.raises(ValueError) as err:
        load_muse(str(root))
    msg = str(err.value)
    assert "verbmem/forget" in msg and "['gt']" in msg and "muse-bench/MUSE-News" in msg
    shutil.rmtree(root / "privleak")
    _write_split(root, "verbmem", "forget", [{"prompt": "p", "gt": "g"}])
    with pytest.raises(FileNotFoundError, match="MUSE config 'privleak/forget' not found"):
        load_muse(str(root), "books")
    with pytest.raises(ValueError, match="corpus must be one of"):
        load_muse(str(root), "movies")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="hf download muse-bench/MUSE-Books"):
        load_muse("muse-bench/MUSE-Books", "books")


def test_completion_collator_labels_only_the_continuation():
    tok = build_tokenizer("llava", ["Once upon a time there was a fox."])
    batch = CompletionCollator(tok)([{"question": "Once upon", "answer": "a time"}, {"question": "", "answer": "fox."}])
    prefix = tok("Once upon")["input_ids"]
    cont = tok(" a time", add_special_tokens=False)["input_ids"]  # one space joins prefix and continuation
    assert batch["input_ids"][0, : len(prefix) + len(cont)].tolist() == prefix + cont
    assert batch["labels"][0].tolist()[: len(prefix) + len(cont)] == [-100] * len(prefix) + cont
    # An empty prefix: BOS, then the whole document is scored; the shorter row is right-padded.
    doc = tok("fox.", add_special_tokens=False)["input_ids"]
    assert batch["labels"][1].tolist()[: 1 + len(doc)] == [-100] + doc
    assert (batch["labels"][1, 1 + len(doc):] == -100).all() and batch["attention_mask"][1].sum() == 1 + len(doc)
    assert batch["input_ids"][0, 0].item() == tok.bos_token_id and isinstance(batch["input_ids"], torch.Tensor)
    short = CompletionCollator(tok, max_length=len(prefix) + 1)([{"question": "Once upon", "answer": "a time"}])
    assert (short["labels"] != -100).sum() == 1  # the continuation is cut to fit
    with pytest.raises(ValueError, match="leaves no room"):
        CompletionCollator(tok, max_length=len(prefix))([{"question": "Once upon", "answer": "a time"}])


def test_muse_metrics_on_a_model_that_memorised_the_forget_texts(tmp_path):
    from hf_unlearn.evaluation.text_evaluator import TextEvaluator
    from hf_unlearn.testing import tiny_llama

    dsd = load_muse(str(build_muse_snapshot(tmp_path / "muse")))
    corpus = [t for ds in dsd.values() for t in list(ds["question"]) + list(ds["answer"])]
    model, tok = tiny_llama(corpus=corpus)
    # Memorise the forget side as raw text: verbmem continuations, privleak documents, and knowmem answers followed
    # by the blank line that ends every answer of MUSE's in-context prompt (generation stops there).
    train = [dsd[s][i] for s in ("verbmem_forget", "privleak_forget") for i in range(len(dsd[s]))]
    train += [{**r, "answer": r["answer"] + "\n\n"} for r in dsd["knowmem_forget"]]
    batch = CompletionCollator(tok)(train)
    fit_batch(model, batch, steps=150)
    ev = TextEvaluator(model, tok, dsd, batch_size=4)
    out = ev.muse_metrics(verbmem_tokens=8, knowmem_tokens=8)
    assert out["verbmem_rougeL"] == 1.0 and out["verbmem_extraction_strength"] == 1.0
    assert out["verbmem_exact_memorization"] == 1.0 and out["knowmem_forget_rougeL"] == 1.0
    assert out["knowmem_retain_rougeL"] <= 0.5  # never trained on: at best the shared word of "retain aN"/"forget aN"
    assert out["mia_loss_auc"] == 1.0 and out["privleak"] == pytest.approx(-100.0)
    assert len(ev.per_row["verbmem_rougeL"]) == 3 and len(ev.per_row["privleak_holdout_mia_min_k"]) == 3
    # A "retrained" reference that tells members apart perfectly leaves PrivLeak undefined: said, not divided by 0.
    # (Calibration by a real retain-only model is tested in test_text_demo.py.)
    with pytest.raises(ValueError, match="PrivLeak is undefined"):
        ev.muse_metrics(reference=ev.reference_statistics("privleak_forget", "privleak_holdout"), verbmem_tokens=8,
                        knowmem_tokens=8)
