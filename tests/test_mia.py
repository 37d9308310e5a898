"""Membership-inference attacks: hand computations on fixed tensors, AUCs with known answers, the Evaluator's
per-row scores on a tiny Llama."""

import math
import zlib

import numpy as np
import pytest
import torch

from hf_unlearn.data.collators import UnlearnDataCollator
from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, benchmark_corpus, build_synthetic_benchmark
from hf_unlearn.evaluation import Evaluator, mia
from hf_unlearn.evaluation.metrics import roc_auc
from hf_unlearn.testing import tiny_llama

# One row of 4 positions over a vocabulary of 3; the answer is tokens 2 and 3 (labels -100 elsewhere).
LOGITS = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 0.0, -1.0], [5.0, 5.0, 5.0]]])
LABELS = torch.tensor([[-100, -100, 2, 0]])

from conftest import fit_batch


def _log_softmax(row):
    row = np.asarray(row, dtype=np.float64)
    return row - np.log(np.exp(row).sum())


def test_token_stats_by_hand():
    stats = mia.answer_token_stats(LOGITS, LABELS)
    # Position 1 predicts token 2 (label 2), position 2 predicts token 3 (label 0); position 0 and 3 are not scored.
    lz1, lz2 = _log_softmax([1, 2, 3]), _log_softmax([2, 0, -1])
    np.testing.assert_allclose(stats["log_prob"][0], [lz1[2], lz2[0]], rtol=1e-6)
    mu = [np.sum(np.exp(lz) * lz) for lz in (lz1, lz2)]
    sd = [np.sqrt(np.sum(np.exp(lz) * (lz - m) ** 2)) for lz, m in zip((lz1, lz2), mu)]
    np.testing.assert_allclose(stats["vocab_mean"][0], mu, rtol=1e-6)
    np.testing.assert_allclose(stats["vocab_std"][0], sd, rtol=1e-5)
    assert stats["argmax_match"][0].tolist() == [1.0, 1.0]  # argmax 2 at position 1, argmax 0 at position 2


def test_scores_by_hand():
    lp = [np.array([-1.0, -2.0, -3.0, -4.0, -5.0]), np.array([-0.5])]
    np.testing.assert_allclose(mia.loss_score(lp), [-3.0, -0.5])
    # k = 0.4 of 5 tokens = the 2 lowest; of 1 token: at least one.
    np.testing.assert_allclose(mia.min_k_score(lp, k=0.4), [-4.5, -0.5])
    np.testing.assert_allclose(mia.min_k_score(lp, k=0.2), [-5.0, -0.5])
    np.testing.assert_allclose(mia.min_k_score(lp, k=1.0), mia.loss_score(lp))  # k = 1 is the LOSS attack
    texts = ["aaaaaaaaaaaaaaaa", "Riga"]
    np.testing.assert_allclose(mia.zlib_score(lp, texts),
                               [-3.0 / len(zlib.compress(b"aaaaaaaaaaaaaaaa")), -0.5 / len(zlib.compress(b"Riga"))])
    np.testing.assert_allclose(mia.reference_score(np.array([1.0, 2.0]), np.array([3.0, 1.5])), [2.0, -0.5])
    np.testing.assert_allclose(mia.gradnorm_score(np.array([0.1, 2.0])), [-0.1, -2.0])
    with pytest.raises(ValueError, match="k in \\(0, 1\\]"):
        mia.min_k_score(lp, k=0.0)
    with pytest.raises(ValueError, match="Row 1 has no answer tokens"):
        mia.loss_score([np.array([-1.0]), np.array([])])


def test_min_k_pp_equals_a_hand_computation():
    stats = mia.answer_token_stats(LOGITS, LABELS)
    lz1, lz2 = _log_softmax([1, 2, 3]), _log_softmax([2, 0, -1])
    z = []
    for lz, label in ((lz1, 2), (lz2, 0)):
        p = np.exp(lz)
        mu = (p * lz).sum()
        sigma = math.sqrt((p * lz ** 2).sum() - mu ** 2)
        z.append((lz[label] - mu) / sigma)
    got = mia.min_k_pp_score(stats["log_prob"], stats["vocab_mean"], stats["vocab_std"], k=0.5)  # 1 of 2 tokens
    np.testing.assert_allclose(got, [min(z)], rtol=1e-5)
    got = mia.min_k_pp_score(stats["log_prob"], stats["vocab_mean"], stats["vocab_std"], k=1.0)
    np.testing.assert_allclose(got, [np.mean(z)], rtol=1e-5)
    # A uniform next-token distribution has no spread: the variance floor keeps the score finite.
    flat = mia.answer_token_stats(torch.zeros(1, 2, 3), torch.tensor([[-100, 1]]))
    assert np.isfinite(mia.min_k_pp_score(flat["log_prob"], flat["vocab_mean"], flat["vocab_std"])).all()


def test_auc_on_constructed_score_sets():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(5, 1, 50), rng.normal(-5, 1, 40)
    assert roc_auc(members, nonmembers) == 1.0  # separable
    assert roc_auc(nonmembers, members) == 0.0
    same = rng.normal(0, 1, 30)
    assert roc_auc(same, same) == pytest.approx(0.5, abs=1e-12)  # identical score sets
    aucs = mia.attack_aucs({"loss": members, "min_k": same}, {"loss": nonmembers, "min_k": same})
    assert aucs == {"mia_loss_auc": 1.0, "mia_min_k_auc": pytest.approx(0.5, abs=1e-12)}
    with pytest.raises(ValueError, match="only one side"):
        mia.attack_aucs({"loss": members}, {"loss": nonmembers, "zlib": nonmembers})


def test_roc_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 6, 37).astype(float), rng.integers(0, 6, 23).astype(float)  # many ties
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert roc_auc(pos, neg) == pytest.approx(pairwise, abs=1e-12)
    assert roc_auc([math.inf, 3.0], [3.0, -math.inf]) == pytest.approx(0.875)  # infinities keep their rank


# --------------------------------------------------------------------------------------------------------------------
# The Evaluator's per-row scores on a tiny Llama
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_bench():
    return build_synthetic_benchmark(
        SyntheticBenchmarkConfig(num_people=4, num_holdout_people=2, num_validation_people=0, forget_ratio=0.5,
                                 num_general=4)
    )


@pytest.fixture(scope="module")
def member_llama(text_bench):
    """A tiny Llama trained on forget_qa (the members) until it has memorised them."""
    model, tok = tiny_llama(corpus=benchmark_corpus(text_bench))
    batch = UnlearnDataCollator(tok)([{"question": r["question"], "answer": r["answer"]}
                                      for r in text_bench["forget_qa"]])
    return fit_batch(model, batch, steps=120), tok


def test_mia_scores_match_full_logit_computation(text_bench):
    model, tok = tiny_llama(corpus=benchmark_corpus(text_bench))
    rows = text_bench["forget_qa"].select(range(5))
    ev = Evaluator(model, tok, text_bench, batch_size=2)  # 3 batches of ragged rows, logits trimmed
    scores = ev.mia_scores(rows)
    assert set(scores) == {"loss", "zlib", "min_k", "min_k_pp"} and all(len(v) == 5 for v in scores.values())
    np.testing.assert_allclose(scores["loss"], -ev.answer_nll(rows), rtol=1e-5)
    collate = UnlearnDataCollator(tok)
    for i, row in enumerate(rows):
        batch = collate([{"question": row["question"], "answer": row["answer"]}])
        with torch.no_grad():
            logits = model(**batch).logits  # untrimmed, batch of one
        lz = logits[0, :-1].double().log_softmax(-1)
        labels = batch["labels"][0, 1:]
        keep = labels != -100
        lz, target = lz[keep], labels[keep]
        lp = lz.gather(-1, target[:, None])[:, 0]
        mu = (lz.exp() * lz).sum(-1)
        sd = ((lz.exp() * lz ** 2).sum(-1) - mu ** 2).sqrt()
        z = ((lp - mu) / sd).numpy()
        n = max(1, int(len(z) * 0.2))
        assert scores["min_k_pp"][i] == pytest.approx(np.sort(z)[:n].mean(), rel=1e-4)
        assert scores["min_k"][i] == pytest.approx(np.sort(lp.numpy())[:n].mean(), rel=1e-4)
        assert scores["zlib"][i] == pytest.approx(lp.mean().item() / len(zlib.compress(row["answer"].encode())),
                                                  rel=1e-4)


def test_memorised_members_are_told_apart_and_the_reference_calibrates(member_llama, text_bench):
    model, tok = member_llama
    ev = Evaluator(model, tok, text_bench, batch_size=8)
    aucs = ev.membership_aucs("forget_qa", "holdout_qa")
    assert set(aucs) == {"mia_loss_auc", "mia_zlib_auc", "mia_min_k_auc", "mia_min_k_pp_auc"}
    # Memorised members against never-seen rows (the fixture's loss is far below every holdout row's)
    assert aucs["mia_loss_auc"] >= 0.95 and aucs["mia_min_k_auc"] >= 0.95 and aucs["mia_min_k_pp_auc"] > 0.9
    assert aucs["mia_loss_auc"] == ev.membership_auc("forget_qa", "holdout_qa")  # the evaluate() key's attack
    # The model as its own reference: every reference score is 0, no signal.
    with_ref = ev.membership_aucs("forget_qa", "holdout_qa", reference=model)
    assert with_ref["mia_reference_auc"] == 0.5
    # An untrained reference (never saw the members) keeps the signal; precomputed reference NLLs give the same.
    untrained, _ = tiny_llama(corpus=benchmark_corpus(text_bench))
    ref_eval = Evaluator(untrained, tok, text_bench)
    pair = (ref_eval.answer_nll(text_bench["forget_qa"]), ref_eval.answer_nll(text_bench["holdout_qa"]))
    calibrated = ev.membership_aucs("forget_qa", "holdout_qa", reference=untrained)["mia_reference_auc"]
    assert calibrated >= 0.95
    assert ev.membership_aucs("forget_qa", "holdout_qa", reference=pair)["mia_reference_auc"] == calibrated


def test_gradient_norm_attack_equals_manual_backward(member_llama, text_bench):
    model, tok = member_llama
    ev = Evaluator(model, tok, text_bench)
    rows = text_bench["holdout_qa"].select(range(2))
    norms = ev.gradient_norms(rows)
    collate = UnlearnDataCollator(tok)
    for i, row in enumerate(rows):
        model.zero_grad()
        batch = collate([{"question": row["question"], "answer": row["answer"]}])
        model(**batch).loss.backward()
        manual = torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None))
        assert norms[i] == pytest.approx(manual.item(), rel=1e-4)
    model.zero_grad(set_to_none=True)
    scores = ev.mia_scores(rows, gradient_norm=True)
    np.testing.assert_allclose(scores["gradnorm"], -norms, rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # the attack leaves .grad alone
    # Memorised rows sit at a minimum: their gradients are smaller than unseen rows'.
    assert ev.membership_aucs("forget_qa", "holdout_qa", gradient_norm=True)["mia_gradnorm_auc"] > 0.9
