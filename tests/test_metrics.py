"""Metric functions against hand computations."""

import math

import numpy as np
import pytest

from hf_unlearn.evaluation.metrics import mcq_accuracy, mcq_predictions, roc_auc, rouge_l


def test_mcq_predictions_take_the_first_best_option_on_ties():
    scores = np.array([[0.1, 0.9, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    assert mcq_predictions(scores).tolist() == [1, 0, 2]


def test_mcq_accuracy_by_hand():
    scores = np.array([[0.1, 0.9, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    assert mcq_accuracy(scores, [1, 1, 2]) == pytest.approx(2 / 3)
    assert mcq_accuracy(-scores, [2, 1, 0]) == pytest.approx(3 / 3)  # argmax of negated scores: 2, 1, 0


def test_mcq_accuracy_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 questions scored but 3 labels"):
        mcq_accuracy(np.zeros((2, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="zero questions"):
        mcq_accuracy(np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="num_questions, num_options"):
        mcq_predictions(np.zeros(4))


def test_rouge_l_known_strings():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": 5 of 6 tokens on both sides.
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # Precision 1/1, recall 1/2 -> F = 2/3; the stemmer maps "dogs" to "dog".
    assert rouge_l(["dogs"], ["the dog"]) == pytest.approx(2 / 3)
    # Mean over rows: (1 + 0) / 2; an empty generation scores 0.
    assert rouge_l(["Riga", ""], ["Riga", "Lisbon"]) == pytest.approx(0.5)


def test_rouge_l_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])


def test_roc_auc_known_rankings():
    # Pairs (pos, neg): (3,1) win, (3,2) win, (2,1) win, (2,2) tie -> (3 + 0.5) / 4.
    assert roc_auc([3, 2], [1, 2]) == pytest.approx(0.875)
    assert roc_auc([5, 6, 7], [1, 2]) == 1.0
    assert roc_auc([1, 2], [5, 6, 7]) == 0.0
    assert roc_auc([1, 1], [1, 1, 1]) == 0.5
    # Infinite scores (a loss that overflowed) still rank; NaN does not.
    assert roc_auc([math.inf], [1.0, -math.inf]) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([math.nan], [1.0])
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([], [1.0])
