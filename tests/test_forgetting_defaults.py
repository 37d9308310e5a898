"""Methods forget by default (issue 18): plain TrainingArguments, lr 1e-3, 20 steps, on a memorised tiny LLaVA.

The user's situation of issue 18: their own model, plain ``TrainingArguments``, a learning rate that works for GA.
VKD and MMUnlearner (with a vision mask from ``compute_saliency_mask``) must raise the forget NLL at least half as
much as GATrainer under the same arguments, and keep the text-only NLL within 0.05 (they never touch the language
model). With the earlier defaults both moved it by +0.000 here (GA: +2.80); seeds 0-4 are in docs/methods/*.md.
"""

import warnings

import pytest
from transformers import TrainingArguments

from hf_unlearn import (
    GATrainer,
    MMUnlearnerTrainer,
    SaliencyMaskConfig,
    UnlearnDataCollator,
    VKDTrainer,
    compute_saliency_mask,
)
from hf_unlearn.trainers.callbacks import NoForgettingWarning

from memorised_people import benchmark, load, mean_nll, memorised_people, splits  # noqa: F401 (fixture)


def plain_args(tmp_path, **kw):
    """What a transformers user already has: plain TrainingArguments, nothing unlearning-specific."""
    base = dict(output_dir=str(tmp_path / "out"), learning_rate=1e-3, max_steps=20, report_to="none",
                save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, logging_steps=5)
    return TrainingArguments(**{**base, **kw})


def run(method: str, path: str, tmp_path, **arg_overrides) -> dict[str, float]:
    """Train ``method`` with plain arguments; NLL change on forget / text-only / retain images."""
    model, processor = load(path)
    sets = splits(benchmark())
    before = {k: mean_nll(model, processor, sets[k]) for k in ("forget", "text", "retain_vqa")}
    kwargs = dict(train_dataset=sets["forget"], retain_dataset=sets["retain"], processing_class=processor)
    args = plain_args(tmp_path, **arg_overrides)
    if method == "ga":
        trainer = GATrainer(model, args=args, **kwargs)
    elif method == "vkd":
        trainer = VKDTrainer(model, args=args, **kwargs)
    else:
        mask = compute_saliency_mask(model, SaliencyMaskConfig(target_modules="vision"), sets["forget"],
                                     {"retain": sets["retain_vqa"], "text": sets["text"]},
                                     UnlearnDataCollator(processor), show_progress=False)
        trainer = MMUnlearnerTrainer(model, args=args, saliency_mask=mask, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoForgettingWarning)
        trainer.train()
    after = {k: mean_nll(model, processor, sets[k]) for k in before}
    delta = {k: after[k] - before[k] for k in before}
    delta["no_forgetting_warnings"] = sum(issubclass(w.category, NoForgettingWarning) for w in caught)
    return delta


@pytest.fixture(scope="module")
def ga_delta(memorised_people, tmp_path_factory):  # noqa: F811
    return run("ga", memorised_people, tmp_path_factory.mktemp("ga"))


@pytest.mark.parametrize("method", ["mmunlearner", "vkd"])
def test_vision_methods_forget_by_default(method, ga_delta, memorised_people, tmp_path):  # noqa: F811
    delta = run(method, memorised_people, tmp_path)
    print(f"\n{method}: forget NLL {delta['forget']:+.3f} (GA {ga_delta['forget']:+.3f}), text NLL "
          f"{delta['text']:+.4f}, retain-VQA NLL {delta['retain_vqa']:+.3f}")
    # Gradient ascent from a memorised model is chaotic: the same seed gives different sizes on different CPUs.
    # Measured forget-NLL rises (GA / MMUnlearner / VKD): AVX-512 +2.97 / +3.24 / +4.45, AVX2 path +1.01 / +2.47,
    # the CI machine +3.30 / +1.53. Earlier defaults gave +0.000 for both methods, which is what this test catches:
    # each default moves the forget NLL by at least 1 nat (the answer's probability falls below e^-1 per token on
    # average) and stays within a factor 4 of GA's own rise.
    assert ga_delta["forget"] > 0.5
    assert delta["forget"] >= 1.0
    assert delta["forget"] >= 0.25 * ga_delta["forget"]
    assert abs(delta["text"]) <= 0.05  # the language model never moves: text knowledge is kept
    assert delta["no_forgetting_warnings"] == 0 and ga_delta["no_forgetting_warnings"] == 0


def test_a_run_that_cannot_forget_warns_once(memorised_people, tmp_path):  # noqa: F811
    model, processor = load(memorised_people)
    sets = splits(benchmark())
    trainer = GATrainer(model, args=plain_args(tmp_path, learning_rate=1e-7, max_steps=12),
                        train_dataset=sets["forget"], processing_class=processor)
    with pytest.warns(NoForgettingWarning, match=r"learning_rate=1e-07 and max_steps=12") as caught:
        trainer.train()
    assert len([w for w in caught if issubclass(w.category, NoForgettingWarning)]) == 1
    assert trainer.unlearning_report["no_forgetting_warning"] is True
    final = trainer.state.log_history[-1]  # the end-of-training log says what (did not) move
    assert abs(final["forget_nll_after"] - final["forget_nll_before"]) < 1e-3


def test_stop_rule_ends_training_when_forget_nll_reaches_holdout(memorised_people, tmp_path):  # noqa: F811
    model, processor = load(memorised_people)
    sets = splits(benchmark())
    args = plain_args(tmp_path, learning_rate=2e-3, max_steps=60, lr_scheduler_type="constant")
    trainer = GATrainer(model, args=args, train_dataset=sets["forget"], retain_dataset=sets["retain"],
                        holdout_dataset=sets["holdout"], processing_class=processor)
    trainer.args.probe_steps = 1  # check every step, so the test sees the step the target is crossed
    trainer.train()
    probes = [h for h in trainer.state.log_history if "eval_forget_nll" in h]
    stopped = trainer.unlearning_report["stop_rule"]["stopped_at_step"]
    print(f"\nstopped at step {stopped}: " + ", ".join(
        f"{h['step']}: {h['eval_forget_nll']:.2f}/{h['eval_holdout_nll']:.2f}" for h in probes))
    assert stopped is not None and trainer.state.global_step == stopped < 60
    last, previous = probes[-1], probes[-2]
    assert last["step"] == stopped and previous["step"] == stopped - 1
    assert last["eval_forget_nll"] >= last["eval_holdout_nll"]       # target reached ...
    assert previous["eval_forget_nll"] < previous["eval_holdout_nll"]  # ... for the first time at this step
    report = trainer.unlearning_report
    assert report["after"]["forget_nll"] == pytest.approx(last["eval_forget_nll"])
    final = trainer.state.log_history[-1]  # the end-of-training log: what moved, on every probed set
    for name in ("forget", "retain", "holdout"):
        assert final[f"{name}_nll_before"] == pytest.approx(report["before"][f"{name}_nll"])
        assert final[f"{name}_nll_after"] == pytest.approx(report["after"][f"{name}_nll"])
    assert report["before"]["mia_auc"] >= 0.95 and report["after"]["mia_auc"] < 0.8  # memorised, then not
