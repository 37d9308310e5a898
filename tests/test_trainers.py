"""GA, GA_Diff, KL_Min and NPO on a tiny LLaVA that memorised a toy dataset."""

import math

import pytest
import torch
from transformers import LlavaForConditionalGeneration, TrainerCallback, TrainingArguments

from hf_unlearn import GAConfig, GATrainer, NPOConfig, NPOTrainer, UnlearnDataCollator, UnlearningDivergedError, losses

from conftest import load_llava, mean_nll, reduction_tolerance


def ga_args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=10, learning_rate=1e-3,
                    use_cpu=True, logging_steps=1, disable_tqdm=True, save_strategy="no", seed=0)
    defaults.update(kw)
    return defaults


def test_ga_raises_forget_loss_and_ga_diff_keeps_retain(memorised_llava, toy_data, tmp_path):
    results = {}
    for retain_type in ("none", "nll"):
        model, processor = load_llava(memorised_llava)
        before = (mean_nll(model, processor, toy_data["forget"]), mean_nll(model, processor, toy_data["retain"]))
        trainer = GATrainer(model=model, args=GAConfig(**ga_args(tmp_path, retain_loss_type=retain_type)),
                            train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                            processing_class=processor)
        trainer.train()
        after = (mean_nll(model, processor, toy_data["forget"]), mean_nll(model, processor, toy_data["retain"]))
        results[retain_type] = (before, after)
        logged = [h for h in trainer.state.log_history if "forget_nll" in h]
        assert len(logged) == 10 and all("forget_loss" in h for h in logged)
        assert ("retain_nll" in logged[0]) == (retain_type == "nll")
    (f0, r0), (f_ga, r_ga) = results["none"]
    (_, _), (f_diff, r_diff) = results["nll"]
    assert f0 < 0.2 and r0 < 0.2                 # memorised
    assert f_ga > 10 * f0 and f_ga > 2.0          # GA forgets
    assert f_diff > 2.0                           # GA_Diff forgets too ...
    assert r_diff < 0.5                           # ... while the retain NLL stays below 0.5 nats/token
    assert r_diff < r_ga                          # and better than plain GA


def test_kl_min_logs_kl_and_keeps_reference_frozen(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    trainer = GATrainer(model=model, args=GAConfig(**ga_args(tmp_path, retain_loss_type="kl", max_steps=4)),
                        train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                        processing_class=processor)
    ref_before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    trainer.train()
    kls = [h["retain_kl"] for h in trainer.state.log_history if "retain_kl" in h]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0
    assert all(torch.equal(v, trainer.ref_model.state_dict()[k]) for k, v in ref_before.items())


def test_npo_loss_equals_hand_formula(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    ref = LlavaForConditionalGeneration.from_pretrained(memorised_llava)
    with torch.no_grad():  # make the reference differ from the policy
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trainer = NPOTrainer(model=model, args=NPOConfig(**ga_args(tmp_path, beta=0.3, retain_loss_type="none")),
                         train_dataset=toy_data["forget"], processing_class=processor, ref_model=ref)
    batch = trainer.data_collator([{"forget": r, "retain": None} for r in toy_data["forget"]])
    model.train()
    loss = trainer.compute_loss(model, batch).item()
    with torch.no_grad():
        f = batch["forget"]
        logp = torch.log_softmax(model(**f).logits, -1)
        ref_logp = torch.log_softmax(ref(**f).logits, -1)
        hand = 0.0
        for i in range(f["labels"].shape[0]):
            pos = (f["labels"][i, 1:] != -100).nonzero().flatten()
            tgt = f["labels"][i, 1:][pos]
            delta = (logp[i, pos, tgt].sum() - ref_logp[i, pos, tgt].sum()).item()
            hand += -(2 / 0.3) * math.log(1 / (1 + math.exp(0.3 * delta)))
        hand /= f["labels"].shape[0]
    assert loss == pytest.approx(hand, rel=1e-4)


def test_npo_precomputed_reference_equals_live_and_holds_no_model(memorised_llava, toy_data, tmp_path):
    runs = {}
    for precompute in (False, True):
        model, processor = load_llava(memorised_llava)
        trainer = NPOTrainer(model=model, args=NPOConfig(**ga_args(tmp_path, max_steps=5, learning_rate=5e-4,
                                                                    precompute_ref_log_probs=precompute)),
                             train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                             processing_class=processor)
        trainer.train()
        runs[precompute] = ([h["forget_loss"] for h in trainer.state.log_history if "forget_loss" in h],
                            {k: v.clone() for k, v in model.state_dict().items()}, trainer)
    live, pre = runs[False], runs[True]
    # The runs differ only in the batch layout of the reference's forward (rounding), which Adam may amplify on
    # entries with near-zero gradients: compare the losses, and the stored values directly.
    assert live[0] == pytest.approx(pre[0], rel=1e-4)
    assert live[2].ref_model is not None and pre[2].ref_model is None
    # The live trainer holds a second model; the precomputing one holds none besides the policy.
    def extra_models(trainer):
        held = list(vars(trainer).values()) + list(vars(trainer.reference).values())
        return [v for v in held if isinstance(v, torch.nn.Module) and v is not trainer.model
                and v is not getattr(trainer, "model_wrapped", None)]

    assert len(extra_models(live[2])) == 1 and extra_models(pre[2]) == []
    stored = pre[2].precomputed.rows("forget.ref_logp")
    assert len(stored) == len(toy_data["forget"])
    reference, processor = load_llava(memorised_llava)  # the starting model, one row at a time, unpadded
    collate = UnlearnDataCollator(processor)
    for i, row in enumerate(toy_data["forget"]):
        batch = collate([row])
        with torch.no_grad():
            logp, count = losses.sequence_log_probs(reference(**batch).logits, batch["labels"])
        # A sum of `count` token log-probs, each a log-softmax over the vocabulary: the reductions that may reorder.
        tolerance = reduction_tolerance(abs(logp.item()) + count.item(), reference.config.text_config.vocab_size)
        assert stored[i].item() == pytest.approx(logp.item(), abs=tolerance)


def test_gradient_accumulation_scaling_matches_one_big_batch(memorised_llava, toy_data, tmp_path):
    from datasets import Dataset

    from hf_unlearn.testing.toy import toy_portrait

    rows = [{"image": toy_portrait(i), "question": "Who is it?", "answer": "Alice Smith"} for i in range(4)]
    forget = Dataset.from_list(rows)
    weights = []  # SGD: Adam's first step is ~lr*sign(g), which amplifies float noise in near-zero gradients
    for bs, accum in ((4, 1), (2, 2)):
        model, processor = load_llava(memorised_llava)
        GATrainer(model=model, args=GAConfig(**ga_args(tmp_path, per_device_train_batch_size=bs, max_steps=1,
                                                       gradient_accumulation_steps=accum, retain_loss_type="none",
                                                       optim="sgd")),
                  train_dataset=forget, processing_class=processor).train()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.allclose(v, weights[1][k], atol=1e-6) for k, v in weights[0].items())


def test_input_errors(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    with pytest.raises(ValueError, match="forget set .* is empty"):
        GATrainer(model=model, args=GAConfig(**ga_args(tmp_path)), train_dataset=toy_data["forget"].select([]),
                  processing_class=processor)
    with pytest.raises(ValueError, match="needs `retain_dataset=`"):
        GATrainer(model=model, args=GAConfig(**ga_args(tmp_path, retain_loss_type="nll")),
                  train_dataset=toy_data["forget"], processing_class=processor)
    with pytest.raises(ValueError, match="retain_loss_type"):
        GAConfig(**ga_args(tmp_path, retain_loss_type="l2"))


def test_plain_training_arguments_are_accepted(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    # remove_unused_columns=True by default; one eval batch so eval_loss is the token mean over all rows
    args = TrainingArguments(**ga_args(tmp_path, max_steps=2, per_device_eval_batch_size=len(toy_data["retain"])))
    trainer = GATrainer(model=model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                        processing_class=processor)
    assert isinstance(trainer.args, GAConfig) and trainer.args.retain_loss_type == "nll"
    assert trainer.args.remove_unused_columns is False and trainer.args.learning_rate == 1e-3
    trainer.train()
    # Evaluation on plain rows reports the ordinary LM loss.
    metrics = trainer.evaluate(eval_dataset=toy_data["retain"])
    assert metrics["eval_loss"] == pytest.approx(mean_nll(model, processor, toy_data["retain"]), rel=1e-4)


class _PoisonAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    args = GAConfig(**ga_args(tmp_path, save_strategy="steps", save_steps=2, max_steps=6))
    trainer = GATrainer(model=model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                        processing_class=processor, callbacks=[_PoisonAfter(3)])
    with pytest.raises(UnlearningDivergedError, match=r"became (nan|inf).*step 4.*checkpoint-2"):
        trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    reloaded = LlavaForConditionalGeneration.from_pretrained(ckpt)
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    # The guard put back the weights from before step 3 (the step whose result was poisoned): checkpoint-2's.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())


@pytest.mark.parametrize("method", ["ga_diff", "npo_precomputed"])
def test_resume_from_checkpoint_equals_uninterrupted(method, memorised_llava, toy_data, tmp_path):
    def make(name):
        model, processor = load_llava(memorised_llava)
        common = ga_args(tmp_path, output_dir=str(tmp_path / name), max_steps=6, save_strategy="steps",
                         save_steps=3, per_device_train_batch_size=1, learning_rate=5e-4)
        if method == "npo_precomputed":  # the reference log-probs must come from the *starting* model on resume too
            return model, NPOTrainer(model=model, args=NPOConfig(**common, precompute_ref_log_probs=True),
                                     train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                                     processing_class=processor)
        return model, GATrainer(model=model, args=GAConfig(**common), train_dataset=toy_data["forget"],
                                retain_dataset=toy_data["retain"], processing_class=processor)

    straight_model, straight = make("straight")
    straight.train()
    _, first = make("resumed")
    first.train()  # writes checkpoint-3 (and -6); then restart from checkpoint-3 with a fresh starting model
    resumed_model, resumed = make("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    diffs = [(k, (v - resumed_model.state_dict()[k]).abs().max().item()) for k, v in straight_model.state_dict().items()]
    assert max(d for _, d in diffs) == 0.0, [d for d in diffs if d[1] > 0][:3]


def test_stop_rule_stops_once_forget_nll_passes_threshold(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    args = GAConfig(**ga_args(tmp_path, max_steps=50, stop_forget_loss_above=1.0, retain_loss_type="none"))
    trainer = GATrainer(model=model, args=args, train_dataset=toy_data["forget"], processing_class=processor)
    trainer.train()
    step, value = trainer.stopped_early_at
    assert trainer.state.global_step == step < 50 and value > 1.0
    nlls = [h["forget_nll"] for h in trainer.state.log_history if "forget_nll" in h]
    assert all(v <= 1.0 for v in nlls[:-1])  # it stopped at the first step past the threshold
