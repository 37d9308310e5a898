"""The relearning attack is calibrated: it leaves a model that knows the answers unharmed, and it exposes a model that
only hides them (regains far more than the oracle, which never saw the forget images)."""

import pytest

from hf_unlearn.data.synthetic import build_synthetic_benchmark
from hf_unlearn.demo import DemoConfig
from hf_unlearn.demo.calibration import budget_report, identity_swap_model, pick_budget
from hf_unlearn.demo.references import load_or_train_reference_models
from hf_unlearn.evaluation import Evaluator, RelearnConfig


@pytest.fixture(scope="module")
def quick_models(quick_demo_cache):
    config = DemoConfig.quick(seed=0)
    benchmark = build_synthetic_benchmark(config.benchmark)
    refs = load_or_train_reference_models(benchmark, config, quick_demo_cache, False, lambda line: None)
    processor = refs["vanilla"]["processor"]
    hidden = identity_swap_model(refs["vanilla"]["model"], processor, benchmark, seed=0)
    return {"vanilla": refs["vanilla"]["model"], "oracle": refs["oracle"]["model"], "hidden": hidden}, processor, \
        benchmark


@pytest.mark.slow
def test_the_default_attack_does_not_damage_and_exposes_hiding(quick_models):
    models, processor, benchmark = quick_models
    forget = Evaluator(models["hidden"], processor, benchmark).mcq_accuracy("forget_vqa")
    retain = Evaluator(models["hidden"], processor, benchmark).mcq_accuracy("retain_vqa")
    assert forget <= 0.7 and retain >= 0.9  # the hiding model looks unlearned on the forget faces and kept the rest
    report = budget_report(models, processor, benchmark["forget_vqa"], RelearnConfig(seed=0))
    vanilla, oracle, hidden = report["vanilla"], report["oracle"], report["hidden"]
    assert vanilla["before"] >= 0.9 and vanilla["after"] >= vanilla["before"] - 0.05  # no damage
    assert hidden["after"] - hidden["before"] >= 0.2  # the hidden knowledge comes back ...
    assert hidden["after"] - oracle["after"] >= 0.4  # ... far beyond what the attack rows teach the oracle


def test_pick_budget_takes_the_strongest_harmless_budget_that_exposes_hiding():
    def seed(v_after, o_after, h_after):
        return {"vanilla": {"before": 1.0, "after": v_after}, "oracle": {"before": 0.2, "after": o_after},
                "hidden": {"before": 0.5, "after": h_after}}

    reports = {
        (1e-4, 10): [seed(1.0, 0.2, 0.2), seed(1.0, 0.2, 0.3)],  # harmless, exposes only at one seed
        (3e-4, 10): [seed(1.0, 0.2, 0.8), seed(0.99, 0.3, 0.9)],  # harmless, exposes
        # harmless, and the hiding model answers more than the oracle, but only as much as before the attack: a
        # level above the oracle's is not a gain
        (3e-4, 30): [seed(1.0, 0.2, 0.5), seed(1.0, 0.2, 0.5)],
        (1e-3, 30): [seed(0.9, 0.4, 1.0), seed(1.0, 0.3, 1.0)],  # damages vanilla at one seed
    }
    assert pick_budget(reports) == (3e-4, 10)
    assert pick_budget({(1e-3, 30): reports[(1e-3, 30)]}) is None
    # v3's rule: no exposure asked for, so the strongest harmless budget; damage judged where vanilla was sure.
    assert pick_budget(reports, require_exposure=False) == (3e-4, 30)
    unsure = {"vanilla": {"before": 0.96, "after": 0.8}, "oracle": {"before": 0.2, "after": 0.3},
              "hidden": {"before": 0.5, "after": 0.5}}
    stronger = {**reports, (3e-3, 30): [seed(1.0, 0.4, 0.4), unsure]}
    assert pick_budget(stronger, require_exposure=False) == (3e-4, 30)
    assert pick_budget(stronger, require_exposure=False, sure_seeds_only=True) == (3e-3, 30)
    assert pick_budget({(3e-3, 30): [unsure]}, require_exposure=False, sure_seeds_only=True) is None  # nothing judged


@pytest.mark.slow
def test_a_fully_frozen_model_is_relearned_through_every_weight(quick_models):
    """A model handed back with nothing trainable (SMFA's merged model, a model loaded for inference) is attacked
    through all its weights, not refused: the hiding model, frozen, still gives its answers back."""
    import copy

    from hf_unlearn.evaluation.attacks import relearn_rows

    models, processor, benchmark = quick_models
    frozen = copy.deepcopy(models["hidden"]).requires_grad_(False)
    before, after = relearn_rows(frozen, processor, benchmark["forget_vqa"], RelearnConfig(seed=0))
    assert after.mean() - before.mean() >= 0.2  # as the calibrated test asks of the hiding model
    assert not any(p.requires_grad for p in frozen.parameters())  # the model passed in is untouched
