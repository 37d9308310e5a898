"""The text side on real tiny Llamas: synthetic TOFU-shaped benchmark, TextEvaluator against hand computations and
known answers (vanilla vs retain-only oracle), and the text demo end to end on a micro configuration."""

import json

import datasets
import numpy as np
import pytest

from hf_unlearn.data.synthetic_text import (
    SyntheticTextConfig,
    build_synthetic_text_benchmark,
    oracle_text_training_set,
    vanilla_text_training_set,
)
from hf_unlearn.demo import METHODS
from hf_unlearn.demo.text import (
    TEXT_COLUMNS,
    TEXT_METHODS,
    TextDemoConfig,
    available_text_methods,
    build_text_benchmark,
    evaluate_text_model,
    load_or_train_text_reference_models,
    oracle_reference,
)
from hf_unlearn.evaluation import Evaluator, text_metrics
from hf_unlearn.evaluation.text_evaluator import TextEvaluator


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Vanilla and oracle tiny Llamas of the quick configuration, cached for the demo command below."""
    cache = tmp_path_factory.mktemp("text_cache")
    config = TextDemoConfig.quick()
    bench = build_text_benchmark(config)
    refs = load_or_train_text_reference_models(bench, config, str(cache), log=lambda s: None)
    return config, bench, refs, cache


def test_synthetic_text_benchmark_is_tofu_shaped_and_deterministic():
    config = SyntheticTextConfig(num_authors=8, num_holdout_authors=2, forget_ratio=0.25)
    bench = build_synthetic_text_benchmark(config)
    assert {k: v.num_rows for k, v in bench.items()} == {"forget_qa": 12, "retain_qa": 36, "holdout_qa": 12,
                                                         "world_facts": 20}
    row = bench["forget_qa"][0]
    assert row["options"] is None and len(row["perturbed_answers"]) == 3
    assert row["answer"].split()[-1] in row["paraphrased_answer"]  # same fact, other words
    assert all(p != row["paraphrased_answer"] for p in row["perturbed_answers"])
    people = {s: set(bench[s]["person_id"]) for s in ("forget_qa", "retain_qa", "holdout_qa")}
    assert not (people["forget_qa"] & people["retain_qa"]) and not (people["holdout_qa"] & people["retain_qa"])
    assert vanilla_text_training_set(bench).num_rows == 12 + 36 + 20 and oracle_text_training_set(bench).num_rows == 56
    assert build_synthetic_text_benchmark(config)["retain_qa"].to_list() == bench["retain_qa"].to_list()
    with pytest.raises(ValueError, match="leaves no retain author"):
        SyntheticTextConfig(num_authors=2, forget_ratio=0.9)


def test_truth_ratio_equals_a_hand_computation(trained):
    config, bench, refs, _ = trained
    model, tok = refs["vanilla"]["model"], refs["vanilla"]["tokenizer"]
    rows = bench["forget_qa"].select(range(4))
    got = TextEvaluator(model, tok, bench, batch_size=3).truth_ratios(rows)
    plain = Evaluator(model, tok, {}, batch_size=1)

    def nll(question, answer):
        return plain.answer_nll(datasets.Dataset.from_dict({"question": [question], "answer": [answer]}))[0]

    for i, row in enumerate(rows):
        wrong = np.mean([nll(row["question"], a) for a in row["perturbed_answers"]])
        assert got[i] == pytest.approx(np.exp(nll(row["question"], row["paraphrased_answer"]) - wrong), rel=1e-4)
    assert (got < 1).all()  # the model that learned these facts prefers the true value


def test_metrics_tell_vanilla_from_the_retain_only_oracle(trained):
    config, bench, refs, _ = trained
    tok = refs["vanilla"]["tokenizer"]
    reference = oracle_reference(refs["oracle"]["model"], tok, bench, config)
    assert len(reference["forget_truth_ratios"]) == bench["forget_qa"].num_rows
    oracle, per_row = evaluate_text_model(refs["oracle"]["model"], tok, bench, config, reference, return_per_row=True)
    vanilla = evaluate_text_model(refs["vanilla"]["model"], tok, bench, config, reference)
    # Known answers: the oracle compared with itself.
    assert oracle["forget_quality"] == 1.0 and oracle["privleak"] == pytest.approx(0.0)
    assert oracle["mia_reference_auc"] == 0.5
    # Vanilla memorised the forget authors; the oracle never saw them.
    assert vanilla["forget_prob"] > 0.8 > 0.2 > oracle["forget_prob"]
    assert vanilla["forget_extraction_strength"] > oracle["forget_extraction_strength"]
    assert vanilla["forget_quality"] < 0.05 and vanilla["mia_loss_auc"] >= 0.95 and vanilla["privleak"] < -90
    # Both learned the retain authors and the world facts.
    for row in (vanilla, oracle):
        assert row["retain_prob"] > 0.6 and 0 < row["model_utility"] <= 1
        assert row["model_utility"] == pytest.approx(text_metrics.model_utility(
            {k: row[k] for k in row if k.startswith(("retain_", "world_facts_"))}))
    assert set(per_row) >= {"forget_qa_truth_ratio", "forget_qa_rougeL", "holdout_qa_mia_min_k_pp"}
    assert len(per_row["forget_qa_rougeL"]) == bench["forget_qa"].num_rows


def test_text_demo_command_end_to_end(trained, tmp_path, capsys):
    from hf_unlearn.cli import main

    _, _, _, cache = trained
    assert main(["demo", "--text", "--quick", "--methods", "ga,npo,simnpo", "--output", str(tmp_path), "--cache-dir",
                 str(cache), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "loaded from cache" in printed  # the fixture's vanilla and oracle
    assert "| Method | Forget prob → oracle |" in printed  # the table is printed
    payload = json.loads((tmp_path / "results.json").read_text())
    methods = payload["methods"]
    ran = {"vanilla", "oracle", "ga", "npo"} | ({"simnpo"} if "simnpo" in METHODS else set())
    assert set(methods) == ran
    if "simnpo" not in METHODS:
        assert any(n.startswith("simnpo: skipped") for n in payload["notes"])
    for name in ran - {"vanilla"}:  # every method moved the forget answers away from the memorised ones
        assert methods[name]["forget_prob"] < methods["vanilla"]["forget_prob"], name
    assert methods["npo"]["retain_prob"] > methods["ga"]["retain_prob"]  # the retain term and bounded loss help
    assert payload["num_questions"]["forget_qa"] == 12 and payload["benchmark"]["benchmark"]["num_authors"] == 6
    assert {k for k, _, _ in TEXT_COLUMNS} - {"wall_time_s"} <= set(methods["ga"])
    report = (tmp_path / "report.md").read_text()
    assert "| npo |" in report and "How to read the table" in report
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"Unknown method\(s\) \['gaa'\]"):
        available_text_methods(["gaa"])


def test_demo_command_lists_the_text_methods(capsys):
    from hf_unlearn.cli import main

    assert main(["demo", "--text", "--list-methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(TEXT_METHODS)
    assert main(["demo", "--text", "--methods", "ga,bogus"]) == 2


def test_several_seeds_give_means_and_intervals_over_seeds():
    from hf_unlearn.demo.text import summarise_text_seeds

    runs = [{"methods": {"vanilla": {"forget_prob": 0.9 + d, "model_utility": 0.7},
                         "oracle": {"forget_prob": 0.1 + d, "model_utility": 0.7},
                         "npo": {"forget_prob": 0.2 + 2 * d, "model_utility": 0.6}}} for d in (0.0, 0.02, 0.04)]
    out = summarise_text_seeds(runs)
    assert out["means"]["npo"]["forget_prob"] == pytest.approx(0.24)
    lo, hi = out["intervals"]["npo"]["forget_prob"]
    assert 0.2 <= lo < 0.24 < hi <= 0.28  # the spread over seeds, nothing more (one number per seed)
    assert out["paired"]["npo"]["oracle"]["forget_prob"]["diff"] == pytest.approx(0.12)
    assert out["intervals"]["vanilla"]["model_utility"] == pytest.approx([0.7, 0.7])
