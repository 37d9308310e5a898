"""The published numbers: README and docs tables equal what the script renders from the committed results, and the
committed run is the multi-seed run the docs say it is (seeds never used for tuning, calibrated attack)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn.demo.tables import RESULTS_FILE, TUNING_FILE, block_in, load_blocks, replace_blocks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results():
    return json.loads((ROOT / RESULTS_FILE).read_text())


@pytest.fixture(scope="module")
def tuning():
    return json.loads((ROOT / TUNING_FILE).read_text())


def test_readme_and_docs_tables_equal_the_script_output():
    blocks = load_blocks(str(ROOT / RESULTS_FILE), str(ROOT / TUNING_FILE))
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "benchmark.md").read_text()
    assert block_in(readme, "v3-demo-table") == blocks["v3-demo-table"]
    assert block_in(docs, "demo-table-full") == blocks["demo-table-full"]  # v2's last run, retired
    assert block_in(docs, "v3-validity-table") == blocks["v3-validity-table"]
    assert block_in(docs, "tuning-table") == blocks["tuning-table"]
    text_docs = (ROOT / "docs" / "text.md").read_text()
    assert block_in(text_docs, "text-demo-table") == blocks["text-demo-table"]
    real_docs = (ROOT / "docs" / "real_weights.md").read_text()
    assert block_in(real_docs, "real-demo-table") == blocks["real-demo-table"]
    v3_docs = (ROOT / "docs" / "benchmark_v3.md").read_text()
    assert block_in(v3_docs, "v3-demo-table-full") == blocks["v3-demo-table-full"]
    assert block_in(v3_docs, "v3-relearn-calibration") == blocks["v3-relearn-calibration"]
    for name in ("ga", "npo", "mmunlearner", "vkd"):  # every method page carries its tuning grid
        assert f"tuning-{name}" in blocks
    # The check can fail: an edited cell is caught by the script's --check mode.
    edited = readme.replace(blocks["v3-demo-table"], blocks["v3-demo-table"].replace("| vanilla |", "| vanilla* |"))
    assert block_in(edited, "v3-demo-table") != blocks["v3-demo-table"]
    assert replace_blocks(edited, blocks) == readme
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_tables.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_committed_run_is_a_multi_seed_run_with_intervals(results):
    seeds = results["benchmark"]["seeds"]
    assert len(seeds) >= 5
    assert results["num_questions"]["forget_vqa"] >= 50 and results["num_questions"]["forget_qa"] >= 50
    assert set(results["per_seed"]) == {str(s) for s in seeds}
    for model, metrics in results["methods"].items():
        for key, value in metrics.items():
            if value is None:
                continue
            lo, hi = results["intervals"][model][key]
            assert lo - 1e-9 <= value <= hi + 1e-9, (model, key)
    for key in ("date", "wall_time_s", "machine"):
        assert results["run"][key]


def test_reported_seeds_were_never_used_for_tuning(results, tuning):
    assert not set(results["benchmark"]["seeds"]) & set(tuning["protocol"]["seeds"])
    assert not set(results["benchmark"]["seeds"]) & set(tuning["relearn"]["seeds"])
    # The demo ran with the tuning protocol's picks and the calibrated attack.
    assert results["benchmark"]["tuning"]["seeds"] == tuning["protocol"]["seeds"]
    assert results["benchmark"]["tuning"]["relearn_seeds"] == tuning["relearn"]["seeds"]
    pick = tuning["relearn"]["pick"]
    assert results["benchmark"]["tuning"]["relearn_pick"] == pick
    assert (results["benchmark"]["relearn"]["learning_rate"], results["benchmark"]["relearn"]["steps"]) == (
        pick["learning_rate"], pick["steps"])


def test_the_relearning_attack_does_not_damage_a_model_that_knows_the_answers(results, tuning):
    """The calibrated budget: at every reported seed where vanilla answers every attack test row, it loses at most
    what the calibration allowed. Where vanilla is unsure of some rows the attack can cost it a few of them (seen at
    3 of 5 seeds: 2-3 of 25 rows); docs/benchmark.md states those numbers, and this test keeps them bounded."""
    allowed = tuning["relearn"]["max_vanilla_drop"]
    sure = 0
    for seed, models in results["per_seed"].items():
        before, after = models["vanilla"]["relearn_pre_acc"], models["vanilla"]["relearn_acc"]
        if before == 1.0:
            sure += 1
            assert after >= before - allowed, seed
        assert after >= before - 0.15, seed  # never more than a few rows
    assert sure >= 2  # the check above is not vacuous


def test_the_v3_run_ran_the_v3_picks_and_reports_no_validation_seed():
    """The published v3 run: every registered method, each with the pick the run says it ran (v3's tuning record,
    or v2's where not tuned on v3), the calibrated relearning budget, five seeds none of which was a v3 validation
    seed (tuning or calibration)."""
    from hf_unlearn import METHODS
    from hf_unlearn.demo.recipe import UNTUNED
    from hf_unlearn.demo.tables import V3_RESULTS_FILE, V3_TUNING_FILE

    published = json.loads((ROOT / V3_RESULTS_FILE).read_text())
    run = published["benchmark"]
    tuned = json.loads((ROOT / V3_TUNING_FILE).read_text())
    assert run["seeds"] == [0, 1, 2, 3, 4] and set(run["methods"]) == set(METHODS)
    assert not set(run["seeds"]) & (set(tuned["protocol"]["seeds"]) | set(tuned["relearn"]["seeds"]))
    assert {k: run["relearn"][k] for k in ("learning_rate", "steps")} == tuned["relearn"]["pick"]
    assert run["quantize"] and published["validity"] and all(published["validity"].values())
    assert set(run["tuning"].values()) == {"v3"}  # every method tuned on v3 itself
    assert set(run["tuning"]) == set(run["methods"])
    for name, source in run["tuning"].items():
        hyperparameters = run["hyperparameters"][name]
        if source == "v3":
            picked = tuned["methods"][name]["picked"]
            assert {k: hyperparameters[k] for k in picked} == picked, name
            assert all(hyperparameters[k] == v for k, v in UNTUNED[name].items() if k not in picked), name
        else:
            assert source == "v2" and name not in tuned["methods"], name


def test_the_v3_tuning_record_ran_v3s_grids_and_picked_its_closest_point():
    """Every method of ``tuned_v3.json`` ran v2's round 1 and the round 2 that ``v3_round_two`` writes from that
    round's closest point (the rule, not a hand-written grid), and its pick is the closest of all its points."""
    from hf_unlearn.demo.tables import V3_TUNING_FILE
    from hf_unlearn.demo.tuning import TUNING_GRIDS, grid_points, v3_grids

    tuned = json.loads((ROOT / V3_TUNING_FILE).read_text())
    assert tuned["methods"]
    for name, entry in tuned["methods"].items():
        round_one, rule = v3_grids()[name]
        points = entry["points"]
        assert entry["grid"][0] == round_one and [p["hyperparameters"] for p in points[:12]] == grid_points(round_one)
        best = min(points[:12], key=lambda p: p["distance"])["hyperparameters"]
        expected = rule(round_one, best) if callable(rule) else TUNING_GRIDS[name][1]
        assert entry["grid"][1] == expected, name
        assert [p["hyperparameters"] for p in points[12:]] == grid_points(expected), name
        assert entry["picked"] == min(points, key=lambda p: p["distance"])["hyperparameters"], name


def test_a_published_seed_reproduces_itself_and_a_moved_cell_is_reported(tmp_path):
    """``scripts/compare_to_published.py``: the published seed 0 against the published run is equal and inside the
    spread in every cell; a cell moved past the spread is listed and fails the script."""
    import copy

    from hf_unlearn.demo.reproduction import compare_to_published
    from hf_unlearn.demo.tables import V3_RESULTS_FILE

    published = json.loads((ROOT / V3_RESULTS_FILE).read_text())
    seed0 = {"per_seed": {"0": published["per_seed"]["0"]}}
    report = compare_to_published(seed0, published)
    assert report["cells"] >= 15 * 18 // 2 and report["equal"] == report["inside_spread"] == report["cells"]
    assert report["inside_interval"] < report["cells"]  # one seed is not expected inside the mean's interval
    moved = copy.deepcopy(seed0)
    highest = max(p["vkd"]["forget_vqa_truth"] for p in published["per_seed"].values())
    moved["per_seed"]["0"]["vkd"]["forget_vqa_truth"] = highest + 0.01
    report = compare_to_published(moved, published)
    assert [(c["model"], c["metric"]) for c in report["outside_spread"]] == [("vkd", "forget_vqa_truth")]
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    script = [sys.executable, str(ROOT / "scripts" / "compare_to_published.py")]
    out = subprocess.run(script + [str(tmp_path / "moved.json")], capture_output=True, text=True)
    assert out.returncode == 1 and "outside the spread: seed 0 vkd forget_vqa_truth" in out.stdout
    (tmp_path / "seed0.json").write_text(json.dumps(seed0))
    assert subprocess.run(script + [str(tmp_path / "seed0.json")], capture_output=True).returncode == 0
