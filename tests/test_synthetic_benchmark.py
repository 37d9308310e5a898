"""The built-in synthetic benchmark: sizes, schema, determinism, disjointness, options, portraits."""

import dataclasses
import itertools

import datasets
import numpy as np
import pytest

from hf_unlearn.data.portraits import draw_portrait, sample_traits, transform_portrait
from hf_unlearn.data.schema import MCQ_COLUMNS, REQUIRED_TRAIN_COLUMNS, benchmark_features, check_columns, check_mcq_row
from hf_unlearn.data.synthetic import (
    ATTRIBUTE_POOLS,
    FIRST_NAMES,
    LAST_NAMES,
    QA_TEMPLATES,
    SYNTHETIC_SPLITS,
    VQA_TEMPLATES,
    SyntheticBenchmarkConfig,
    benchmark_corpus,
    build_synthetic_benchmark,
    oracle_training_set,
    vanilla_training_set,
)

ALL_NAMES = {f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES}
# Mean absolute pixel distance between the portraits of any two of the 60 default people (measured min: 13.0 at
# seed 0, 11.6-16.4 over seeds 0-4; beyond ~50 people some pairs share two of the three large regions).
MIN_PAIR_DISTANCE = 10.0


@pytest.fixture(scope="module")
def dsd():
    return build_synthetic_benchmark()


def _raw(ds: datasets.Dataset) -> list[dict]:
    """Rows with images as stored PNG bytes (no decoding)."""
    return ds.cast_column("image", datasets.Image(decode=False)).to_list()


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def test_default_sizes_and_schema(dsd):
    assert tuple(dsd) == SYNTHETIC_SPLITS
    # 50 trained people, 5 forget (round(0.1 * 50)), 45 retain, 5 holdout, 5 validation; 10 questions per person and
    # modality: >= 50 forget-VQA and forget-QA questions, so accuracies move in steps of 0.02.
    sizes = {name: ds.num_rows for name, ds in dsd.items()}
    assert sizes == {
        "forget_vqa": 50, "forget_qa": 50, "retain_vqa": 450, "retain_qa": 450, "test_vqa": 50,
        "test_retain_vqa": 450, "holdout_vqa": 50, "holdout_qa": 50, "validation_vqa": 50, "validation_qa": 50,
        "general": 200,
    }  # fmt: skip
    for name, ds in dsd.items():
        assert ds.features == benchmark_features(), name
        check_columns(ds, MCQ_COLUMNS + REQUIRED_TRAIN_COLUMNS, name)
    img = dsd["forget_vqa"][0]["image"]
    assert img.mode == "RGB" and img.size == (32, 32)


def test_build_is_deterministic_and_seed_dependent(dsd):
    again = build_synthetic_benchmark(SyntheticBenchmarkConfig())
    for name in SYNTHETIC_SPLITS:
        assert _raw(dsd[name]) == _raw(again[name]), name  # same rows, byte-identical PNGs
    other = build_synthetic_benchmark(SyntheticBenchmarkConfig(seed=1))
    assert _raw(other["forget_vqa"]) != _raw(dsd["forget_vqa"])
    assert other["retain_qa"]["question"] != dsd["retain_qa"]["question"]


@pytest.mark.parametrize(("num_people", "ratio"), [(20, 0.1), (10, 0.01), (30, 0.15), (9, 0.5)])
def test_splits_disjoint_by_person_and_forget_count(num_people, ratio):
    cfg = SyntheticBenchmarkConfig(num_people=num_people, forget_ratio=ratio, num_holdout_people=3,
                                   num_validation_people=2, num_general=4)
    d = build_synthetic_benchmark(cfg)
    ids = {name: set(d[name]["person_id"]) for name in SYNTHETIC_SPLITS}
    assert len(ids["forget_vqa"]) == max(1, round(ratio * num_people))
    assert ids["forget_vqa"] == ids["forget_qa"] == ids["test_vqa"]
    assert ids["retain_vqa"] == ids["retain_qa"] == ids["test_retain_vqa"]
    assert ids["holdout_vqa"] == ids["holdout_qa"] and len(ids["holdout_vqa"]) == 3
    assert ids["validation_vqa"] == ids["validation_qa"] and len(ids["validation_vqa"]) == 2
    groups = [ids["forget_vqa"], ids["retain_vqa"], ids["holdout_vqa"], ids["validation_vqa"]]
    assert all(not (a & b) for a, b in itertools.combinations(groups, 2))
    assert set.union(*groups) == set(range(num_people + 5))
    assert ids["general"] == {-1} and set(d["general"]["kind"]) == {"general"}


def test_questions_names_and_images(dsd):
    people_names = {row["answer"] for row in dsd["forget_vqa"].select_columns(["question", "answer"]).to_list()
                    if row["question"] == VQA_TEMPLATES["name"]}  # fmt: skip
    for split in ("retain_vqa", "holdout_vqa", "validation_vqa"):
        people_names |= {r["answer"] for r in dsd[split].select_columns(["question", "answer"]).to_list()
                         if r["question"] == VQA_TEMPLATES["name"]}  # fmt: skip
    assert len(people_names) == 60  # unique names
    for split in ("forget_vqa", "retain_vqa", "test_vqa", "test_retain_vqa", "holdout_vqa", "validation_vqa"):
        ds = dsd[split]
        assert set(ds["kind"]) == {"vqa"}
        assert set(ds["question"]) == set(VQA_TEMPLATES.values())
        assert not any(name in q for q in ds["question"] for name in people_names)
        assert all(img is not None for img in ds.cast_column("image", datasets.Image(decode=False))["image"])
    for split in ("forget_qa", "retain_qa", "holdout_qa", "validation_qa"):
        ds = dsd[split]
        assert set(ds["kind"]) == {"qa"} and set(ds["image"]) == {None}
        for pid in set(ds["person_id"]):
            rows = ds.filter(lambda r: r["person_id"] == pid).to_list()
            assert len(rows) == len(QA_TEMPLATES) == 10
            named = [n for n in people_names if n in rows[0]["question"]]
            assert len(named) == 1 and all(named[0] in r["question"] for r in rows)


def test_options_labels_and_types(dsd):
    labels = []
    attribute_of_question = {t: k for k, t in VQA_TEMPLATES.items()}
    for name, ds in dsd.items():
        for i, row in enumerate(ds.select_columns(["question", "answer", "options", "label"]).to_list()):
            check_mcq_row(row, f"{name}[{i}]")
            assert len(set(row["options"])) == 4 and row["answer"] == row["options"][row["label"]]
            key = attribute_of_question.get(row["question"])
            if key is None and name.endswith("_qa"):
                key = next(k for k, t in QA_TEMPLATES.items() if t.split("{")[0] in row["question"])
            if key == "name":
                assert set(row["options"]) <= ALL_NAMES
            elif key is not None:
                assert set(row["options"]) <= set(ATTRIBUTE_POOLS[key]), (name, key)
            labels.append(row["label"])
    fractions = np.bincount(labels, minlength=4) / len(labels)
    assert len(labels) == 1900 and np.all((fractions >= 0.10) & (fractions <= 0.40)), fractions


def test_test_portraits_are_recognisable_variants(dsd):
    originals, variants = {}, {}
    for orig_split, test_split in (("forget_vqa", "test_vqa"), ("retain_vqa", "test_retain_vqa")):
        for row in dsd[orig_split].select_columns(["person_id", "image"]):
            originals.setdefault(row["person_id"], _pixels(row["image"]))
        for row in dsd[test_split].select_columns(["person_id", "image"]):
            variants.setdefault(row["person_id"], _pixels(row["image"]))
    pids = sorted(originals)
    assert sorted(variants) == pids and len(pids) == 50
    dist = np.array([[np.abs(variants[a] - originals[b]).mean() for b in pids] for a in pids])  # (variant, original)
    own = np.diag(dist)
    nearest_other = np.where(np.eye(len(pids), dtype=bool), np.inf, dist).min(axis=1)
    assert own.min() > 3.0  # visibly transformed (measured, seed 0: 7.2 .. 22.5 grey levels)
    assert np.all(own < nearest_other)  # still closer to its own original than to anyone else's
    assert (nearest_other - own).min() > 5.0  # with a margin (measured, seed 0: 11.9; >= 6.4 over seeds 0..39)


def test_people_are_visually_distinct(dsd):
    rng = np.random.default_rng(0)
    traits = sample_traits(25, rng)
    large = [sum(x != y for x, y in zip(a.large_regions(), b.large_regions())) for a, b in
             itertools.combinations(traits, 2)]  # fmt: skip
    assert min(large) >= 2  # background / shirt / hair colour: at least two differ for every pair
    imgs = {}
    for split in ("forget_vqa", "retain_vqa", "holdout_vqa", "validation_vqa"):
        for row in dsd[split].select_columns(["person_id", "image"]):
            imgs.setdefault(row["person_id"], _pixels(row["image"]))
    pair = [np.abs(imgs[a] - imgs[b]).mean() for a, b in itertools.combinations(sorted(imgs), 2)]
    assert len(imgs) == 60 and min(pair) > MIN_PAIR_DISTANCE  # mean abs pixel distance of any two people


def test_portrait_functions_direct():
    traits = sample_traits(3, np.random.default_rng(5))
    a = draw_portrait(traits[0], 16, np.random.default_rng(1))
    assert a.size == (16, 16) and a.mode == "RGB"
    assert np.array_equal(_pixels(a), _pixels(draw_portrait(traits[0], 16, np.random.default_rng(1))))
    b = transform_portrait(a, np.random.default_rng(2))
    assert b.size == a.size and not np.array_equal(_pixels(a), _pixels(b))
    with pytest.raises(ValueError, match="at least 8"):
        draw_portrait(traits[0], 4, np.random.default_rng(1))


def test_training_sets_and_corpus(dsd):
    vanilla, oracle = vanilla_training_set(dsd), oracle_training_set(dsd)
    assert vanilla.num_rows == 50 + 50 + 450 + 450 + 50 + 50 + 200 and oracle.num_rows == vanilla.num_rows - 50
    forget_people = set(dsd["forget_vqa"]["person_id"])
    unseen_faces = forget_people | set(dsd["holdout_vqa"]["person_id"]) | set(dsd["validation_vqa"]["person_id"])
    oracle_rows = oracle.select_columns(["person_id", "kind"]).to_list()
    assert not any(r["person_id"] in unseen_faces and r["kind"] == "vqa" for r in oracle_rows)
    # Text facts of the forget people kept; holdout / validation people known by text only, in both models.
    assert sum(r["person_id"] in forget_people and r["kind"] == "qa" for r in oracle_rows) == 50
    assert sum(r["person_id"] in unseen_faces and r["kind"] == "qa" for r in oracle_rows) == 150
    text_only_people = unseen_faces - forget_people
    vanilla_rows = vanilla.select_columns(["person_id", "kind"]).to_list()
    assert {r["kind"] for r in vanilla_rows if r["person_id"] in text_only_people} == {"qa"}
    corpus = benchmark_corpus(dsd)
    assert len(corpus) == 6 * sum(ds.num_rows for ds in dsd.values())
    for ds in dsd.values():
        assert set(ds["question"]) | set(ds["answer"]) | {o for opts in ds["options"] for o in opts} <= set(corpus)
    with pytest.raises(KeyError, match="missing \\['general'\\]"):
        vanilla_training_set(datasets.DatasetDict({k: v for k, v in dsd.items() if k != "general"}))


def test_config_validation_and_help():
    for field in dataclasses.fields(SyntheticBenchmarkConfig):
        assert field.metadata.get("help"), field.name
    with pytest.raises(ValueError, match="forget_ratio must be in"):
        SyntheticBenchmarkConfig(forget_ratio=1.0)
    with pytest.raises(ValueError, match="num_people must be >= 2"):
        SyntheticBenchmarkConfig(num_people=1)
    with pytest.raises(ValueError, match="at least one person is retained"):
        SyntheticBenchmarkConfig(num_people=2, forget_ratio=0.9)
    small = build_synthetic_benchmark(SyntheticBenchmarkConfig(num_people=3, num_holdout_people=0,
                                                               num_validation_people=0, num_general=0,
                                                               image_size=16))  # fmt: skip
    assert small["holdout_vqa"].num_rows == 0 and small["general"].num_rows == 0
    assert small["holdout_vqa"].features == benchmark_features()
    assert small["forget_vqa"][0]["image"].size == (16, 16)
    # Only 3 people: name options are topped up with unused names, still 4 distinct.
    names = [r for r in small["retain_vqa"].to_list() if r["question"] == VQA_TEMPLATES["name"]]
    assert all(len(set(r["options"])) == 4 for r in names)
