"""Confident learning on probabilities whose truth is known: the thresholds and confident joint computed by
hand, the flipped labels found among clean ones, the noise rate estimated, bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.data.label_issues import confident_joint, find_label_issues
from imgclf.errors import DataError


def test_thresholds_and_the_confident_joint_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9],  # the third is filed as 0 but looks like 1
                      [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]])
    thresholds, joint = confident_joint(labels, probs)
    assert thresholds == pytest.approx([0.6, 0.7])  # mean of p0 over the 0s, of p1 over the 1s
    # 0s: (0.9, 0.1) -> 0; (0.8, 0.2) -> 0; (0.1, 0.9) -> 1. 1s: (0.3, 0.7) -> 1; (0.2, 0.8) -> 1; (0.4, 0.6) reaches neither.
    assert joint.tolist() == [[2, 1], [0, 2]]
    assert find_label_issues(labels, probs, filter_by="noise_rate").suspects.tolist() == [2]  # pruned by the noise rate
    # The default: its likeliest class is 1, and 0.1 of class 0 is less than the 1s get (3/4 of them: 0.35).
    issues = find_label_issues(labels, probs)
    assert issues.suspects.tolist() == [2] and issues.suggested.tolist() == [1]
    probs[2] = [0.45, 0.55]  # more of class 0 than any 1 gets, and over a tenth of its threshold: doubt
    assert find_label_issues(labels, probs).suspects.tolist() == []


def _noisy(n=3000, k=5, flip=0.10, seed=0, alike=0.0, unsure=0.0):
    """A model that is right about 95% of the time on the true classes, and labels of which `flip` were
    moved to another class at random. alike: how much of class 0's evidence every 1 also shows, and back
    (what a model learns from labels that often file one as the other); unsure: the share of 0s and 1s
    that show the other's evidence as much as their own (look-alikes)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), truth] += 3.5
    logits[truth == 0, 1] += alike
    logits[truth == 1, 0] += alike
    doubtful = (truth < 2) & (rng.random(n) < unsure)
    logits[doubtful, 1 - truth[doubtful]] += 3.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = truth.copy()
    flipped = rng.random(n) < flip
    given[flipped] = (truth[flipped] + rng.integers(1, k, flipped.sum())) % k
    return given, probs, flipped


@pytest.mark.parametrize("rank_by", ["self_confidence", "normalized_margin"])
def test_flipped_labels_are_found_and_ranked_first(rank_by):
    given, probs, flipped = _noisy()
    issues = find_label_issues(given, probs, rank_by=rank_by)
    found = np.zeros(len(given), bool)
    found[issues.suspects] = True
    precision, recall = flipped[found].mean(), found[flipped].mean()
    assert precision >= 0.85 and recall >= 0.8, (precision, recall)
    assert np.all(np.diff(issues.quality) >= 0)  # most suspect first
    top = issues.suspects[:50]
    assert flipped[top].mean() >= 0.95  # the most suspect are nearly all real flips
    truth_of_top = probs[top].argmax(1)
    assert (issues.suggested[:50] == truth_of_top).mean() >= 0.9


def _precision_recall(issues, flipped):
    found = np.zeros(len(flipped), bool)
    found[issues.suspects] = True
    return flipped[found].mean(), found[flipped].mean()


def test_look_alikes_the_model_doubts_are_no_suspects_by_default():
    given, probs, flipped = _noisy(n=6000, flip=0.05, seed=2, unsure=0.15)
    pruned = _precision_recall(find_label_issues(given, probs, filter_by="noise_rate"), flipped)
    default = _precision_recall(find_label_issues(given, probs), flipped)
    assert default[0] > pruned[0] + 0.1 and default[1] >= 0.8, (default, pruned)


def test_classes_learned_as_filed_as_each_other_are_pruned_by_their_count():
    given, probs, flipped = _noisy(n=6000, flip=0.05, seed=2, alike=2.0)
    pruned = find_label_issues(given, probs, filter_by="noise_rate")
    default = find_label_issues(given, probs)
    pair = (given < 2) & (probs.argmax(1) < 2)  # given 0 or 1, likelier 1 or 0
    assert set(default.suspects[pair[default.suspects]]) == set(pruned.suspects[pair[pruned.suspects]])
    assert _precision_recall(default, flipped)[1] >= 0.8


def test_the_noise_rate_of_each_class_is_estimated():
    given, probs, flipped = _noisy(n=6000, flip=0.10, seed=1)
    rates = find_label_issues(given, probs).noise_rates
    true_rates = np.array([flipped[given == c].mean() for c in range(5)])
    assert np.abs(rates - true_rates).max() < 0.05, (rates, true_rates)


def test_clean_labels_give_few_suspects():
    given, probs, _ = _noisy(flip=0.0)
    issues = find_label_issues(given, probs)
    assert len(issues.suspects) <= 0.01 * len(given)  # only where the model is confidently wrong


@pytest.mark.parametrize(
    "labels, probs, said",
    [
        (np.array([0, 1]), np.array([[0.5, 0.5]]), "same N images"),
        (np.array([0, 2]), np.array([[0.5, 0.5], [0.4, 0.6]]), "class indices 0..1"),
        (np.array([0, 1]), np.array([[0.9, 0.9], [0.4, 0.6]]), "sum to 1"),
        (np.array([0, 0]), np.array([[1.0], [1.0]]), "at least 2 classes"),
    ],
)
def test_bad_input_is_one_line(labels, probs, said):
    with pytest.raises(DataError, match=said) as err:
        find_label_issues(labels, probs)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError):
        find_label_issues(np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]), rank_by="loss")
    with pytest.raises(DataError, match="doubt, noise_rate"):
        find_label_issues(np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]), filter_by="both")
