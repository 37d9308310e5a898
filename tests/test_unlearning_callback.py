"""The unlearning probe and its callback: numbers equal the Evaluator's, TensorBoard shows forgetting, card, errors."""

import os

import pytest
from transformers import TrainingArguments

from hf_unlearn import GAConfig, GATrainer, NPOConfig, NPOTrainer, UnlearnDataCollator, VKDConfig
from hf_unlearn.evaluation import Evaluator
from hf_unlearn.evaluation.probe import Probe, select_rows
from hf_unlearn.methods.vkd import VKDTrainer
from hf_unlearn.trainers.callbacks import UnlearningEvalCallback

from conftest import MEMORISED
from memorised_people import benchmark, load, memorised_people, splits  # noqa: F401 (fixture)


def test_probe_numbers_equal_the_evaluator(memorised_people):  # noqa: F811
    model, processor = load(memorised_people)
    bench = benchmark()
    sets = {"forget": bench["forget_vqa"], "holdout": bench["holdout_vqa"], "text": bench["retain_qa"]}
    probe = Probe(sets, UnlearnDataCollator(processor), max_rows=100, batch_size=3)
    result = probe.evaluate(model)
    evaluator = Evaluator(model, processor, bench, batch_size=4)
    for name, ds in sets.items():
        assert result[f"{name}_nll"] == pytest.approx(float(evaluator.answer_nll(ds).mean()), rel=1e-4)
        assert result[f"{name}_acc"] == evaluator.mcq_accuracy(ds)
    assert result["mia_auc"] == pytest.approx(evaluator.membership_auc("forget_vqa", "holdout_vqa"))
    # Memorised (to the fixture's bar): members stand out from never-seen faces
    assert result["forget_acc"] >= MEMORISED.min_accuracy and result["mia_auc"] >= 0.95
    # A fixed seeded subset: the same rows every time, at most max_rows of them.
    assert select_rows(bench["retain_vqa"], 7, seed=3) == select_rows(bench["retain_vqa"], 7, seed=3)
    assert len(Probe(sets, UnlearnDataCollator(processor), max_rows=4).rows["forget"]) == 4


def test_tensorboard_shows_forget_and_retain_accuracy_at_eval_steps(memorised_people, tmp_path):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, processor = load(memorised_people)
    sets = splits(benchmark())
    logdir = tmp_path / "out" / "runs"  # transformers 5: TensorBoard writes under output_dir/runs/
    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=1e-3, max_steps=10,
                             report_to="tensorboard", logging_steps=5, eval_strategy="steps", eval_steps=5, save_strategy="no",
                             disable_tqdm=True, use_cpu=True, seed=0)
    trainer = GATrainer(model, args=args, train_dataset=sets["forget"], retain_dataset=sets["retain"],
                        eval_dataset=sets["retain_vqa"], processing_class=processor,
                        callbacks=[UnlearningEvalCallback(extra_sets={"text": sets["text"]})])
    trainer.train()
    runs = [os.path.join(root) for root, _, files in os.walk(logdir) if any("tfevents" in f for f in files)]
    events = EventAccumulator(runs[0])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("eval/forget_acc", "eval/retain_acc", "eval/forget_nll", "eval/retain_nll", "eval/text_nll",
                "eval/loss"):
        assert tag in tags, (tag, sorted(tags))
    forget_acc = {e.step: e.value for e in events.Scalars("eval/forget_acc")}
    retain_acc = {e.step: e.value for e in events.Scalars("eval/retain_acc")}
    assert sorted(forget_acc) == sorted(retain_acc) == [5, 10]  # at each evaluation, nowhere else
    assert retain_acc[10] > forget_acc[10]  # forgetting shows up as it happens
    # The evaluation's metrics dict carries them too (metric_for_best_model / early stopping can use them).
    assert "eval_forget_acc" in trainer.evaluate()


def test_report_reaches_the_model_card_without_row_content(memorised_people, tmp_path):  # noqa: F811
    model, processor = load(memorised_people)
    bench = benchmark()
    sets = splits(bench)
    args = GAConfig(output_dir=str(tmp_path / "out"), learning_rate=2e-3, max_steps=6, report_to="none",
                    save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, probe_steps=3)
    trainer = GATrainer(model, args=args, train_dataset=sets["forget"], retain_dataset=sets["retain"],
                        holdout_dataset=sets["holdout"], processing_class=processor,
                        callbacks=[UnlearningEvalCallback(extra_sets={"secret_people": bench["holdout_qa"]})])
    trainer.train()
    report = trainer.unlearning_report
    assert set(report["probe_rows"]) == {"forget", "retain", "holdout"}  # user-named sets stay out of the card
    assert report["stop_rule"]["enabled"] and report["probe_steps"] == 3
    card = str(trainer.create_model_card(output_dir=str(tmp_path / "card")))
    assert "unlearning_report.after.forget_nll" in card and "unlearning_report.stop_rule.criterion" in card
    assert "secret_people" not in card
    for row in list(bench["forget_vqa"]) + list(bench["holdout_vqa"]):
        assert row["answer"] not in card


def test_progress_bars_follow_disable_tqdm(memorised_people, tmp_path, capfd):  # noqa: F811
    model, processor = load(memorised_people)
    sets = splits(benchmark())
    for disable in (False, True):
        npo = NPOTrainer(model, args=NPOConfig(output_dir=str(tmp_path / "npo"), precompute_ref_log_probs=True,
                                               max_steps=1, disable_tqdm=disable, report_to="none", use_cpu=True,
                                               probe_rows=4),
                         train_dataset=sets["forget"], processing_class=processor)
        npo.train()
        vkd = VKDTrainer(model, args=VKDConfig(output_dir=str(tmp_path / "vkd"), precompute_teacher_features=True,
                                               max_steps=1, disable_tqdm=disable, report_to="none", use_cpu=True,
                                               probe_rows=0),
                         train_dataset=sets["forget"], retain_dataset=sets["retain_vqa"], processing_class=processor)
        vkd.train()
        err = capfd.readouterr().err
        for bar in ("NPO reference log-probs", "VKD teacher features (forget)", "VKD teacher features (retain)",
                    "probe forget"):
            assert (bar in err) != disable, (bar, disable)


def test_configuration_errors(memorised_people, tmp_path):  # noqa: F811
    model, processor = load(memorised_people)
    sets = splits(benchmark())

    def make(**kw):
        args = GAConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True,
                        **{k: v for k, v in kw.items() if k != "holdout_dataset"})
        return GATrainer(model, args=args, train_dataset=sets["forget"], processing_class=processor,
                         holdout_dataset=kw.get("holdout_dataset"))

    with pytest.raises(ValueError, match="stop_at_holdout=True needs `holdout_dataset=`"):
        make(stop_at_holdout=True)
    with pytest.raises(ValueError, match="probe_rows=0 disables it"):
        make(probe_rows=0, holdout_dataset=sets["holdout"])
    with pytest.raises(ValueError, match="`holdout_dataset` is empty"):
        make(holdout_dataset=sets["holdout"].select([]))
    with pytest.raises(ValueError, match="stop_criterion"):
        GAConfig(output_dir=str(tmp_path), stop_criterion="loss")
    with pytest.raises(ValueError, match="extra_sets may not be named"):
        UnlearningEvalCallback(extra_sets={"forget": sets["forget"]})
    assert make(probe_rows=0, holdout_dataset=sets["holdout"], stop_at_holdout=False).unlearning_eval.enabled is False


def test_probe_batch_size_sets_the_probes_forward_passes_and_falls_back_to_the_eval_batch(
        memorised_people, tmp_path):  # noqa: F811
    model, processor = load(memorised_people)
    sets = splits(benchmark())

    def probe_of(**kw):
        args = GAConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, probe_rows=8, **kw)
        trainer = GATrainer(model, args=args, train_dataset=sets["forget"], retain_dataset=sets["retain"],
                            processing_class=processor, holdout_dataset=sets["holdout"])
        return trainer.unlearning_eval._build_probe()  # what on_train_begin builds

    forwarded = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: forwarded.append(len(kwargs["input_ids"])),
                                           with_kwargs=True)
    try:
        by_probe_batch = probe_of(probe_batch_size=8, per_device_eval_batch_size=2).evaluate(model, accuracy=False)
        passes_at_8, forwarded[:] = list(forwarded), []
        by_eval_batch = probe_of(per_device_eval_batch_size=2).evaluate(model, accuracy=False)
    finally:
        hook.remove()
    assert passes_at_8 == [8, 8, 8]  # forget, retain and holdout: one pass of 8 rows each
    assert forwarded == [2] * 12  # None: per_device_eval_batch_size
    assert by_probe_batch == pytest.approx(by_eval_batch, rel=1e-5)  # float32 rounding of other batch shapes
    with pytest.raises(ValueError, match="probe_batch_size must be >= 1"):
        GAConfig(output_dir=str(tmp_path), probe_batch_size=0)
