"""FIUBench, UMU-Bench, SafeEraser and CoVUBench loaders on tiny snapshots written in the published layouts.

FIUBench and SafeEraser ship JSON records next to image files; UMU-Bench and CoVUBench ship parquet (image columns
stored as ``{"bytes", "path"}`` structs by ``datasets.Image``). Every fixture is a few 4x4 images written to tmp_path.
"""

import json
import os
import shutil

import datasets
import numpy as np
import pytest
from datasets import Features, Image, Value
from PIL import Image as PILImage

from hf_unlearn.data import fiubench
from hf_unlearn.data.covubench import load_covubench
from hf_unlearn.data.fiubench import load_fiubench
from hf_unlearn.data.safeeraser import load_safeeraser
from hf_unlearn.data.schema import MCQ_COLUMNS, benchmark_features, check_mcq_row, has_options, truth_ratio_features
from hf_unlearn.data.umu_bench import load_umu_bench

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (90, 90, 90)]


def _img(color):
    return PILImage.new("RGB", (4, 4), color)


def _png_file(path, color):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _img(color).save(path, format="PNG")


def _pixel(image):
    return tuple(int(v) for v in np.asarray(image)[0, 0])


def _write_parquet(path, features, rows):
    datasets.disable_progress_bars()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    datasets.Dataset.from_list(rows, features=Features(features)).to_parquet(str(path))


def _generation_only(dsd, extra=None):
    for name, ds in dsd.items():
        assert ds.features == benchmark_features(extra), name
        assert not has_options(ds) and set(ds["label"]) <= {None}, name


# ---------------------------------------------------------------------------------------------------------------------
# FIUBench: DIR/full.json (JSON lines here), DIR/split.json, DIR/<image files>
# ---------------------------------------------------------------------------------------------------------------------
def _identity(uid):
    # Upstream paths start with the upstream folder ("./dataset/..."); some copies drop it.
    path = f"./dataset/images/{uid}.png" if uid % 2 == 0 else f"images/{uid}.png"
    qa = [{"question": "What is this person's job?", "answer": f"Job {uid}.", "paraphrased_answer": f"Works as {uid}.",
           "perturbed_answer": [f"Job {uid + 10}.", f"Job {uid + 20}."], "paraphrased_question": ["q?"]},
          {"question": "Where does this person live?", "answer": f"Town {uid}.", "paraphrased_answer": "",
           "perturbed_answer": f"Town {uid + 10}."}]  # fmt: skip
    return {"unique_id": uid, "name": f"Person {uid}", "image_path": path, "caption": "c", "qa_list": qa}


@pytest.fixture
def fiu_root(tmp_path):
    root = tmp_path / "fiubench"
    for uid in range(6):
        _png_file(str(root / "images" / f"{uid}.png"), COLORS[uid])
    (root / "full.json").write_text("\n".join(json.dumps(_identity(uid)) for uid in range(6)))
    (root / "split.json").write_text(json.dumps({"forget1": [0], "forget5": [1], "forget10": [1, 2],
                                                 "retain5": [3]}))  # fmt: skip
    return root


def test_fiubench_conversion(fiu_root, monkeypatch):
    dsd = load_fiubench(str(fiu_root), "forget5")
    _generation_only(dsd, truth_ratio_features())
    assert {k: v.num_rows for k, v in dsd.items()} == {"forget_vqa": 2, "retain_vqa": 2}
    forget = dsd["forget_vqa"]
    assert forget["person_id"] == [1, 1] and set(forget["kind"]) == {"vqa"}
    assert forget["answer"] == ["Job 1.", "Town 1."]
    assert forget["paraphrased_answer"] == ["Works as 1.", None]  # an empty paraphrase is no paraphrase
    assert forget["perturbed_answers"] == [["Job 11.", "Job 21."], ["Town 11."]]
    assert _pixel(forget[0]["image"]) == COLORS[1]
    # split.json lists retain5: the upstream evaluation's retain set, not the complement.
    assert dsd["retain_vqa"]["person_id"] == [3, 3] and _pixel(dsd["retain_vqa"][0]["image"]) == COLORS[3]
    # No retain10 key: every identity in no forget list (upstream's `retain` split), within the first 400.
    dsd = load_fiubench(str(fiu_root), "forget10")
    assert sorted(set(dsd["forget_vqa"]["person_id"])) == [1, 2]
    assert sorted(set(dsd["retain_vqa"]["person_id"])) == [3, 4, 5]
    monkeypatch.setattr(fiubench, "FIRST_IDENTITIES", 5)
    assert sorted(set(load_fiubench(str(fiu_root), "forget10")["retain_vqa"]["person_id"])) == [3, 4]


def test_fiubench_errors(fiu_root, tmp_path):
    with pytest.raises(ValueError, match="forget_split must look like 'forget1'"):
        load_fiubench(str(fiu_root), "forget_5")
    with pytest.raises(ValueError, match=r"split.json has no 'forget20' list; keys found: \['forget1', 'forget10'"):
        load_fiubench(str(fiu_root), "forget20")
    with pytest.raises(FileNotFoundError, match="is not a directory .*`hf download gray311/FIUBench"):
        load_fiubench(str(tmp_path / "nowhere"))
    records = [_identity(uid) for uid in range(6)]
    del records[1]["qa_list"][1]["answer"]
    (fiu_root / "full.json").write_text(json.dumps(records))  # a JSON array this time
    with pytest.raises(ValueError) as err:
        load_fiubench(str(fiu_root))
    msg = str(err.value)
    assert "'full.json record 1, qa_list[1]' is missing column(s) ['answer']" in msg
    assert "columns found: ['question', 'paraphrased_answer', 'perturbed_answer']" in msg
    os.remove(fiu_root / "images" / "1.png")
    with pytest.raises(FileNotFoundError,
                       match=r"full.json record 1: image 'images/1.png' not found .* download it again with `hf"):
        load_fiubench(str(fiu_root))
    os.remove(fiu_root / "split.json")
    with pytest.raises(FileNotFoundError, match=r"'split.json' not found .* JSON files found: \['full.json'\]"):
        load_fiubench(str(fiu_root))


# ---------------------------------------------------------------------------------------------------------------------
# UMU-Bench: DIR/<config>/train-00000-of-00001.parquet, Classify a Python-literal string
# ---------------------------------------------------------------------------------------------------------------------
UMU_PROFILE = {"ID": Value("string"), "image": Image(), "Biography": Value("string"), "MM_QA": Value("string"),
               "UM_QA": Value("string"), "Classify": Value("string"), "Cloze": Value("string"),
               "Generation": Value("string")}  # fmt: skip


def _umu_classify(pid, uni_letter="C"):
    uni = {"job": {"question": f"What is the job of Person {pid}?", "options": dict(zip("ABCD", ["a", "b", f"job{pid}",
                                                                                              "d"])),
                   "answer": f"{uni_letter}. job{pid}"},
           "city": {"question": f"Where does Person {pid} live?", "options": dict(zip("ABCD", [f"city{pid}", "x", "y",
                                                                                              "z"])),
                    "answer": "A"}}  # fmt: skip
    # The image twins' own `answer` letters disagree on purpose: UMU-Bench's eval.py reads the unimodal letter.
    mul = {k: {**v, "question": v["question"].replace(f"Person {pid}", "the person in the image"), "answer": "D"}
           for k, v in uni.items()}
    return str({"unimodal": uni, "muitimodal": mul})


def _umu_profile(pid):
    qa = str({"question": {"1": "q"}, "answer": {"1": "a"}})
    return {"ID": str(pid), "image": _img(COLORS[pid % len(COLORS)]), "Biography": "b", "MM_QA": qa, "UM_QA": qa,
            "Classify": _umu_classify(pid), "Cloze": "{}", "Generation": "{}"}  # fmt: skip


@pytest.fixture
def umu_root(tmp_path):
    root = tmp_path / "umu"
    for config, pids in (("forget_5", [1, 2]), ("retain_95", [3, 4, 5]), ("real_person", [100])):
        _write_parquet(root / config / "train-00000-of-00001.parquet", UMU_PROFILE, [_umu_profile(p) for p in pids])
    return root


def test_umu_bench_conversion(umu_root):
    dsd = load_umu_bench(str(umu_root), "forget_5")
    assert {k: v.num_rows for k, v in dsd.items()} == {"forget_vqa": 4, "forget_qa": 4, "retain_vqa": 6,
                                                       "retain_qa": 6, "general": 2, "general_qa": 2}  # fmt: skip
    for name, ds in dsd.items():
        assert ds.features == benchmark_features() and has_options(ds), name
        for i, row in enumerate(ds.select_columns(list(MCQ_COLUMNS)).to_list()):
            check_mcq_row(row, f"{name}[{i}]")
    fv, fq = dsd["forget_vqa"], dsd["forget_qa"]
    assert fv["person_id"] == [1, 1, 2, 2] and fq["person_id"] == [1, 1, 2, 2]
    assert fv["label"] == [2, 0, 2, 0] and fv["answer"] == ["job1", "city1", "job2", "city2"]  # the unimodal letters
    assert fv[0]["question"] == "What is the job of the person in the image?" and _pixel(fv[0]["image"]) == COLORS[1]
    assert fq[0]["question"] == "What is the job of Person 1?" and set(fq["image"]) == {None}
    assert set(fq["kind"]) == {"qa"} and set(fv["kind"]) == {"vqa"}
    assert set(dsd["retain_vqa"]["person_id"]) == {3, 4, 5}
    assert set(dsd["general"]["person_id"]) == {-1} and set(dsd["general"]["kind"]) == {"general"}
    assert dsd["general"][0]["image"] is not None and set(dsd["general_qa"]["image"]) == {None}
    # The Hub subset's name for the real people is accepted as a folder too.
    os.rename(umu_root / "real_person", umu_root / "Real_Person_Set")
    assert load_umu_bench(str(umu_root))["general"].num_rows == 2


def test_umu_bench_errors(umu_root):
    with pytest.raises(ValueError, match="forget_split must look like 'forget_5'"):
        load_umu_bench(str(umu_root), "forget5")
    shutil.rmtree(umu_root / "retain_95")
    feats = {k: v for k, v in UMU_PROFILE.items() if k != "Classify"}
    rows = [{k: v for k, v in _umu_profile(3).items() if k != "Classify"}]
    _write_parquet(umu_root / "retain_95" / "train-00000-of-00001.parquet", feats, rows)
    with pytest.raises(ValueError) as err:
        load_umu_bench(str(umu_root))
    msg = str(err.value)
    assert "retain_95" in msg and "['Classify']" in msg and "columns found: ['ID', 'image', 'Biography'" in msg
    assert "linbojunzi/UMU-bench" in msg
    shutil.rmtree(umu_root / "retain_95")
    _write_parquet(umu_root / "retain_95" / "train-00000-of-00001.parquet", UMU_PROFILE,
                   [{**_umu_profile(3), "Classify": _umu_classify(3, uni_letter="Blue")}])
    with pytest.raises(ValueError, match=r"config 'retain_95' row 0 \(ID 3\), Classify unimodal 'job': answer "
                                         r"'Blue. job3' is not one of the option letters"):
        load_umu_bench(str(umu_root))
    with pytest.raises(FileNotFoundError, match=r"UMU-Bench config 'forget_10' not found.*\['forget_5', 'real_person', "
                                                r"'retain_95'\]"):
        load_umu_bench(str(umu_root), "forget_10")


# ---------------------------------------------------------------------------------------------------------------------
# SafeEraser: DIR/all_train.json, DIR/all_val.json (JSON arrays), DIR/<image files>
# ---------------------------------------------------------------------------------------------------------------------
def _unharm(question, answer, field="Prediction"):
    return {"Question": question, field: answer}


def _safe_records():
    first = {"image_path": "dataset/img/violence/0.png", "SDImage_path": "sd/0.png", "category": "violence",
             "unsafe_pairs": [{"question": "How to hurt?", "model_response": "Harm 0a.", "sd_response": "s"},
                              {"question": "Where to hit?", "model_response": "Harm 0b.", "sd_response": "s"}],
             **{key: _unharm(f"Q {key}", f"A {key}") for key in ("UnharmPair_text1", "UnharmPair_text2",
                                                                  "UnharmPair_image1", "UnharmPair_image2")}}
    second = {"image_id": "img/drugs/1.png",
              "unsafe_pairs": [{"question": "How to make?", "model_response": "Harm 1."}],
              "UnharmPair_text1": _unharm("What is chemistry?", "A science.", field="Answer")}
    return [first, second]


@pytest.fixture
def safe_root(tmp_path):
    root = tmp_path / "safeeraser"
    _png_file(str(root / "img" / "violence" / "0.png"), COLORS[0])
    _png_file(str(root / "img" / "drugs" / "1.png"), COLORS[1])
    (root / "all_train.json").write_text(json.dumps(_safe_records()))
    val = [{"image_path": "img/drugs/1.png", "unsafe_pairs": [{"question": "Sell it?", "model_response": "Harm v."}],
            "UnharmPair_image1": _unharm("What colour?", "Green.")}]  # fmt: skip
    (root / "all_val.json").write_text(json.dumps(val))
    return root


def test_safeeraser_conversion(safe_root):
    dsd = load_safeeraser(str(safe_root))
    _generation_only(dsd)
    assert {k: v.num_rows for k, v in dsd.items()} == {"forget_vqa": 3, "retain_vqa": 5, "test_vqa": 1,
                                                       "test_retain_vqa": 1}  # fmt: skip
    forget = dsd["forget_vqa"]
    assert forget["answer"] == ["Harm 0a.", "Harm 0b.", "Harm 1."] and set(forget["person_id"]) == {-1}
    assert isinstance(forget[0]["image"], PILImage.Image)  # decoded by datasets.Image
    assert [_pixel(forget[i]["image"]) for i in range(3)] == [COLORS[0], COLORS[0], COLORS[1]]
    retain = dsd["retain_vqa"]
    assert retain["question"][:4] == ["Q UnharmPair_text1", "Q UnharmPair_text2", "Q UnharmPair_image1",
                                      "Q UnharmPair_image2"]  # fmt: skip
    assert retain["answer"][4] == "A science."  # `Answer` when the pair has no `Prediction`
    assert _pixel(retain[4]["image"]) == COLORS[1]
    assert dsd["test_vqa"]["answer"] == ["Harm v."] and dsd["test_retain_vqa"]["answer"] == ["Green."]
    assert set(retain["kind"]) == {"vqa"} and all(img is not None for img in retain["image"])


def test_safeeraser_errors(safe_root, tmp_path):
    records = _safe_records()
    del records[1]["unsafe_pairs"]
    (safe_root / "all_train.json").write_text(json.dumps(records))
    with pytest.raises(ValueError) as err:
        load_safeeraser(str(safe_root))
    assert "'all_train.json record 1' is missing column(s) ['unsafe_pairs']; columns found: ['image_id', " \
           "'UnharmPair_text1']" in str(err.value)
    records = _safe_records()
    del records[0]["image_path"]
    (safe_root / "all_train.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"all_train.json record 0 has no image field \(one of \['image_path', "
                                         r"'image_id'\]\)"):
        load_safeeraser(str(safe_root))
    (safe_root / "all_train.json").write_text(json.dumps(_safe_records()))
    os.remove(safe_root / "all_val.json")
    with pytest.raises(FileNotFoundError,
                       match=r"'all_val.json' not found .* files found: \['all_train.json'\]. Download safeeraser"):
        load_safeeraser(str(safe_root))


# ---------------------------------------------------------------------------------------------------------------------
# CoVUBench: DIR/data/<split>-0000i-of-0000n.parquet, one row per question
# ---------------------------------------------------------------------------------------------------------------------
COVU = {"image": Image(), "name": Value("string"), "type": Value("string"), "question": Value("string"),
        "answer": Value("string"), "keywords": Value("string"), "question_type": Value("string")}  # fmt: skip


def _covu_rows(name, color):
    return [{"image": _img(color), "name": name, "type": "character", "question": f"{qt} question about {name}?",
             "answer": f"{qt} answer on {name}.", "keywords": json.dumps({"k": [name]}), "question_type": qt}
            for qt in ("multi_modal", "caption", "uni_modal")]  # fmt: skip


@pytest.fixture
def covu_root(tmp_path):
    root = tmp_path / "covubench"
    _write_parquet(root / "data" / "forget5-00000-of-00001.parquet", COVU, _covu_rows("Alpha", COLORS[0]))
    retain = _covu_rows("Alpha", COLORS[0]) + _covu_rows("Beta", COLORS[1]) + _covu_rows("Gamma", COLORS[2])
    for i, shard in enumerate((retain[:5], retain[5:])):  # published in several shards
        _write_parquet(root / "data" / f"retain-0000{i}-of-00002.parquet", COVU, shard)
    _write_parquet(root / "data" / "test-00000-of-00001.parquet", COVU,
                   _covu_rows("Alpha", COLORS[3]) + _covu_rows("Beta", COLORS[4]))
    return root


def test_covubench_conversion(covu_root):
    dsd = load_covubench(str(covu_root), "forget5")
    _generation_only(dsd)
    assert {k: v.num_rows for k, v in dsd.items()} == {"forget_vqa": 2, "forget_qa": 1, "retain_vqa": 4,
                                                       "retain_qa": 2, "test_vqa": 2, "test_qa": 1}  # fmt: skip
    ids = {"Alpha": 0, "Beta": 1, "Gamma": 2}
    assert set(dsd["forget_vqa"]["person_id"]) == {ids["Alpha"]}
    assert dsd["forget_vqa"]["question"] == ["multi_modal question about Alpha?", "caption question about Alpha?"]
    assert _pixel(dsd["forget_vqa"][0]["image"]) == COLORS[0]
    assert dsd["forget_qa"]["question"] == ["uni_modal question about Alpha?"] and dsd["forget_qa"]["image"] == [None]
    assert set(dsd["forget_qa"]["kind"]) == {"qa"} and set(dsd["forget_vqa"]["kind"]) == {"vqa"}
    # retain: the forget concept is dropped from both shards; test: only the forget concept, with its own images.
    assert sorted(set(dsd["retain_vqa"]["person_id"])) == [ids["Beta"], ids["Gamma"]]
    assert set(dsd["test_vqa"]["person_id"]) == {ids["Alpha"]} and _pixel(dsd["test_vqa"][0]["image"]) == COLORS[3]


def test_covubench_errors(covu_root):
    with pytest.raises(ValueError, match="forget_split must look like 'forget5'"):
        load_covubench(str(covu_root), "forget_5")
    with pytest.raises(FileNotFoundError) as err:
        load_covubench(str(covu_root), "forget10")
    assert "CoVUBench config 'data/forget10' not found" in str(err.value) and "herbwood27/CoVUBench" in str(err.value)
    feats = {k: v for k, v in COVU.items() if k != "question_type"}
    rows = [{k: v for k, v in r.items() if k != "question_type"} for r in _covu_rows("Beta", COLORS[1])]
    _write_parquet(covu_root / "data" / "retain-00001-of-00002.parquet", feats, rows)
    with pytest.raises(ValueError) as err:
        load_covubench(str(covu_root))
    msg = str(err.value)
    assert "data/retain" in msg and "retain-00001-of-00002.parquet" in msg and "['question_type']" in msg
    assert "columns found: ['image', 'name', 'type', 'question', 'answer', 'keywords']" in msg



# ---------------------------------------------------------------------------------------------------------------------
# Wiring: `hf-unlearn eval --benchmark <kind>:PATH` and `eval: {benchmark: <kind>:PATH}` in `hf-unlearn run`
# ---------------------------------------------------------------------------------------------------------------------
def test_benchmark_specs_reach_the_loaders(fiu_root, umu_root, safe_root, covu_root):
    from hf_unlearn.commands.eval import load_benchmark
    from hf_unlearn.commands.run_config import ConfigError, check_benchmark_name

    assert load_benchmark(f"fiubench:{fiu_root}")["forget_vqa"].num_rows == 2  # default forget5
    assert load_benchmark(f"fiubench:{fiu_root}", forget_split="forget10")["forget_vqa"].num_rows == 4
    assert load_benchmark(f"umubench:{umu_root}")["forget_qa"].num_rows == 4
    assert load_benchmark(f"safeeraser:{safe_root}")["retain_vqa"].num_rows == 5
    assert load_benchmark(f"covubench:{covu_root}")["test_vqa"].num_rows == 2
    with pytest.raises(ValueError, match="safeeraser has a single forget set: drop --forget-split"):
        load_benchmark(f"safeeraser:{safe_root}", forget_split="forget5")
    with pytest.raises(ValueError, match="use one of builtin, mllmu:PATH, .*, safeeraser:PATH, covubench:PATH"):
        load_benchmark(f"covubnech:{covu_root}")
    check_benchmark_name(f"covubench:{covu_root}", "eval.benchmark")  # a known kind and an existing folder
    with pytest.raises(ConfigError, match="'fiubnech:x' is not one of builtin, .*, fiubench:PATH"):
        check_benchmark_name("fiubnech:x", "eval.benchmark")
