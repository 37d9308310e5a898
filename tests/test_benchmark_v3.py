"""Benchmark v3 (issue 25): the identity benchmark, the quick configuration's references and the validity checks.

The numbers in comments were measured on the 2-core development machine (shared with another test run), seed 0,
torch on 1 thread (conftest). docs/benchmark_v3.md has the full table. The slow tests share one cold build: 80 s in
all on that machine with another run on the second core (66 s of references and checks, 11 s of the pipeline).
"""

import json

import pytest
import torch

from hf_unlearn.data.identity_benchmark import PERSON_SLOT, IdentityBenchmarkConfig, build_identity_benchmark


def test_identity_questions_share_one_template_and_names_are_own_tokens():
    bench = build_identity_benchmark(IdentityBenchmarkConfig(num_people=8, num_holdout_people=1,
                                                             num_validation_people=1, num_general=4, seed=3))
    named = {(row["person_id"], row["question"]) for row in bench["retain_qa"]}
    names = {pid: q[len("What is the job of "):-1] for pid, q in named if q.startswith("What is the job of ")}
    # Each image question is its person's text question with PERSON_SLOT in the name's place.
    for pid, q in zip(bench["retain_vqa"]["person_id"], bench["retain_vqa"]["question"]):
        assert PERSON_SLOT in q and (pid, q.replace(PERSON_SLOT, names[pid])) in named
    firsts = [n.split()[0] for n in names.values()]
    lasts = [n.split()[1] for n in names.values()]
    assert len(set(firsts)) == len(firsts) and len(set(lasts)) == len(lasts)


def test_extra_facts_add_questions_per_person_after_v3s_rows_which_they_leave_unchanged():
    from hf_unlearn.data.identity_benchmark import EXTRA_POOLS, EXTRA_TEMPLATES, POOLS

    values = [v for pool in POOLS.values() for v in pool]
    extra = [v for pool in EXTRA_POOLS.values() for v in pool]
    assert len(set(extra)) == len(extra) and not set(extra) & set(values)  # an answer names one fact
    assert all(len(pool) == 20 for pool in EXTRA_POOLS.values()) and set(EXTRA_POOLS) == set(EXTRA_TEMPLATES)
    sizes = dict(num_people=10, num_holdout_people=1, num_validation_people=1, num_general=4, seed=5)
    v3 = build_identity_benchmark(IdentityBenchmarkConfig(**sizes))
    more = build_identity_benchmark(IdentityBenchmarkConfig(**sizes, num_extra_facts=4))
    asked = {t.split("{")[0] for t in list(EXTRA_TEMPLATES.values())[:4]}
    for split in ("forget_vqa", "forget_qa", "retain_vqa", "holdout_qa", "test_vqa"):
        old, new = v3[split].to_list(), more[split].to_list()
        added = [r for r in new if r["answer"] in extra]
        assert [r for r in new if r["answer"] not in extra] == old  # v3's rows, options and perturbed answers too
        people = {r["person_id"] for r in old}
        assert len(added) == 4 * len(people)  # four more questions per person
        assert {next(p for p in asked if r["question"].startswith(p)) for r in added} == asked
        assert all(r["answer"] in r["options"] and r["answer"] not in r["perturbed_answers"] for r in added)
    with pytest.raises(ValueError, match="num_extra_facts must be in 0..15"):
        IdentityBenchmarkConfig(num_extra_facts=16)


def test_a_candidate_design_replaces_only_the_benchmark_fields_it_names():
    from hf_unlearn.demo.identity import IdentityQuickConfig
    from hf_unlearn.demo.identity_pipeline import quick_config

    assert quick_config(3) == IdentityQuickConfig(seed=3)
    # Version 3's quick configuration (5 forget people, no POPE, shapes not named), as the configurations table
    # reproduces it: only the named fields change.
    candidate = quick_config(3, {"forget_ratio": 0.2, "num_pope": 0, "model": {"shapes_named": False}})
    assert candidate.benchmark.num_forget == 5 and candidate.benchmark.seed == 3
    assert IdentityQuickConfig().benchmark.num_forget == 12 and IdentityQuickConfig().benchmark.num_pope == 100
    assert candidate.benchmark.num_people == IdentityQuickConfig().benchmark.num_people
    assert not candidate.model.shapes_named and IdentityQuickConfig().model.shapes_named
    assert candidate.model.hidden_size == IdentityQuickConfig().model.hidden_size
    assert candidate.cache_key() != quick_config(3).cache_key()
    with pytest.raises(ValueError, match=r"\['forget_fraction'\].*IdentityBenchmarkConfig"):
        quick_config(3, {"forget_fraction": 0.5})
    with pytest.raises(ValueError, match="the seed comes from the run"):
        quick_config(3, {"seed": 4})
    # Model fields go under "model", each candidate its own cache entry.
    assert quick_config(3, {"model": {"shapes_named": False}}).cache_key() not in (
        quick_config(3).cache_key(), candidate.cache_key())
    with pytest.raises(ValueError, match=r"Unknown model field\(s\) \['shape_named'\]"):
        quick_config(3, {"model": {"shape_named": True}})


def test_the_text_prior_guess_by_hand():
    import datasets

    from hf_unlearn.demo.identity_validity import text_prior_accuracy

    def rows(items):
        return datasets.Dataset.from_list([dict(question=q, answer=a, options=o) for q, a, o in items])

    pets = ["cat", "dog", "fish", "bird"]
    bench = {
        # Four people known in text: two hold "cat", one "dog", one "fish".
        "forget_qa": rows([("What pet does Ann Lee have?", "cat", pets)]),
        "retain_qa": rows([("What pet does Bo Kim have?", "cat", pets), ("What pet does Cy Wu have?", "dog", pets),
                           ("What pet does Di Ho have?", "fish", pets)]),
        "forget_vqa": rows([(f"What pet does {PERSON_SLOT} have?", "cat", pets),    # most held: right
                            (f"What pet does {PERSON_SLOT} have?", "dog", pets),    # wrong
                            (f"What pet does {PERSON_SLOT} have?", "dog", ["dog", "fish", "bird", "bird"])]),  # tie: 1/2
    }
    assert text_prior_accuracy(bench, known=("forget_qa", "retain_qa")) == pytest.approx((1 + 0 + 0.5) / 3)


def test_person_options_are_as_common_as_the_answer():
    """Every distractor and perturbed answer of a person's question is held by as many people as the answer, or the
    nearest counts when too few are (counted over everyone known in text)."""
    from collections import Counter

    from hf_unlearn.data.identity_benchmark import POOLS, TEMPLATES, TEXT_ONLY_TEMPLATES

    bench = build_identity_benchmark(IdentityBenchmarkConfig(num_people=30, forget_ratio=1 / 3, num_general=4, seed=7))
    templates = {**TEMPLATES, **TEXT_ONLY_TEMPLATES}

    def fact(question):
        return next(k for k, t in templates.items()
                    if question.startswith(t.split("{who}")[0]) and question.endswith(t.split("{who}")[1]))

    held = {key: Counter() for key in templates}
    for split in ("forget_qa", "retain_qa", "holdout_qa", "validation_qa"):
        for question, answer in zip(bench[split]["question"], bench[split]["answer"]):
            held[fact(question)][answer] += 1
    matched = 0
    for split in ("forget_vqa", "retain_vqa", "forget_qa"):
        for row in bench[split]:
            count = held[fact(row["question"])]

            def gap(value):
                return abs(count[value] - count[row["answer"]])  # noqa: B023 (used in this iteration only)

            nearest = sorted(gap(v) for v in POOLS[fact(row["question"])] if v != row["answer"])
            distractors = [o for o in row["options"] if o != row["answer"]]
            assert row["options"][row["label"]] == row["answer"] and len(set(row["options"])) == 4
            assert sorted(map(gap, distractors)) == nearest[:3]
            assert sorted(map(gap, row["perturbed_answers"])) == nearest[:5]
            matched += nearest[2] == 0
    assert matched > 0  # some questions have three distractors exactly as common as the answer


def test_pope_split_is_balanced_yes_no_about_the_drawn_shape():
    from hf_unlearn.data.portraits import SHAPES

    bench = build_identity_benchmark(IdentityBenchmarkConfig(num_people=4, num_holdout_people=0,
                                                             num_validation_people=0, num_general=12, num_pope=10,
                                                             seed=5))
    pope, general = bench["pope"], bench["general"]
    assert len(pope) == 10 and not len(build_identity_benchmark(IdentityBenchmarkConfig(num_people=4))["pope"])
    assert pope["answer"].count("yes") == pope["answer"].count("no") == 5
    assert all(row["options"][row["label"]] == row["answer"] and row["perturbed_answers"] != [row["answer"]]
               for row in pope)
    for row, shape_row in zip(pope, general):
        # The same drawn picture, named alike ("the red star"); "yes" exactly when the asked object is the one drawn.
        assert row["image"] == shape_row["image"] and row["slot_name"] == shape_row["slot_name"]
        drawn = row["slot_name"].split()[-1]
        if shape_row["question"].startswith("What kind"):
            assert shape_row["answer"] == drawn
        asked = row["question"].removeprefix("Is the shape in the image a ").rstrip("?")
        assert asked in SHAPES and (row["answer"] == "yes") == (asked == drawn)
    # People are named by their text rows, not by this column.
    assert set(bench["retain_vqa"]["slot_name"]) == {None} and set(bench["general_qa"]["slot_name"]) == {None}
    # The text twins: every colour x shape once present, once absent.
    named = bench["pope_qa"]
    assert len(named) == 2 * 8 * len(SHAPES) and named["answer"].count("yes") == len(named) // 2
    assert all((r["answer"] == "yes") == (r["question"].split()[3] == r["question"].split()[-1].rstrip("?"))
               for r in named)


def test_ga_check_counts_the_issues_drop_and_reports_specificity_beside_it():
    from hf_unlearn.demo.identity_report import _damage, check_marks
    from hf_unlearn.demo.identity_validity import ga_check

    # (forget-QA probability drop, lower end of the text-damage ratio's 95% interval) -> (specific, passed)
    assert ga_check(0.74, 1.98) == (True, True)
    assert ga_check(0.20, 3.0) == (True, False)  # specific, below 30%
    assert ga_check(0.997, 0.95) == (False, True)  # everyone's text wrecked alike: passes, reported as not specific
    assert ga_check(None, None) == (False, False)  # GA never reached the oracle
    record = {"check_vanilla": {"passed": True}, "check_oracle": {"passed": True}, "check_vision_only": {"passed": True},
              "check_ga": {"relative_drop": 0.29, "text_damage_ratio": 2.0, "text_damage_interval": [1.5, 2.5],
                           "passed": True}}  # a stored verdict the rule does not give: recomputed
    assert check_marks(record) == (True, True, False, True)
    assert _damage({"text_damage_ratio": 1.08, "text_damage_interval": [0.97, 1.18]}) == "; 1.08 (0.97–1.18), ✗"
    record["check_ga"].update(relative_drop=0.31, text_damage_interval=[0.9, 1.3])
    assert check_marks(record) == (True, True, True, True)  # the drop counts; specificity does not


def test_configurations_table_counts_checks_per_configuration():
    from hf_unlearn.demo.identity_report import configurations_table

    def record(oracle, low, follows, vision=True):
        return {"check_vanilla": {"passed": True}, "check_vision_only": {"passed": vision},
                "check_oracle": {"passed": abs(oracle - 0.25) <= 0.1, "forget_vqa_acc": oracle},
                "check_ga": {"relative_drop": 0.9, "text_damage_ratio": low + 0.2, "text_damage_interval": [low, 2.0]},
                "mediation": {"follows_edit": follows}}

    table = configurations_table({"configurations": [{"label": "a", "validity": {
        "0": record(0.24, 1.5, 0.9), "1": record(0.40, 1.2, 0.8), "2": record(0.20, 0.9, 1.0, vision=False)}}]})
    # all four at seed 0 only; oracle fails at 1, vision-only at 2; GA passes at all three (a 90% drop), not
    # specific at 2 (interval 0.9); ranges over the seeds
    assert table.splitlines()[-1] == "| a | 3 | 1 | 3 | 2 (0.20-0.40) | 3 (1.10-1.70) | 2 | 2 | 0.80-1.00 |"


def test_text_damage_ratio_and_its_interval_by_hand():
    import numpy as np

    from hf_unlearn.demo.identity_validity import text_damage

    vanilla = {"forget_qa": np.zeros(40), "retain_qa": np.zeros(60)}
    after = {"forget_qa": np.full(40, 2.0), "retain_qa": np.full(60, 0.5)}
    ratio, (low, high) = text_damage(vanilla, after)
    assert ratio == 4.0 and low == pytest.approx(4.0) and high == pytest.approx(4.0)  # no spread, no width
    rng = np.random.default_rng(0)
    after = {"forget_qa": rng.normal(2.0, 1.0, 40), "retain_qa": rng.normal(0.5, 0.2, 60)}
    ratio, (low, high) = text_damage(vanilla, after)
    assert ratio == pytest.approx(after["forget_qa"].mean() / after["retain_qa"].mean())
    assert low < ratio < high and low > 1.0  # 40 questions with sd 1 around 2.0: the mean within about +-0.3
    # Retain-QA that did not get worse: an infinite ratio (damage on the forget people only).
    assert text_damage(vanilla, {"forget_qa": np.ones(40), "retain_qa": np.zeros(60)})[0] == float("inf")


# The quick configuration's seed these tests train. Every check passes at all 9 validity seeds; seed 4 is a reported
# seed whose references reach the criterion in 35 text and 20 image epochs (seed 0 takes 65 and 50: the suite's time).
SEED = 4
KEY = str(SEED)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """Cold build of the quick configuration at ``SEED`` (vanilla and oracle trained to the criterion, about 2 min on
    the shared 2-core machine) and every validity check (about 40 s)."""
    from hf_unlearn.demo.identity import IdentityQuickConfig, build_identity_references
    from hf_unlearn.demo.identity_validity import validity_checks

    torch.manual_seed(0)
    cache = str(tmp_path_factory.mktemp("v3"))
    refs = build_identity_references(IdentityQuickConfig(seed=SEED), cache_dir=cache, log=lambda *_: None)
    return {"info": refs.info, "cache_dir": cache, "benchmark": refs.benchmark, **validity_checks(refs, seed=SEED)}


@pytest.mark.slow
def test_vanilla_trained_to_the_criterion(checks):
    # Measured here: text 35, image 20 epochs (25-65 and 15-50 at the 9 validity seeds). The criterion, not a fixed
    # count, ends each stage (other CPUs round differently and may need more): within the recipe's decay plus top-up.
    epochs = checks["info"]["vanilla"]["epochs"]
    assert set(epochs) == {"text", "image"} and all(0 < e <= 150 for e in epochs.values()), epochs
    # Every trained split >= 0.95, POPE and its text twins included (measured: 0.96 the lowest, POPE).
    assert checks["check_vanilla"]["passed"], checks["vanilla"]
    assert checks["vanilla"]["pope"] >= 0.95 and checks["vanilla"]["pope_qa"] >= 0.95
    # Faces are recognised beyond their training view (measured: test_retain_vqa 0.91, test_vqa 1.00; the oracle's
    # test_vqa 0.21): the transformed portraits keep the identity.
    assert checks["vanilla"]["test_retain_vqa"] > 0.6


@pytest.mark.slow
def test_oracle_does_not_know_the_forget_faces_and_knows_the_forget_people_in_text(checks):
    # Measured: forget-VQA 0.25 (chance 0.25; 0.17-0.30 at the 9 validity seeds), forget-QA 0.99 (the vanilla's
    # language model, untouched). The oracle never saw the forget faces, but its language model knows the forget
    # people from text: answering every question with the option most people hold, the face ignored, scores 0.375 at
    # this seed even with wrong options as common as the answer (ties with nearer counts). The issue's check (within
    # 0.10 of chance) is reported, not asserted: at 120 questions an oracle exactly at chance misses it about one time
    # in 120 (binomial), and a CPU that rounds a few answers the other way can be that time. Asserted: no better than
    # that guess plus 3 standard deviations of a 120-question accuracy at its rate (a bound from the benchmark's
    # facts, the same on every CPU), far below the vanilla's 0.95.
    oracle, n = checks["check_oracle"], 120  # the quick configuration: 12 forget people x 10 image questions
    assert len(checks["benchmark"]["forget_vqa"]) == n
    rate = max(oracle["text_prior_acc"], 0.25)
    assert oracle["text_prior_acc"] == pytest.approx(0.375, abs=0.001)  # computed from the facts alone
    assert oracle["forget_vqa_acc"] <= rate + 3 * (rate * (1 - rate) / n) ** 0.5, oracle
    assert oracle["forget_qa_acc"] >= 0.95
    assert checks["oracle"]["forget_qa"] == checks["vanilla"]["forget_qa"]


@pytest.mark.slow
def test_a_vision_side_only_update_reaches_the_oracle(checks):
    # Projector-only distillation toward the oracle: measured forget-VQA 0.25 at epoch 6, forget-QA 0.99 and its
    # probability unchanged (text never passes through the projector), retain-VQA 0.98, general 0.99.
    check = checks["check_vision_only"]
    assert check["passed"], check["reached"]
    assert check["reached"]["forget_qa_prob"] == pytest.approx(checks["vanilla_prob"]["forget_qa"])


@pytest.mark.slow
def test_ga_damages_the_forget_peoples_text(checks):
    # GA on forget-VQA, language model only (MLLMU-Bench's setting), lr 5e-4, probed every step: forget-VQA reaches
    # the oracle's at step 33; forget-QA answer probability -100%, retain-QA -100% too; text-damage ratio (NLL) 1.06,
    # 95% interval 1.01-1.12. The face is read as the name, so GA on the faces is GA on the names; with twelve forget
    # people of 24 it takes everyone's text alike (ratios 0.99-1.12 at the 9 validity seeds; docs/benchmark_v3.md).
    # The issue's check is the drop, asserted; whether the damage is specific is reported beside it, so only its
    # consistency with the interval is asserted.
    ga = checks["check_ga"]
    assert ga["reached"] is not None and ga["passed"], ga
    assert ga["relative_drop"] >= 0.3
    low, high = ga["text_damage_interval"]
    assert low <= ga["text_damage_ratio"] <= high and ga["specific"] == (low > 1.0)


@pytest.mark.slow
def test_identity_mediation_is_measured(checks):
    # A text-only edit of 5 retain people's facts (50 questions, learnt to 0.96): measured 0.92 of their image
    # answers follow the new value, 0.08 keep the old one (1.00 correct before); the unedited people's image
    # accuracy stays 1.0 and their text 0.97 (0.76-0.94 follow at the 9 validity seeds). The face is read as the
    # name (16 image tokens without the name alignment: 0.34-0.52).
    med = checks["mediation"]
    assert med["edited_text_acc"] >= 0.95
    assert med["follows_edit"] >= 0.8 and med["keeps_old"] <= 0.2


@pytest.fixture(scope="module")
def quick_run(checks, tmp_path_factory):
    """``hf-unlearn demo --quick --seeds 4 --methods ga`` (no benchmark flag: v3) on the cached references: 12
    questions per split, both attacks, no validity checks. Returns its output folder."""
    from hf_unlearn.cli import main

    out = tmp_path_factory.mktemp("v3_demo")
    assert main(["demo", "--quick", "--seeds", KEY, "--methods", "ga", "--output", str(out),
                 "--cache-dir", checks["cache_dir"],
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def quick_payload(quick_run):
    return json.loads((quick_run / "results.json").read_text())


@pytest.mark.slow
def test_the_v3_pipeline_reports_every_metric_and_the_trusted_distance(checks, quick_payload):
    from hf_unlearn.demo.identity_evaluation import PER_SPLIT, TRUSTED_DISTANCE_METRICS
    from hf_unlearn.demo.identity_report import readme_block, render_identity_report

    payload = quick_payload
    points = payload["per_seed"][KEY]
    vanilla, oracle, ga = points["vanilla"], points["oracle"], points["ga"]
    # Vanilla and oracle share one language model: every text metric is the same computation, so exactly equal.
    for split in ("forget_qa", "retain_qa", "general_qa"):
        assert all(vanilla[f"{split}_{m}"] == oracle[f"{split}_{m}"] for m in PER_SPLIT), split
    assert payload["text_damage_ratio"][KEY]["oracle"] is None  # retain-QA did not move: no ratio
    # The oracle never saw the forget faces (ROUGE-L = BLEU = exact word on one-word answers).
    assert vanilla["forget_vqa_truth"] - oracle["forget_vqa_truth"] > 0.25
    assert vanilla["forget_vqa_rougeL"] - oracle["forget_vqa_rougeL"] > 0.5
    assert vanilla["forget_vqa_bleu"] == pytest.approx(vanilla["forget_vqa_rougeL"])
    # Quantization changes little on the memorised vanilla: at most one of the 12 answers may flip per width.
    for bits in (8, 4):
        assert vanilla[f"quant{bits}_forget_vqa_acc"] >= vanilla["forget_vqa_acc"] - 1 / 12
    assert ga["forget_vqa_nll"] > vanilla["forget_vqa_nll"] and ga["train_steps"] > 0
    assert payload["distance_metrics"] == list(TRUSTED_DISTANCE_METRICS)
    assert set(payload["distance"]) >= {"vanilla", "ga"} and payload["distance"]["oracle"]["value"] == 0.0
    report = render_identity_report(payload)
    assert "| ga |" in report and "Forget VQA truth" in report and f"Seeds {SEED};" in report
    # The README's part: vanilla and oracle first, then the methods by distance; the caption says what was run.
    block = readme_block(payload)
    assert [line.split("|")[1].strip() for line in block.splitlines()[2:5]] == ["vanilla", "oracle", "ga"]
    assert "Distance (trusted)" in block and f"Mean over seeds {SEED} " in block
    assert "the tuning protocol's pick on v3" in block
    forget_names = {q.split(" of ")[-1].rstrip("?") for q in checks["benchmark"]["forget_qa"]["question"]
                    if q.startswith("What is the job of ")}
    assert forget_names and not any(name in report for name in forget_names)  # aggregate numbers only


@pytest.mark.slow
def test_seeds_in_worker_processes_give_the_numbers_of_one_process(checks, quick_payload):
    """``workers=2`` runs each seed in its own spawned process. Seed 0 twice (its references are cached; a second
    seed would train its own): both workers must reproduce the in-process run's every number but the timings."""
    import numpy as np

    from hf_unlearn.demo.identity_pipeline import run_identity_demo
    from hf_unlearn.demo.identity_report import v3_tables

    payload = run_identity_demo([SEED, SEED], ["ga"], cache_dir=checks["cache_dir"], log=print, validity=False,
                                quantize=False, rows_per_split=12, workers=2)  # no attacks: the in-process run has them
    here, there = quick_payload["per_seed"][KEY], payload["per_seed"][KEY]
    assert there["ga"].keys() < here["ga"].keys() and "forget_vqa_truth" in there["ga"]
    for model, values in there.items():  # assert_equal: exact, and a NaN equals a NaN
        np.testing.assert_equal({k: v for k, v in values.items() if k != "wall_time_s"},
                                {k: here[model][k] for k in values if k != "wall_time_s"}, err_msg=model)
    # The mean over two copies of one seed is that seed's value.
    assert payload["methods"]["ga"]["forget_vqa_nll"] == pytest.approx(quick_payload["methods"]["ga"]["forget_vqa_nll"])
    assert payload["run"]["workers"] == 2 and "(2 worker processes)" in v3_tables(payload)
    # The workers share this process's torch threads: more threads than cores slowed training 30-60 times.
    assert payload["run"]["threads_per_process"] == max(1, torch.get_num_threads() // 2)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_identity_demo([SEED], ["ga"], cache_dir=checks["cache_dir"], workers=0)


@pytest.mark.slow
def test_the_demo_command_runs_benchmark_v3_by_default(quick_run, quick_payload):
    """``hf-unlearn demo`` (no benchmark flag) is v3 with both attacks; ``--quick`` is its 12-question look."""
    from hf_unlearn.demo.recipe import v3_relearn

    bench = quick_payload["benchmark"]
    assert bench["name"] == "v3-quick" and bench["rows_per_split"] == 12 and bench["seeds"] == [SEED]
    assert bench["quantize"] and bench["relearn"] == v3_relearn().to_dict()  # the calibrated budget
    assert set(quick_payload["methods"]) == {"vanilla", "oracle", "ga"}
    ga = quick_payload["per_seed"][KEY]["ga"]
    assert {"quant8_forget_vqa_acc", "quant4_forget_vqa_acc", "relearn_acc", "forget_vqa_truth"} <= set(ga)
    assert "benchmark v3" in (quick_run / "report.md").read_text()


@pytest.mark.slow
def test_tuning_on_v3_scores_by_the_trusted_metrics_and_the_pipeline_runs_the_pick(checks, tmp_path, monkeypatch):
    """``tune(v3=True)`` on the cached references (GA, two points, 5 steps): every point scored by the trusted
    metrics against the oracle, the pick the closest; ``run_identity_demo`` then trains GA with that pick."""
    import numpy as np

    import hf_unlearn.demo.recipe as recipe
    from hf_unlearn.demo.identity_evaluation import TRUSTED_DISTANCE_METRICS
    from hf_unlearn.demo.identity_pipeline import run_identity_demo
    from hf_unlearn.demo.tuning import grid_points, tune
    from hf_unlearn.evaluation.stats import distance

    out = tmp_path / "tuned_v3.json"
    grid = {"ga": {"learning_rate": [1e-7, 1e-3], "max_steps": [5]}}
    record = tune(["ga"], seeds=[SEED], grids=grid, cache_dir=checks["cache_dir"], output=str(out),
                  show_progress=False, log=lambda *_: None, v3=True)
    assert record["protocol"]["metrics"] == list(TRUSTED_DISTANCE_METRICS) and "seed" not in record["protocol"]["benchmark"]
    oracle = record["oracle"][KEY]
    still, moved = (p["per_seed"][KEY] for p in record["methods"]["ga"]["points"])
    # Measured: 5 steps at 1e-7 leave the vanilla's answers (forget-VQA ROUGE-L 1.0, the oracle's 0.04); at 1e-3 GA
    # takes the forget faces' truth score from 0.89 to 0.29 (oracle 0.25) and retain-VQA's from 0.89 to 0.48.
    assert still["forget_vqa_rougeL"] > 0.9 > oracle["forget_vqa_rougeL"]
    assert moved["forget_vqa_truth"] < still["forget_vqa_truth"]
    distances = [distance(p, oracle, TRUSTED_DISTANCE_METRICS) for p in (still, moved)]
    assert [p["distance"] for p in record["methods"]["ga"]["points"]] == pytest.approx(distances)
    assert record["methods"]["ga"]["picked"] == grid_points(grid["ga"])[int(np.argmin(distances))]

    monkeypatch.setattr(recipe, "TUNED_V3_FILE", str(out))
    payload = run_identity_demo([SEED], ["ga"], cache_dir=checks["cache_dir"], log=lambda *_: None, validity=False,
                                quantize=False, rows_per_split=4)
    assert payload["benchmark"]["tuning"] == {"ga": "v3"}
    assert payload["benchmark"]["hyperparameters"]["ga"]["learning_rate"] == record["methods"]["ga"]["picked"]["learning_rate"]
    assert 0 < payload["per_seed"][KEY]["ga"]["train_steps"] <= 5



@pytest.mark.slow
def test_v3_relearning_calibration_trains_v3s_parts_and_the_demo_reads_its_pick(checks, tmp_path, monkeypatch):
    """``calibrate(v3=True)`` on the cached seed-0 references, two budgets: the hiding model (forget faces answered
    as a retain person's) starts low where the vanilla knows every test row; the record lands under ``relearn`` beside
    the methods' picks, and ``v3_relearn`` (the demo's attack) is its pick."""
    import hf_unlearn.demo.recipe as recipe
    from hf_unlearn.demo.tuning import calibrate
    from hf_unlearn.evaluation.attacks import RelearnConfig

    out = tmp_path / "tuned_v3.json"
    out.write_text(json.dumps({"methods": {"ga": {"picked": {"learning_rate": 1e-4, "max_steps": 30}}}}))
    record = calibrate([SEED], cache_dir=checks["cache_dir"], output=str(out), log=lambda *_: None, v3=True,
                       budgets=[(3e-5, 10), (1e-3, 30)])
    weak, strong = (b["per_seed"][KEY] for b in record["budgets"])
    assert weak["vanilla"]["before"] == 1.0 and weak["hidden"]["before"] < 0.5
    assert weak["oracle"]["before"] == strong["oracle"]["before"]  # same test rows for every budget
    # The strong budget teaches the hiding model back more than the weak one.
    assert strong["hidden"]["after"] - strong["hidden"]["before"] > weak["hidden"]["after"] - weak["hidden"]["before"]
    saved = json.loads(out.read_text())
    assert saved["methods"]["ga"]["picked"]["max_steps"] == 30 and saved["relearn"]["seeds"] == [SEED]

    monkeypatch.setattr(recipe, "TUNED_V3_FILE", str(out))
    pick = record["pick"] or {}
    assert recipe.v3_relearn() == (RelearnConfig(**pick) if pick else RelearnConfig())
    saved["relearn"]["pick"] = {"learning_rate": 3e-5, "steps": 10}
    out.write_text(json.dumps(saved))
    recipe._read_picks.cache_clear()  # a rewrite within the file system's timestamp granularity keeps the mtime
    assert recipe.v3_relearn() == RelearnConfig(learning_rate=3e-5, steps=10)
