"""MLLMU-Bench and CLEAR loaders on tiny local snapshots written in the published parquet layouts."""

import os
import shutil

import datasets
import huggingface_hub.constants
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from hf_unlearn.data.benchmarks import load_clear, load_mllmu_bench
from hf_unlearn.data.schema import MCQ_COLUMNS, benchmark_features, check_columns, check_mcq_row, has_options
from hf_unlearn.data.synthetic import vanilla_training_set

# ---------------------------------------------------------------------------------------------------------------------
# Fixture snapshots: `<root>/<config>/train-0000X-of-0000N.parquet`, columns and nesting as on the Hub
# (image columns stored as {"bytes", "path"} structs by `datasets.Image`).
# ---------------------------------------------------------------------------------------------------------------------
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (90, 90, 90)]


def _img(color):
    return PILImage.new("RGB", (8, 8), color)


def _write(root, config, features, rows, shards=1):
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(rows, features=Features(features))
    os.makedirs(root / config, exist_ok=True)
    for i in range(shards):
        ds.shard(shards, i, contiguous=True).to_parquet(str(root / config / f"train-{i:05d}-of-{shards:05d}.parquet"))


_MCQ = {"Correct_Answer": Value("string"), "Options": {k: Value("string") for k in "ABCD"}, "Question": Value("string")}
_GEN = {"Type": Value("string"), "Question": Value("string"), "Ground_Truth": Value("string")}
MLLMU_PROFILE = {
    "image": Image(), "ID": Value("string"), "biography": Value("string"), "question": Value("string"),
    "answer": Value("string"),
    "Classification_Task": {"Image_Textual_Questions": List(_MCQ), "Pure_Text_Questions": List(_MCQ)},
    "Generation_Task": List(_GEN), "Mask_Task": List(_GEN),
}  # fmt: skip
MLLMU_TEST = {  # Test_Set: a list of transformed images per profile instead of one image
    ("images" if k == "image" else k): (List(Image()) if k == "image" else v) for k, v in MLLMU_PROFILE.items()
}
MLLMU_CELEB = {**MLLMU_PROFILE, "Directory": Value("string")}


def mcq_options(question, options, letter):
    return {"Question": question, "Options": dict(zip("ABCD", options)), "Correct_Answer": letter}


def _profile(pid, image_key="image", image=None):
    """A profile with 2 image questions (answers C and A) and 2 text questions (answers B and D)."""
    cls = {
        "Image_Textual_Questions": [
            mcq_options("What is the job of the person in the image?", [f"j{pid}a", f"j{pid}b", f"job{pid}", f"j{pid}d"], "C"),
            mcq_options("Where does the person in the image live?", [f"city{pid}", "x1", "x2", "x3"], "A"),
        ],
        "Pure_Text_Questions": [
            mcq_options(f"What is the job of Person {pid}?", ["y1", f"job{pid}", "y2", "y3"], "B"),
            mcq_options(f"Where does Person {pid} live?", ["z1", "z2", "z3", f"city{pid}"], "D"),
        ],
    }
    gen = [{"Type": "Image_Textual", "Question": "q", "Ground_Truth": "a"}]
    return {image_key: image if image is not None else _img(COLORS[pid % len(COLORS)]), "ID": str(pid),
            "biography": "b", "question": "q", "answer": "a", "Classification_Task": cls, "Generation_Task": gen,
            "Mask_Task": gen}  # fmt: skip


def build_mllmu_snapshot(root):
    _write(root, "forget_5", MLLMU_PROFILE, [_profile(1), _profile(2)])
    _write(root, "retain_95", MLLMU_PROFILE, [_profile(3), _profile(4), _profile(5)])
    test_rows = [_profile(p, "images", [_img(COLORS[(p + k) % len(COLORS)]) for k in range(3)]) for p in range(1, 6)]
    _write(root, "Test_Set", MLLMU_TEST, test_rows, shards=2)  # published with 2 shards
    _write(root, "Retain_Set", MLLMU_CELEB, [{**_profile(p), "Directory": "celeb"} for p in (100, 101)])
    return root


CLEAR_PERTURBED = {
    "image": Image(), "caption": Value("string"), "name": Value("string"), "perturbed_captions": List(Value("string")),
    "paraphrased_caption": Value("string"), "perturbed_names": List(Value("string")),
}  # fmt: skip
CLEAR_TOFU = {"image": Image(), "caption": Value("string"), "question": Value("string"), "answer": Value("string")}
CLEAR_REAL = {"image": Image(), "answer": Value("string"), "options": List(Value("string"))}
FORGET_NAMES = ["Alba Vemb", "Bo Tarn"]
RETAIN_NAMES = ["Cyra Lund", "Dax Morrow", "Eli Quist", "Fay Orin"]


def _perturbed(name, others, color):
    return {"image": _img(color), "caption": "A person.", "name": name, "perturbed_captions": ["x", "y"],
            "paraphrased_caption": "p", "perturbed_names": others}  # fmt: skip


def _tofu(names):
    """Caption rows (image, no question) mixed with TOFU text rows (question, no image), as in `forgetXX+tofu`."""
    rows = []
    for i, name in enumerate(names):
        rows.append({"image": _img(COLORS[i]), "caption": f"Photo {i}.", "question": None, "answer": None})
        rows.append({"image": None, "caption": None, "question": f"What genre does {name} write?",
                     "answer": f"{name} writes genre {i}."})  # fmt: skip
        rows.append({"image": None, "caption": None, "question": f"Where was the author born (#{i})?",
                     "answer": f"{name} was born in town {i}."})  # fmt: skip
    return rows


CLEAR_PEOPLE = {"image": Image(), "caption": Value("string"), "name": Value("string")}  # forgetXX / retainXX
# In retain95 and its TOFU text, but not in retain_perturbed (the published retain_perturbed covers few people).
UNPERTURBED_NAME = "Gus Hale"


def build_clear_snapshot(root):
    forget = [
        _perturbed("Alba Vemb", ["Cyra Lund", "Zed Ash", "Yan Birk", "Xia Coe"], COLORS[0]),
        _perturbed("Alba Vemb", ["Alba Vemb", "Zed Ash", "Zed Ash"], COLORS[1]),  # only 1 usable distractor
        _perturbed("Bo Tarn", ["Wes Dorn", "Vic Earl", "Uma Fenn"], COLORS[2]),
    ]
    _write(root, "forget05_perturbed", CLEAR_PERTURBED, forget)
    retain = [_perturbed(n, ["Wes Dorn", "Vic Earl", "Uma Fenn"], COLORS[3 + i]) for i, n in enumerate(RETAIN_NAMES)]
    retain.append(_perturbed("Bo Tarn", ["Wes Dorn", "Vic Earl", "Uma Fenn"], COLORS[6]))  # a forget person: dropped
    _write(root, "retain_perturbed", CLEAR_PERTURBED, retain)
    _write(root, "forget05+tofu", CLEAR_TOFU, _tofu(FORGET_NAMES))
    _write(root, "retain95+tofu", CLEAR_TOFU, _tofu(RETAIN_NAMES + [UNPERTURBED_NAME]))
    people = lambda names: [{"image": _img(COLORS[i]), "caption": "c", "name": n} for i, n in enumerate(names)]  # noqa
    _write(root, "forget05", CLEAR_PEOPLE, people(FORGET_NAMES))
    _write(root, "retain95", CLEAR_PEOPLE, people(RETAIN_NAMES + [UNPERTURBED_NAME]), shards=2)
    real = [{"image": _img(COLORS[i]), "answer": f"Celeb {i}", "options": [f"Other {i}{k}" for k in "abc"]}
            for i in range(4)]  # fmt: skip
    _write(root, "real_faces", CLEAR_REAL, real)
    return root


@pytest.fixture(scope="module")
def mllmu_root(tmp_path_factory):
    return build_mllmu_snapshot(tmp_path_factory.mktemp("mllmu"))


@pytest.fixture(scope="module")
def clear_root(tmp_path_factory):
    return build_clear_snapshot(tmp_path_factory.mktemp("clear"))


def _pixel(image):
    return tuple(int(v) for v in np.asarray(image)[0, 0])


def _check_schema(dsd, generation_only=()):
    for name, ds in dsd.items():
        assert ds.features == benchmark_features(), name
        check_columns(ds, MCQ_COLUMNS, name)
        assert has_options(ds) == (name not in generation_only), name
        for i, row in enumerate(ds.select_columns(list(MCQ_COLUMNS)).to_list()):
            if name in generation_only:
                assert row["options"] is None and row["label"] is None
            else:
                check_mcq_row(row, f"{name}[{i}]")


# ---------------------------------------------------------------------------------------------------------------------
# MLLMU-Bench
# ---------------------------------------------------------------------------------------------------------------------
def test_mllmu_conversion(mllmu_root):
    dsd = load_mllmu_bench(str(mllmu_root), "forget_5")
    _check_schema(dsd)
    sizes = {k: v.num_rows for k, v in dsd.items()}
    assert sizes == {"forget_vqa": 4, "forget_qa": 4, "retain_vqa": 6, "retain_qa": 6, "test_vqa": 4, "test_qa": 4,
                     "general": 4, "general_qa": 4}  # fmt: skip
    row = dsd["forget_vqa"][0]
    assert row["person_id"] == 1 and row["kind"] == "vqa"
    assert row["options"] == ["j1a", "j1b", "job1", "j1d"] and row["label"] == 2 and row["answer"] == "job1"
    assert _pixel(row["image"]) == COLORS[1]  # the profile's own image, decoded by datasets.Image
    qa = dsd["forget_qa"].to_list()
    assert [r["label"] for r in qa] == [1, 3, 1, 3] and {r["image"] for r in qa} == {None}
    assert [r["answer"] for r in qa] == ["job1", "city1", "job2", "city2"]
    assert set(dsd["retain_vqa"]["person_id"]) == {3, 4, 5} and set(dsd["forget_vqa"]["person_id"]) == {1, 2}
    assert set(dsd["test_vqa"]["person_id"]) == {1, 2}  # Test_Set restricted to the forget IDs (from 2 shards)
    assert set(dsd["general"]["person_id"]) == {-1} and set(dsd["general"]["kind"]) == {"general"}
    assert dsd["general"][0]["image"] is not None and set(dsd["general_qa"]["image"]) == {None}
    assert vanilla_training_set(dsd).num_rows == 4 + 4 + 6 + 6 + 4  # the splits concatenate (same features)


def test_mllmu_test_image_choice_is_seeded(mllmu_root):
    def chosen(seed):
        ds = load_mllmu_bench(str(mllmu_root), image_choice_seed=seed)["test_vqa"]
        return tuple(_pixel(img) for img in ds["image"])

    candidates = {p: {COLORS[(p + k) % len(COLORS)] for k in range(3)} for p in (1, 2)}
    first = chosen(0)
    assert first == chosen(0)  # same seed, same images
    assert first[0] == first[1] and first[2] == first[3]  # one image per profile, shared by its questions
    assert first[0] in candidates[1] and first[2] in candidates[2]
    assert len({chosen(s) for s in range(6)}) > 1  # the seed changes the choice


def test_mllmu_errors(mllmu_root, tmp_path):
    with pytest.raises(ValueError, match="forget_split must look like"):
        load_mllmu_bench(str(mllmu_root), "forget5")
    # A forget config without the Classification_Task column.
    broken = tmp_path / "broken"
    shutil.copytree(mllmu_root, broken)
    shutil.rmtree(broken / "forget_5")
    feats = {k: v for k, v in MLLMU_PROFILE.items() if k != "Classification_Task"}
    _write(broken, "forget_5", feats, [{k: v for k, v in _profile(1).items() if k != "Classification_Task"}])
    with pytest.raises(ValueError) as err:
        load_mllmu_bench(str(broken))
    msg = str(err.value)
    assert "forget_5" in msg and "['Classification_Task']" in msg and "columns found: ['image', 'ID'" in msg
    # A missing config directory.
    shutil.rmtree(broken / "Retain_Set")
    shutil.rmtree(broken / "forget_5")
    _write(broken, "forget_5", MLLMU_PROFILE, [_profile(1)])
    with pytest.raises(FileNotFoundError) as err:
        load_mllmu_bench(str(broken))
    msg = str(err.value)
    assert "'Retain_Set' not found" in msg and "['Test_Set', 'forget_5', 'retain_95']" in msg and "hf download" in msg


def test_hub_id_offline_and_bad_path_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="Could not load config 'forget_5' of the Hub dataset") as err:
        load_mllmu_bench("MLLMMU/MLLMU-Bench")
    assert "hf download MLLMMU/MLLMU-Bench --repo-type dataset" in str(err.value)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_clear(str(tmp_path / "no" / "such" / "dir"))


# ---------------------------------------------------------------------------------------------------------------------
# CLEAR
# ---------------------------------------------------------------------------------------------------------------------
def test_clear_conversion(clear_root):
    dsd = load_clear(str(clear_root), "forget05")
    _check_schema(dsd, generation_only=("forget_qa", "retain_qa"))
    assert {k: v.num_rows for k, v in dsd.items()} == {"forget_vqa": 3, "forget_qa": 4, "retain_vqa": 4,
                                                       "retain_qa": 10, "general": 4}  # fmt: skip
    ids = {n: i for i, n in enumerate(sorted(FORGET_NAMES + RETAIN_NAMES + [UNPERTURBED_NAME]))}
    fv = dsd["forget_vqa"].to_list()
    assert [r["answer"] for r in fv] == ["Alba Vemb", "Alba Vemb", "Bo Tarn"]
    assert [r["person_id"] for r in fv] == [ids["Alba Vemb"], ids["Alba Vemb"], ids["Bo Tarn"]]
    assert fv[0]["question"] == "What is the name of the person in the image?" and fv[0]["kind"] == "vqa"
    # Every perturbed name is an option (5 options), as in MMUnlearner's protocol: not only the first 3.
    assert sorted(fv[0]["options"]) == sorted(["Alba Vemb", "Cyra Lund", "Zed Ash", "Yan Birk", "Xia Coe"])
    assert sorted(fv[2]["options"]) == sorted(["Bo Tarn", "Wes Dorn", "Vic Earl", "Uma Fenn"])
    # Row 1 has a single usable perturbed name: topped up with 2 other known names.
    assert "Zed Ash" in fv[1]["options"] and len(set(fv[1]["options"]) - {"Alba Vemb", "Zed Ash"}) == 2
    assert len(fv[1]["options"]) == 4
    assert _pixel(dsd["forget_vqa"][2]["image"]) == COLORS[2]  # to_list() keeps images encoded; indexing decodes
    assert [r["answer"] for r in dsd["retain_vqa"].to_list()] == RETAIN_NAMES  # the forget person is dropped
    fq = dsd["forget_qa"].to_list()
    assert all(r["image"] is None and r["kind"] == "qa" for r in fq)  # caption rows are skipped
    assert [r["person_id"] for r in fq] == [ids["Alba Vemb"]] * 2 + [ids["Bo Tarn"]] * 2  # name found in the text
    # Text questions carry no invented distractors: generation-only, scored by ROUGE-L.
    assert {(r["options"], r["label"]) for r in fq} == {(None, None)}
    # A retain person absent from retain_perturbed still gets their id from retain95's name list (was -1).
    rq = dsd["retain_qa"].to_list()
    assert [r["person_id"] for r in rq if UNPERTURBED_NAME in r["answer"]] == [ids[UNPERTURBED_NAME]] * 2
    assert -1 not in {r["person_id"] for r in rq}
    general = dsd["general"].to_list()
    assert all(r["person_id"] == -1 and r["question"] == "What is the name of the person in the image?"
               for r in general)  # fmt: skip
    assert sorted(general[1]["options"]) == ["Celeb 1", "Other 1a", "Other 1b", "Other 1c"]
    # Seeded positions: reproducible, and another seed moves them.
    labels = [r["label"] for r in fv + general]
    assert labels == [r["label"] for s in ("forget_vqa", "general") for r in load_clear(str(clear_root))[s].to_list()]
    other = load_clear(str(clear_root), option_seed=1)
    assert labels != [r["label"] for s in ("forget_vqa", "general") for r in other[s].to_list()]


def test_clear_errors(clear_root, tmp_path):
    with pytest.raises(ValueError, match="forget_split must look like 'forget01'"):
        load_clear(str(clear_root), "forget_05")
    broken = tmp_path / "broken"
    shutil.copytree(clear_root, broken)
    shutil.rmtree(broken / "forget05_perturbed")
    feats = {k: v for k, v in CLEAR_PERTURBED.items() if k != "perturbed_names"}
    row = {k: v for k, v in _perturbed("Alba Vemb", [], COLORS[0]).items() if k != "perturbed_names"}
    _write(broken, "forget05_perturbed", feats, [row])
    with pytest.raises(ValueError) as err:
        load_clear(str(broken))
    msg = str(err.value)
    assert "forget05_perturbed" in msg and "['perturbed_names']" in msg
    assert "columns found: ['image', 'caption', 'name', 'perturbed_captions', 'paraphrased_caption']" in msg
    with pytest.raises(FileNotFoundError, match="config 'forget10_perturbed' not found"):
        load_clear(str(clear_root), "forget10")
    shutil.rmtree(broken / "retain95+tofu")
    shutil.rmtree(broken / "forget05_perturbed")
    _write(broken, "forget05_perturbed", CLEAR_PERTURBED, [_perturbed("Alba Vemb", ["A B", "C D", "E F"], COLORS[0])])
    with pytest.raises(FileNotFoundError) as err:
        load_clear(str(broken))
    msg = str(err.value)
    assert "CLEAR config 'retain95+tofu' not found" in msg
    assert "['forget05', 'forget05+tofu', 'forget05_perturbed', 'real_faces', 'retain95', 'retain_perturbed']" in msg


# ---------------------------------------------------------------------------------------------------------------------
# Reading robustly: LFS pointers, every shard's columns, mistyped relative paths, Test_Set filtered while reading
# ---------------------------------------------------------------------------------------------------------------------
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 353045312\n"
)


def test_git_clone_without_lfs_names_the_fix(mllmu_root, tmp_path):
    cloned = tmp_path / "cloned"
    shutil.copytree(mllmu_root, cloned)
    (cloned / "Test_Set" / "train-00001-of-00002.parquet").write_text(LFS_POINTER)  # what git leaves without git-lfs
    with pytest.raises(ValueError) as err:
        load_mllmu_bench(str(cloned))
    msg = str(err.value)
    assert "train-00001-of-00002.parquet is a Git LFS pointer file" in msg and "git lfs pull" in msg
    (cloned / "Test_Set" / "train-00001-of-00002.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ValueError, match="is not a readable parquet file .* download it again"):
        load_mllmu_bench(str(cloned))


def test_every_shard_is_checked(mllmu_root, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mllmu_root, broken)
    # The second Test_Set shard lacks Classification_Task; the first one is fine.
    feats = {k: v for k, v in MLLMU_TEST.items() if k != "Classification_Task"}
    row = {k: v for k, v in _profile(2, "images", [_img(COLORS[0])]).items() if k != "Classification_Task"}
    datasets.Dataset.from_list([row], features=Features(feats)).to_parquet(
        str(broken / "Test_Set" / "train-00001-of-00002.parquet"))
    with pytest.raises(ValueError) as err:
        load_mllmu_bench(str(broken))
    msg = str(err.value)
    assert "Test_Set" in msg and "train-00001-of-00002.parquet" in msg and "['Classification_Task']" in msg


def test_missing_relative_path_is_not_a_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    # `data/` exists but not `data/MLLMU-Bench` (the README's path, run from the wrong place): never a Hub lookup.
    with pytest.raises(FileNotFoundError, match="'data/MLLMU-Bench' is not a directory"):
        load_mllmu_bench("data/MLLMU-Bench")
    # Neither component exists: the Hub lookup fails too, and the error still says "not a directory" first.
    with pytest.raises(FileNotFoundError, match="'downloads/CLEAR' is not a directory .* loading it as a Hub dataset"):
        load_clear("downloads/CLEAR")


def test_test_set_is_filtered_while_reading(tmp_path, monkeypatch):
    root = tmp_path / "mllmu"
    build_mllmu_snapshot(root)
    # Rewrite Test_Set as one shard with one profile per row group (the published shards hold many row groups).
    shutil.rmtree(root / "Test_Set")
    (root / "Test_Set").mkdir()
    rows = [_profile(p, "images", [_img(COLORS[(p + k) % len(COLORS)]) for k in range(2)]) for p in range(1, 6)]
    datasets.Dataset.from_list(rows, features=Features(MLLMU_TEST)).to_parquet(
        str(root / "Test_Set" / "train-00000-of-00001.parquet"), batch_size=1)
    path = str(root / "Test_Set" / "train-00000-of-00001.parquet")
    assert pq.ParquetFile(path).num_row_groups == 5
    read_groups, full_reads = [], []
    original_groups, original_table = pq.ParquetFile.read_row_groups, pq.read_table
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, groups, **kw: read_groups.append(
        list(groups)) or original_groups(self, groups, **kw))
    monkeypatch.setattr(pq, "read_table", lambda p, **kw: full_reads.append(p) or original_table(p, **kw))
    dsd = load_mllmu_bench(str(root), "forget_5")
    assert set(dsd["test_vqa"]["person_id"]) == {1, 2} and dsd["test_vqa"].num_rows == 4
    assert read_groups == [[0, 1]]  # only the forget profiles' row groups were read in full
    assert not any("Test_Set" in p for p in full_reads)
