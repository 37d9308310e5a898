"""Evaluator, membership inference and relearning on tiny offline models."""

import logging

import numpy as np
import pytest
import torch

from hf_unlearn import losses
from hf_unlearn.data.collators import UnlearnDataCollator
from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, benchmark_corpus, build_synthetic_benchmark
from hf_unlearn.evaluation import Evaluator, RelearnConfig, relearn_attack, split_for_relearning
from hf_unlearn.testing import tiny_llama, tiny_llava, tiny_qwen2_5_vl, tiny_qwen2_vl

from conftest import MEMORISED

ALL_KEYS = {"forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc", "retain_qa_acc", "test_vqa_acc", "general_acc",
            "forget_rougeL", "mia_auc"}


@pytest.fixture(scope="module")
def bench():
    return build_synthetic_benchmark(
        SyntheticBenchmarkConfig(num_people=4, num_holdout_people=2, forget_ratio=0.25, num_general=4)
    )


@pytest.fixture(scope="module")
def memorised_llama(bench):
    """A tiny text-only Llama that has memorised forget_qa (full-batch AdamW)."""
    model, tok = tiny_llama(corpus=benchmark_corpus(bench))
    rows = bench["forget_qa"]
    batch = UnlearnDataCollator(tok)([{"question": r["question"], "answer": r["answer"]} for r in rows])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert loss.item() < 0.05
    return model, tok


def test_untrained_llava_gives_every_metric_in_range(bench):
    model, proc = tiny_llava(corpus=benchmark_corpus(bench))
    ev = Evaluator(model, proc, bench, batch_size=4)
    first = ev.evaluate()
    assert set(first) == ALL_KEYS
    assert all(0.0 <= v <= 1.0 for v in first.values())
    assert ev.skipped == {}
    assert ev.evaluate() == first  # deterministic: greedy decoding, no sampling


def test_option_scores_match_a_hand_computation(bench):
    model, proc = tiny_llava(corpus=benchmark_corpus(bench))
    split = bench["forget_vqa"].select(range(3))
    got = Evaluator(model, proc, bench, batch_size=2).option_scores(split)  # batches of 2 questions: 8 sequences
    collate = UnlearnDataCollator(proc)
    for i, row in enumerate(split):
        batch = collate([{"question": row["question"], "answer": o, "image": row["image"]} for o in row["options"]])
        with torch.no_grad():
            logits = model(**batch).logits  # full logits, no trimming
        logps, counts = losses.sequence_log_probs(logits, batch["labels"])
        np.testing.assert_allclose(got[i], (logps / counts).numpy(), rtol=1e-4, atol=1e-5)
    summed = Evaluator(model, proc, bench, option_score="sum").option_scores(split)
    assert (summed <= got + 1e-6).all()  # a sum of >= 1 negative log-probs is below their mean


def test_candidate_scores_give_each_columns_scores_and_forward_each_distinct_answer_once(bench):
    model, proc = tiny_llava(corpus=benchmark_corpus(bench))
    other = bench["retain_vqa"]["answer"]
    split = bench["forget_vqa"].select(range(3)).map(lambda row, i: {"perturbed_answers": [  # truth-ratio rows
        *(o for o in row["options"] if o != row["answer"]), other[i]]}, with_indices=True)
    ev = Evaluator(model, proc, bench, batch_size=2)
    forwarded = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: forwarded.append(len(kwargs["input_ids"])),
                                           with_kwargs=True)
    try:
        scores = ev.candidate_scores(split)
    finally:
        hook.remove()
    # The true answer is an option; the perturbed answers repeat some wrong options: each is scored once.
    distinct = [len({row["answer"], *row["options"], *row["perturbed_answers"]}) for row in split]
    assert sum(forwarded) == sum(distinct) < sum(1 + len(r["options"]) + len(r["perturbed_answers"]) for r in split)
    assert len(forwarded) == 2  # one forward per batch of 2 questions, whatever each row's number of candidates
    # The same numbers as scoring each column on its own, up to float32 rounding of a differently padded batch.
    close = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores["options"].table(), ev.option_scores(split), **close)
    np.testing.assert_allclose(-np.concatenate(scores["answer"].mean), ev.answer_nll(split), **close)
    for got, alone in zip(scores["perturbed_answers"].mean, ev.perturbed_nll(split)):
        np.testing.assert_allclose(-got, alone, **close)
    labels = np.asarray(split["label"])
    np.testing.assert_array_equal(  # the true answer's score is its option's
        np.concatenate(scores["answer"].mean), scores["options"].table()[np.arange(len(split)), labels])
    summed = scores["options"].table("sum")
    assert (summed <= scores["options"].table() + 1e-6).all()


def test_memorised_rows_score_one_and_relabelled_rows_score_zero(memorised_llama, bench):
    model, tok = memorised_llama
    ev = Evaluator(model, tok, bench, batch_size=8)
    assert ev.mcq_accuracy("forget_qa") >= MEMORISED.min_accuracy

    def relabel(row):  # point the label at a distractor: the memorised answer is now wrong
        label = (row["label"] + 1) % 4
        return {"label": label, "answer": row["options"][label]}

    assert ev.mcq_accuracy(bench["forget_qa"].map(relabel)) == 0.0
    # Greedy answers reproduce the memorised ones.
    assert ev.rouge_l("forget_qa") >= MEMORISED.min_accuracy


def test_text_only_model_skips_image_splits_with_a_message(memorised_llama, bench, caplog):
    model, tok = memorised_llama
    ev = Evaluator(model, tok, bench, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="hf_unlearn.evaluation.evaluator"):
        results = ev.evaluate()
    assert set(results) == {"forget_qa_acc", "retain_qa_acc", "forget_rougeL", "mia_auc"}
    assert set(ev.skipped) == {"forget_vqa", "retain_vqa", "test_vqa", "general"}
    assert "text-only" in ev.skipped["forget_vqa"]
    assert "Skipping split 'forget_vqa'" in caplog.text
    # Members (trained forget_qa) vs never-seen holdout_qa: the loss separates them (0.5 would be no signal).
    assert ev.mia_splits() == ("forget_qa", "holdout_qa")
    assert results["mia_auc"] >= 0.9


@pytest.mark.parametrize("builder", [tiny_qwen2_vl, tiny_qwen2_5_vl], ids=["qwen2_vl", "qwen2_5_vl"])
def test_qwen_models_score_and_generate(builder, bench):
    model, proc = builder(corpus=benchmark_corpus(bench))
    ev = Evaluator(model, proc, bench, batch_size=3, max_new_tokens=3)
    scores = ev.option_scores(bench["forget_vqa"])
    assert scores.shape == (len(bench["forget_vqa"]), 4) and np.isfinite(scores).all()
    texts = ev.generate(bench["forget_vqa"])
    assert len(texts) == len(bench["forget_vqa"]) and all(isinstance(t, str) for t in texts)
    assert 0.0 <= ev.membership_auc("forget_vqa", "holdout_vqa") <= 1.0


def test_relearning_split_is_per_person_and_disjoint(bench):
    forget = bench["forget_vqa"]
    attack, test = split_for_relearning(forget, fraction=0.5, seed=0)
    assert len(attack) + len(test) == len(forget)
    key = lambda ds: {(r["person_id"], r["question"]) for r in ds.select_columns(["person_id", "question"])}
    assert not key(attack) & key(test)
    assert set(attack["person_id"]) == set(test["person_id"]) == set(forget["person_id"])
    assert split_for_relearning(forget, 0.5, 0)[0]["question"] == attack["question"]  # seeded
    with pytest.raises(ValueError, match="fraction"):
        RelearnConfig(fraction=1.0)


def test_relearn_attack_leaves_the_model_untouched(bench):
    model, proc = tiny_llava(corpus=benchmark_corpus(bench))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    config = RelearnConfig(steps=3, learning_rate=1e-2, batch_size=2)
    out = relearn_attack(model, proc, bench["forget_vqa"], config)
    assert set(out) == {"relearn_acc", "relearn_pre_acc"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    _, test = split_for_relearning(bench["forget_vqa"], config.fraction, config.seed)
    assert out["relearn_pre_acc"] == Evaluator(model, proc, bench).mcq_accuracy(test)
    assert relearn_attack(model, proc, bench["forget_vqa"], config) == out  # deterministic


def test_errors_name_the_problem(bench):
    model, proc = tiny_llava(corpus=benchmark_corpus(bench))
    with pytest.raises(ValueError, match="option_score"):
        Evaluator(model, proc, bench, option_score="max")
    with pytest.raises(KeyError, match="no split 'nope'"):
        Evaluator(model, proc, bench).mcq_accuracy("nope")
