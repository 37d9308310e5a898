"""The tuning protocol: the same budget for every method, the pick closest to the oracle, a real end-to-end run."""

import json

import pytest

from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig
from hf_unlearn.demo import DemoConfig
from hf_unlearn.demo.pipeline import DISTANCE_METRICS, DemoTrainingConfig
from hf_unlearn.demo.recipe import UNTUNED, demo_hyperparameters, tuned_hyperparameters
from hf_unlearn.demo.tuning import (
    GRID_SIZE,
    TUNING_GRIDS,
    RoundRule,
    check_grids,
    grid_points,
    grid_rounds,
    select,
    tune,
    v3_grids,
    v3_round_two,
)


def test_every_method_gets_the_same_budget_and_cheap_points_come_first():
    check_grids(TUNING_GRIDS)  # raises unless every grid has the same number of points
    assert {len(grid_points(g)) for g in TUNING_GRIDS.values()} == {GRID_SIZE} == {24}
    assert all(len(rounds) == 2 and all(len(grid_points(r)) == 12 for r in rounds) for rounds in TUNING_GRIDS.values())
    points = grid_points({"learning_rate": [1e-3, 1e-4], "max_steps": [5, 20]})
    assert points[0] == {"max_steps": 5, "learning_rate": 1e-3} and points[-1]["max_steps"] == 20
    with pytest.raises(ValueError, match="same budget"):
        check_grids({"a": {"learning_rate": [1, 2]}, "b": {"learning_rate": [1, 2, 3]}}, size=2)
    # Rounds: the points of each round in turn; a point in both rounds is run (and counted) twice.
    rounds = [{"learning_rate": [1e-3], "max_steps": [5, 20]}, {"learning_rate": [1e-3, 3e-3], "max_steps": [20]}]
    assert grid_points(rounds) == [{"max_steps": 5, "learning_rate": 1e-3}, {"max_steps": 20, "learning_rate": 1e-3},
                                   {"max_steps": 20, "learning_rate": 1e-3}, {"max_steps": 20, "learning_rate": 3e-3}]
    assert grid_rounds(rounds) == rounds and grid_rounds(rounds[0]) == [rounds[0]]


def test_v3_round_two_extends_past_the_edge_round_one_picked_and_holds_the_methods_knob():
    round_one = {"learning_rate": [3e-5, 1e-4, 3e-4], "max_steps": [30, 80], "mask_threshold": [0.5, 1.0]}
    low = v3_round_two(round_one, {"learning_rate": 3e-5, "max_steps": 80, "mask_threshold": 0.5})
    assert low == {"learning_rate": [3e-6, 9e-6, 3e-5], "max_steps": [40, 80, 120, 160], "mask_threshold": [0.5]}
    high = v3_round_two(round_one, {"learning_rate": 3e-4, "max_steps": 30, "mask_threshold": 1.0})
    assert high["learning_rate"] == [3e-4, 9e-4, 3e-3] and high["max_steps"] == [15, 30, 45, 60]
    inside = v3_round_two(round_one, {"learning_rate": 1e-4, "max_steps": 30, "mask_threshold": 1.0})
    assert inside["learning_rate"] == [5e-5, 1e-4, 2e-4] and inside["mask_threshold"] == [1.0]
    # Every method keeps the protocol's budget: 12 + 12 (MANU, with no rate or budget to extend, keeps v2's round 2).
    grids = v3_grids()
    check_grids(grids)
    assert grids["manu"] == TUNING_GRIDS["manu"]
    assert all(rounds[0] == TUNING_GRIDS[m][0] and isinstance(rounds[1], RoundRule)
               for m, rounds in grids.items() if m != "manu")
    assert all(len(grid_points(RoundRule(v3_round_two)(rounds[0], {**grid_points(rounds[0])[0]})))
               == 12 for rounds in TUNING_GRIDS.values() if "learning_rate" in rounds[0])
    with pytest.raises(ValueError, match="round 1 to write from"):
        check_grids({"ga": [RoundRule(v3_round_two), TUNING_GRIDS["ga"][0]]})
    with pytest.raises(ValueError, match="not 3"):
        RoundRule(lambda *_: {"learning_rate": [1, 2]}, size=3)({}, {})


def _point(forget, qa=1.0, retain=1.0, general=0.9):
    return dict(zip(DISTANCE_METRICS, (forget, qa, retain, general)))


def test_select_picks_the_point_closest_to_the_oracle_over_seeds():
    oracle = {"1": _point(0.25), "2": _point(0.3)}
    points = [{"lr": 1}, {"lr": 2}, {"lr": 3}]
    scores = [
        {"1": _point(0.9), "2": _point(0.9)},  # did not forget
        {"1": _point(0.25, retain=0.9), "2": _point(0.3, retain=0.9)},  # forgot, lost 0.1 retain at both seeds
        {"1": _point(0.0, retain=0.2), "2": _point(0.3, retain=1.0)},  # lucky at seed 2, collapsed at seed 1
    ]
    pick = select(points, scores, oracle)
    assert pick["index"] == 1 and pick["hyperparameters"] == {"lr": 2}
    assert pick["distance"] == pytest.approx(0.1)
    assert pick["distances"][2] > pick["distances"][1]  # a single lucky seed does not win
    # Ties go to the first (cheapest) point.
    assert select(points[:2], [scores[1], scores[1]], oracle)["index"] == 0
    with pytest.raises(ValueError, match="seeds"):
        select(points[:1], [{"1": _point(0.2)}], oracle)


@pytest.mark.slow
def test_tune_end_to_end_writes_the_record_the_registry_reads(tmp_path):
    config = DemoConfig(
        benchmark=SyntheticBenchmarkConfig(num_people=4, num_holdout_people=2, num_validation_people=1,
                                           forget_ratio=0.25, num_general=4),
        training=DemoTrainingConfig(num_train_epochs=3, batch_size=8, warmup_steps=0, memorisation=None),
        relearn=None)
    grids = {"ga": [{"learning_rate": [1e-4], "max_steps": [2]}, {"learning_rate": [1e-2], "max_steps": [2]}],
             "npo": {"learning_rate": [1e-4, 1e-2], "max_steps": [2]}}
    out = tmp_path / "tuned.json"
    record = tune(["ga", "npo"], seeds=[7, 8], config=config, grids=grids, cache_dir=str(tmp_path / "cache"),
                  output=str(out), show_progress=False, log=lambda s: None)
    assert json.loads(out.read_text()) == record
    assert record["protocol"]["seeds"] == [7, 8] and set(record["oracle"]) == {"7", "8"}
    assert record["protocol"]["grid_size"] == 2 and len(record["methods"]["ga"]["grid"]) == 2  # two rounds
    for name in ("ga", "npo"):
        entry = record["methods"][name]
        distances = [p["distance"] for p in entry["points"]]
        assert entry["distance"] == min(distances)
        assert entry["picked"] == entry["points"][distances.index(min(distances))]["hyperparameters"]
        for p in entry["points"]:
            assert set(p["per_seed"]) == {"7", "8"} and set(p["per_seed"]["7"]) == set(DISTANCE_METRICS)
    # A round written by a rule sees round 1's grid and pick; a point scored before (an earlier round's, or the
    # record's under the same protocol: seeds, benchmark, metrics, budget) is scored once and reused.
    seen = []

    def repeat_the_pick(round_one, pick):
        seen.append((round_one, pick))
        return {"learning_rate": [pick["learning_rate"]], "max_steps": [pick["max_steps"]]}

    ruled = {"ga": [{"learning_rate": [1e-7], "max_steps": [2]}, RoundRule(repeat_the_pick, size=1)],
             "npo": grids["npo"]}
    said = []
    again = tune(["ga", "npo"], seeds=[7, 8], config=config, grids=ruled, cache_dir=str(tmp_path / "cache"),
                 output=str(out), show_progress=False, log=said.append, reuse_scores=True)
    assert f"[tune] reusing 4 scored points of {out}" in said  # the first record: two of ga, two of npo
    assert seen == [(ruled["ga"][0], {"max_steps": 2, "learning_rate": 1e-7})]
    assert again["methods"]["ga"]["grid"] == [ruled["ga"][0], ruled["ga"][0]]
    ga_points = again["methods"]["ga"]["points"]
    assert ga_points[1]["per_seed"] == ga_points[0]["per_seed"] and set(ga_points[0]["per_seed"]) == {"7", "8"}
    assert again["methods"]["npo"]["points"] == record["methods"]["npo"]["points"]
    assert again["protocol"]["reused_runs"] == 2 + 4  # ga's repeated pick at 2 seeds, npo's 2 points at 2 seeds
    out.write_text(json.dumps(record))
    # The demo's recipe reads the picks over the untuned starting point.
    assert tuned_hyperparameters("ga", str(out)) == record["methods"]["ga"]["picked"]
    assert tuned_hyperparameters("not_tuned", str(out)) == {}
    assert demo_hyperparameters("ga") == {**UNTUNED["ga"], **tuned_hyperparameters("ga")}


def test_tuning_starts_every_point_from_the_untuned_entry_not_from_an_earlier_pick(tmp_path):
    """Re-running the protocol reproduces the record: a picked key that a grid point does not set is put back to the
    entry's untuned value (or the config's default), so an earlier pick never leaks into the scores."""
    import hf_unlearn.demo.recipe as methods

    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"methods": {"npo": {"picked": {"beta": 2.0, "retain_weight": 7.0}}}}))
    # beta: the entry's untuned 0.4; retain_weight: not in the entry, so NPOConfig's default 1.0.
    assert methods.untuned_overrides("npo", str(tuned)) == {"beta": 0.4, "retain_weight": 1.0}
    assert methods.UNTUNED["npo"]["beta"] == 0.4 and "retain_weight" not in methods.UNTUNED["npo"]


def test_a_record_keeps_other_methods_picks_only_under_the_same_protocol(tmp_path):
    """Two tuning runs over different methods (two processes) end in one record; a record of another protocol (v2's
    accuracy metrics against v3's trusted ones, other seeds) is replaced, never mixed in."""
    from hf_unlearn.demo.tuning import merged_record

    protocol = {"seeds": [100, 101], "benchmark": {"v": 3, "image_patches": [1, 2]}, "grid_size": 24,
                "metrics": ["forget_vqa_truth"]}
    path = tmp_path / "tuned_v3.json"
    path.write_text(json.dumps({"protocol": {**protocol, "wall_time_s": 100}, "methods": {"ga": {"picked": {"max_steps": 5}},
                                                                 "npo": {"picked": {"max_steps": 9}}},
                                "relearn": {"pick": 3}}))
    # The settings of a run hold tuples where the record read back holds lists: the same protocol.
    record = {"protocol": {**protocol, "benchmark": {"v": 3, "image_patches": (1, 2)}, "wall_time_s": 30,
                           "reused_runs": 4},
              "methods": {"npo": {"picked": {"max_steps": 40}}}}
    merged = merged_record(record, str(path))
    assert merged["methods"] == {"ga": {"picked": {"max_steps": 5}}, "npo": {"picked": {"max_steps": 40}}}
    assert merged["relearn"] == {"pick": 3}
    # The merged record lists the runs that went into it and their total time.
    assert merged["protocol"]["runs"] == [{"methods": ["ga", "npo"], "wall_time_s": 100, "reused_runs": 0},
                                          {"methods": ["npo"], "wall_time_s": 30, "reused_runs": 4}]
    assert merged["protocol"]["wall_time_s"] == 130
    other = {**record, "protocol": {**protocol, "metrics": ["forget_vqa_acc"]}}
    assert merged_record(other, str(path))["methods"] == other["methods"]
    assert merged_record(record, str(tmp_path / "absent.json")) == record


def test_v3_runs_its_own_pick_from_the_untuned_entry_and_v2s_pick_otherwise(tmp_path, monkeypatch):
    import hf_unlearn.demo.recipe as recipe
    from hf_unlearn.demo.identity_report import tuning_sentence

    v3_file = tmp_path / "tuned_v3.json"
    v3_file.write_text(json.dumps({"methods": {"npo": {"picked": {"learning_rate": 1e-3, "max_steps": 80}}}}))
    monkeypatch.setattr(recipe, "TUNED_V3_FILE", str(v3_file))
    # NPO's v2 pick (tuned.json) is undone key by key, then v3's pick applies.
    assert recipe.v3_overrides("npo") == {**recipe.untuned_overrides("npo"), "learning_rate": 1e-3, "max_steps": 80}
    assert {**recipe.demo_hyperparameters("npo"), **recipe.v3_overrides("npo")}["beta"] == UNTUNED["npo"]["beta"]
    assert recipe.v3_overrides("ga") == {}  # not tuned on v3: v2's pick stays
    sentence = tuning_sentence({"npo": "v3", "ga": "v2", "vkd": "v2"})
    assert sentence.startswith("npo: the tuning protocol's picks on v3's") and "ga, vkd: the v2 demo's picks" in sentence


def test_method_distance_table_gives_each_seeds_distance_and_bolds_the_pick():
    from hf_unlearn.demo.tables import method_distance_table

    metrics = ["forget_vqa_truth", "retain_vqa_truth"]
    oracle = {"1": {"forget_vqa_truth": 0.2, "retain_vqa_truth": 0.9}, "2": {"forget_vqa_truth": 0.3,
                                                                           "retain_vqa_truth": 0.8}}
    points = [{"hyperparameters": {"max_steps": 5}, "distance": 0.45,
               "per_seed": {"1": {"forget_vqa_truth": 0.5, "retain_vqa_truth": 0.5},     # (0.3, 0.4): 0.5
                            "2": {"forget_vqa_truth": 0.7, "retain_vqa_truth": 0.8}}},    # (0.4, 0): 0.4
              {"hyperparameters": {"max_steps": 20}, "distance": 0.0, "per_seed": oracle}]
    record = {"protocol": {"seeds": [1, 2], "metrics": metrics}, "oracle": oracle,
              "methods": {"ga": {"points": points, "picked": {"max_steps": 20}}}}
    lines = method_distance_table(record, "ga").splitlines()
    assert lines[0] == "| Hyperparameters | Mean distance | seed 1 | seed 2 |"
    assert lines[2] == "| max_steps=5 | 0.450 | 0.500 | 0.400 |"
    assert lines[3] == "| **max_steps=20** | 0.000 | 0.000 | 0.000 |"
