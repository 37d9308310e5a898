"""TOFU / MUSE metric functions on toy inputs whose answers are known by hand; the lm-eval bridge's summary."""

import math
import sys

import numpy as np
import pytest

from hf_unlearn.evaluation import lm_eval_hook
from hf_unlearn.evaluation import text_metrics as tm


def test_truth_ratio_by_hand():
    # Row 0: correct NLL 1, wrong NLLs 2 and 4 (mean 3) -> TR = exp(1 - 3); row 1: one wrong answer, equal NLL -> 1.
    tr = tm.truth_ratio([1.0, 2.0], [[2.0, 4.0], [2.0]])
    np.testing.assert_allclose(tr, [math.exp(-2), 1.0])
    # P~(wrong) is the geometric mean of the wrong answers' P~, so TR = P~(wrong) / P~(correct).
    np.testing.assert_allclose(tr[0], math.sqrt(math.exp(-2) * math.exp(-4)) / math.exp(-1))
    assert tm.truth_ratio_score(tr, "closer_to_1") == pytest.approx((math.exp(-2) + 1) / 2)
    assert tm.truth_ratio_score(tr, "true_better") == pytest.approx((1 - math.exp(-2)) / 2)
    assert tm.truth_ratio_score([4.0], "closer_to_1") == pytest.approx(0.25)  # symmetric: TR and 1/TR alike
    assert tm.truth_ratio_score([4.0], "true_better") == 0.0  # prefers the lies: clipped at 0
    with pytest.raises(ValueError, match="no perturbed answers"):
        tm.truth_ratio([1.0], [[]])
    with pytest.raises(ValueError, match="aggregate"):
        tm.truth_ratio_score(tr, "mean")


def test_forget_quality_known_answers():
    rng = np.random.default_rng(0)
    same = rng.lognormal(size=30)
    assert tm.forget_quality(same, same) == 1.0  # identical distributions: indistinguishable
    # Fully separated samples of 10 and 10: the exact two-sided KS p-value is 2 / C(20, 10).
    low, high = np.linspace(0.01, 0.1, 10), np.linspace(1.0, 2.0, 10)
    assert tm.forget_quality(low, high) == pytest.approx(2 / math.comb(20, 10), rel=1e-6)
    # KS depends on ranks only: TOFU's R = 1/TR gives the same forget quality.
    a, b = rng.lognormal(size=25), rng.lognormal(0.5, size=20)
    assert tm.forget_quality(a, b) == pytest.approx(tm.forget_quality(1 / a, 1 / b))


def test_model_utility_and_probabilities():
    assert tm.model_utility({"a": 0.5, "b": 1.0}) == pytest.approx(2 / 3)
    assert tm.model_utility({"a": 0.5, "b": 0.0}) == 0.0  # one broken ability breaks utility
    with pytest.raises(ValueError, match="non-negative"):
        tm.model_utility({"a": -0.1})
    np.testing.assert_allclose(tm.answer_probability([0.0, math.log(2)]), [1.0, 0.5])
    # P~(correct) = 1 against two wrong answers of P~ 0.5 each: 1 / (1 + 1).
    np.testing.assert_allclose(tm.normalised_probability([0.0], [[math.log(2), math.log(2)]]), [0.5])


def test_privleak_by_hand():
    assert tm.privleak(1.0) == pytest.approx(-100.0)  # forget rows fully told apart: memorised
    assert tm.privleak(0.5) == pytest.approx(0.0)
    assert tm.privleak(0.0) == pytest.approx(100.0)  # forget rows look less familiar than unseen ones
    assert tm.privleak(0.75, auc_retrained=0.6) == pytest.approx((0.25 - 0.4) / 0.4 * 100)
    with pytest.raises(ValueError, match="undefined"):
        tm.privleak(0.5, auc_retrained=1.0)


def test_exact_memorization_and_extraction_strength():
    rows = [np.array([1, 1, 1, 1]), np.array([0, 1, 1, 1]), np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])]
    np.testing.assert_allclose(tm.exact_memorization(rows), [1.0, 0.75, 0.75, 0.75])
    # The shortest prefix after which greedy decoding reproduces the rest: 0, 1, 2 and 4 (nothing) tokens.
    np.testing.assert_allclose(tm.extraction_strength(rows), [1.0, 0.75, 0.5, 0.0])
    with pytest.raises(ValueError, match="no answer tokens"):
        tm.extraction_strength([np.array([], dtype=bool)])


def test_lm_eval_summary_and_missing_extra(monkeypatch):
    results = {
        "results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 4},
                    "mmlu_x": {"acc,none": 0.3}},
        "groups": {"mmlu": {"acc,none": 0.25, "alias": "mmlu"}},
    }
    assert lm_eval_hook.summarize(results, ["arc_easy", "mmlu"]) == {
        "arc_easy/acc": 0.5, "arc_easy/acc_stderr": 0.1, "mmlu/acc": 0.25}
    with pytest.raises(KeyError, match="no results for task 'hellaswag'"):
        lm_eval_hook.summarize(results, ["hellaswag"])
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'hf_unlearn\[lm-eval\]'"):
        lm_eval_hook.general_ability(None, None, ["arc_easy"])
