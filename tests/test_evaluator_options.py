"""The Evaluator on K options per row (CLEAR names) and on generation-only splits (CLEAR's TOFU questions)."""

import datasets
import numpy as np
import pytest

from hf_unlearn.data.schema import has_options, rows_to_dataset
from hf_unlearn.evaluation import Evaluator, metrics
from hf_unlearn.testing import tiny_llama

NAMES = ["Alba Vemb", "Bo Tarn", "Cyra Lund", "Dax Morrow", "Eli Quist", "Fay Orin"]


def _row(question, answer, options=None, label=None):
    return dict(person_id=0, kind="qa", image=None, question=question, answer=answer, options=options, label=label)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(corpus=NAMES + ["Who wrote the book?", "Where was the author born?"])


def test_rows_with_different_option_counts(llama):
    model, tok = llama
    split = rows_to_dataset([
        _row("Who wrote the book?", "Bo Tarn", NAMES[:2], 1),
        _row("Who wrote the book?", "Alba Vemb", NAMES[:4], 0),
        _row("Who wrote the book?", "Fay Orin", NAMES, 5),
    ])
    ev = Evaluator(model, tok, {"retain_vqa": split}, batch_size=2)  # the 2- and 4-option rows share a batch
    scores = ev.option_scores(split)
    assert scores.shape == (3, 6)
    assert np.isneginf(scores[0, 2:]).all() and np.isneginf(scores[1, 4:]).all() and np.isfinite(scores[2]).all()
    for i in range(3):  # the same values as scoring each question alone
        alone = Evaluator(model, tok, {}, batch_size=1).option_scores(split.select([i]))
        np.testing.assert_allclose(scores[i, :len(split[i]["options"])], alone[0][np.isfinite(alone[0])], rtol=1e-5)
    assert ev.evaluate(rouge=False, mia=False) == {
        "retain_vqa_acc": metrics.mcq_accuracy(scores, split["label"])}  # padding never wins


def test_generation_only_split_is_scored_by_rouge(llama):
    model, tok = llama
    text = rows_to_dataset([_row("Where was the author born?", "Riga"), _row("Who wrote the book?", "Bo Tarn")])
    mcq = rows_to_dataset([_row("Who wrote the book?", "Bo Tarn", NAMES[:4], 1)])
    assert not has_options(text) and has_options(mcq)
    ev = Evaluator(model, tok, {"forget_qa": text, "retain_qa": mcq}, max_new_tokens=4)
    results = ev.evaluate(rouge=False, mia=False)
    assert set(results) == {"forget_qa_rougeL", "retain_qa_acc"}
    assert results["forget_qa_rougeL"] == ev.rouge_l("forget_qa")
    with pytest.raises(ValueError, match="generation-only; score it with rouge_l"):
        ev.mcq_accuracy("forget_qa")
    # A generation-only split concatenates with multiple-choice ones (same features): e.g. a training set.
    assert datasets.concatenate_datasets([text, mcq]).num_rows == 3
