"""Seeds-and-questions statistics: intervals that match known answers, pairing, AUC replicates, distances."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hf_unlearn.evaluation.stats import RowValues, hierarchical_bootstrap, interval, summarise


def _bernoulli(n: int, p: float, seed: int) -> RowValues:
    rng = np.random.default_rng(seed)
    values = np.zeros(n)
    values[rng.permutation(n)[: round(p * n)]] = 1.0
    return RowValues.of(values)


def test_single_seed_interval_matches_the_binomial_standard_error():
    rows = _bernoulli(400, 0.5, 0)
    reps = hierarchical_bootstrap({"acc": {"m": [rows]}})["acc"]["m"]
    lo, hi = interval(reps)
    # Normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049.
    assert lo < 0.5 < hi
    assert 0.08 < hi - lo < 0.12
    assert abs(reps.mean() - 0.5) < 0.01


def test_seed_variation_widens_the_interval():
    """Five seeds whose accuracies differ (0.2 ... 0.6): the interval must reflect the spread across seeds, not
    only the binomial noise of one seed's questions."""
    seeds = [_bernoulli(200, p, i) for i, p in enumerate((0.2, 0.3, 0.4, 0.5, 0.6))]
    lo, hi = interval(hierarchical_bootstrap({"acc": {"m": seeds}})["acc"]["m"])
    one_seed_lo, one_seed_hi = interval(hierarchical_bootstrap({"acc": {"m": [seeds[2]]}})["acc"]["m"])
    assert lo < 0.4 < hi
    assert hi - lo > 1.5 * (one_seed_hi - one_seed_lo)
    assert lo > 0.2 and hi < 0.6  # the mean of 5 seeds is tighter than their range


def test_paired_difference_is_tight_when_models_differ_on_few_rows():
    base = _bernoulli(100, 0.5, 0)
    changed = base.values.copy()
    changed[np.flatnonzero(changed == 0)[:5]] = 1.0  # 5 more correct answers: +0.05
    out = summarise({"acc": {"oracle": [base], "m": [RowValues.of(changed)]}}, baselines=("oracle",))
    diff = out["paired"]["m"]["oracle"]["acc"]
    assert diff["diff"] == pytest.approx(0.05)
    lo, hi = diff["interval"]
    assert 0.0 < lo <= 0.05 <= hi < 0.1  # a paired interval: excludes 0 although the separate ones overlap
    sep_m, sep_o = out["intervals"]["m"]["acc"], out["intervals"]["oracle"]["acc"]
    assert sep_m[0] < sep_o[1]  # the separate intervals overlap


def test_auc_point_equals_sklearn_and_replicates_behave():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 50)
    pos[:5] = neg[:5]  # ties count one half, as in sklearn
    rows = RowValues.of(pos, neg)
    labels = np.r_[np.ones(60), np.zeros(50)]
    assert rows.point() == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]))
    reps = hierarchical_bootstrap({"auc": {"m": [rows]}})["auc"]["m"]
    lo, hi = interval(reps)
    assert lo < rows.point() < hi and hi - lo < 0.3
    separable = RowValues.of(np.arange(10) + 100.0, np.arange(10))
    assert interval(hierarchical_bootstrap({"auc": {"m": [separable]}})["auc"]["m"]) == (1.0, 1.0)
    same = RowValues.of(np.zeros(20), np.zeros(20))
    assert interval(hierarchical_bootstrap({"auc": {"m": [same]}})["auc"]["m"]) == (0.5, 0.5)


def test_distance_to_the_target_and_paired_distance():
    o = {"a": _bernoulli(100, 0.3, 0), "b": _bernoulli(100, 0.9, 1)}
    near = {"a": _bernoulli(100, 0.32, 2), "b": _bernoulli(100, 0.88, 3)}
    far = {"a": _bernoulli(100, 0.9, 4), "b": _bernoulli(100, 0.9, 5)}
    per_seed = {k: {"oracle": [o[k]], "near": [near[k]], "far": [far[k]]} for k in ("a", "b")}
    out = summarise(per_seed, baselines=("oracle",), distance_metrics=("a", "b"))
    assert out["distance"]["oracle"]["value"] == 0.0
    assert out["distance"]["near"]["value"] == pytest.approx(np.hypot(0.02, 0.02))
    assert out["distance"]["far"]["value"] == pytest.approx(0.6)
    d = out["distance_paired"]["near"]["far"]
    assert d["diff"] < 0 and d["interval"][1] < 0  # near is closer than far, with confidence


def test_reproducible_and_checks_its_input():
    rows = {"acc": {"m": [_bernoulli(50, 0.5, 0), _bernoulli(50, 0.6, 1)]}}
    a = hierarchical_bootstrap(rows, seed=3)["acc"]["m"]
    assert np.array_equal(a, hierarchical_bootstrap(rows, seed=3)["acc"]["m"])
    assert not np.array_equal(a, hierarchical_bootstrap(rows, seed=4)["acc"]["m"])
    with pytest.raises(ValueError, match="same number of seeds"):
        hierarchical_bootstrap({"acc": {"m": [_bernoulli(5, 0.5, 0)], "n": []}})
    with pytest.raises(ValueError, match="same sizes"):
        hierarchical_bootstrap({"acc": {"m": [_bernoulli(5, 0.5, 0)], "n": [_bernoulli(6, 0.5, 0)]}})
