"""Confident learning (Northcutt, Jiang and Chuang, 2021): which given labels the out-of-sample predicted
probabilities contradict, written here from the paper (cleanlab implements it, under the AGPL).

Each class gets a threshold, the mean probability the model gives that class on the images labeled with
it (its self-confidence); an image "confidently belongs" to every class whose probability reaches that
class's threshold, and counts for the likeliest of them. These counts by (given label, likely class) are
the confident joint; calibrated to the given labels' counts and normalised, they estimate how often each
class was filed as another. The images to suspect are, for each pair (given i, likely j), the n * Q[i, j]
of class i with the largest margin p_j - p_i ("prune by noise rate"), ranked by how little the model
believes their given label.

The probabilities must be out-of-sample (each image scored by a model that did not train on it): a model's
own training images are fitted, and would hide their wrong labels.

imgclf's default suspects (filter_by="doubt") are narrower than that pruning: an image is a suspect when
the model's likeliest class is another and the given label gets less than the model gives it on most
(ALIKE) of that likelier class's own pictures, or under DOUBT times the given class's threshold. Why: a
picture filed wrong looks like the pictures of its true class, so it gets what they get for the wrong
label (the floor, 0.01 on Fashion-MNIST), while a look-alike the model is merely unsure of (a shirt it
gives 0.15 of T-shirt) gets more, yet the pairs' counts take it in. Where the typical picture of j gets
more than FILED / K of i, the model has learned that j is often filed as i (trained on those labels), a
j filed as i gets that share too and no longer looks wrong: for those pairs the pruning decides. With 5%
of Fashion-MNIST's 60,000 labels flipped at random, the pruning alone (cleanlab's default, which gives the
same suspects) scored precision 0.63 and recall 0.91, the default 0.80 and 0.96; with 20% of the four tops
filed as one another, the pruning 0.70 / 0.89, the doubt alone 0.82 / 0.70, the default 0.70 / 0.89
(benchmarks/labels.py). The pruning alone is filter_by="noise_rate".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgclf.errors import DataError

RANKINGS = ("self_confidence", "normalized_margin")
FILTERS = ("doubt", "noise_rate")  # which images are suspects: the module's docstring
FOLDS = 3  # models the out-of-sample scores come from unless told (imgclf/label_review.py), as cleanlab's cross-validation
DOUBT = 0.1  # a suspect's given label gets under this share of its class's threshold (the module's docstring says why)
ALIKE = 0.75  # ... or under this quantile of what the model gives it on the likelier class's own pictures
FILED = 0.5  # the share of 1/K the median picture of j gets for i, above which the model learned "j filed as i"


@dataclass
class LabelIssues:
    """What confident learning found: the suspects (indices, most suspect first), their suggested class,
    the confident joint, the estimated joint of given and likely labels, and each class's noise rate."""

    suspects: np.ndarray  # indices into the images, most suspect first
    suggested: np.ndarray  # per suspect: the likeliest other class
    quality: np.ndarray  # per suspect: the ranking score (low: the given label is least believed)
    thresholds: np.ndarray  # per class: the mean self-confidence
    confident_joint: np.ndarray  # K x K counts: given label (row), likely class (column)
    joint: np.ndarray  # K x K, sums to 1: the estimated share of images given i whose class is j

    @property
    def noise_rates(self) -> np.ndarray:
        """Per given class: the estimated share of its images that belong to another class."""
        rows = self.joint.sum(1)
        return np.where(rows > 0, 1 - np.diag(self.joint) / np.maximum(rows, 1e-12), 0.0)


def _checked(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.ndim != 1 or len(labels) != len(probs):
        raise DataError(f"labels ({labels.shape}) and probabilities ({probs.shape}) must be N and N x K for the same N images.")
    k = probs.shape[1]
    if len(labels) == 0 or k < 2:
        raise DataError(f"finding label issues needs images of at least 2 classes; got {len(labels)} images of {k} class(es).")
    if labels.min() < 0 or labels.max() >= k or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be class indices 0..{k - 1}; got values from {labels.min()} to {labels.max()}.")
    if not np.all(np.isfinite(probs)) or np.abs(probs.sum(1) - 1).max() > 1e-3:
        raise DataError("probabilities must be finite and each row must sum to 1 (softmax outputs of out-of-sample predictions).")
    return labels, probs


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-class thresholds (mean self-confidence) and the K x K confident joint (given, likely)."""
    labels, probs = _checked(labels, probs)
    k = probs.shape[1]
    thresholds = np.array([probs[labels == c, c].mean() if np.any(labels == c) else 1.0 for c in range(k)])
    above = probs >= thresholds - 1e-12  # the classes each image confidently belongs to
    likely = np.where(above, probs, -1.0).argmax(1)
    counted = above.any(1)
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[counted], likely[counted]), 1)
    return thresholds, joint


def find_label_issues(labels: np.ndarray, probs: np.ndarray, rank_by: str = RANKINGS[0], filter_by: str = FILTERS[0]) -> LabelIssues:
    """The suspects, ranked by rank_by: self_confidence (the probability of the given label) or
    normalized_margin (that minus the likeliest other class's). filter_by="doubt": the images whose likeliest
    class is another and whose given label gets less than on that class's own pictures or under DOUBT times
    its class's threshold, but the pruning's picks for pairs the model learned to file as each other (the
    module's docstring says why); filter_by="noise_rate": those that pruning by the estimated noise rate of
    each (given, likely) pair picks (cleanlab's default)."""
    if rank_by not in RANKINGS:
        raise DataError(f"rank_by={rank_by!r} is not one of {', '.join(RANKINGS)}.")
    if filter_by not in FILTERS:
        raise DataError(f"filter_by={filter_by!r} is not one of {', '.join(FILTERS)}.")
    labels, probs = _checked(labels, probs)
    n, k = probs.shape
    thresholds, cj = confident_joint(labels, probs)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    rows = cj.sum(1, keepdims=True).astype(np.float64)
    calibrated = np.where(rows > 0, cj / np.maximum(rows, 1) * counts[:, None], 0.0)  # rows sum to the given counts
    joint = calibrated / max(calibrated.sum(), 1e-12)
    if filter_by == "doubt":
        chosen = _doubted(labels, probs, thresholds, joint)
    else:
        chosen = _pruned_by_noise_rate(labels, probs, joint)
    # An image the model itself labels as given is no suspect, whatever the pair's count says.
    chosen &= probs.argmax(1) != labels
    suspects = np.flatnonzero(chosen)
    given = probs[suspects, labels[suspects]]
    others = probs[suspects].copy()
    others[np.arange(len(suspects)), labels[suspects]] = -1.0
    suggested = others.argmax(1)
    quality = given if rank_by == "self_confidence" else given - others.max(1, initial=0.0)
    order = np.argsort(quality, kind="stable")
    return LabelIssues(suspects[order], suggested[order], quality[order], thresholds, cj, joint)


def _doubted(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """Images whose given label gets less than the ALIKE quantile of what the model gives it on the pictures
    labeled with, and predicted as, their likeliest class, or under DOUBT times its class's threshold; for
    the pairs the model learned to file as each other, the pruning by noise rate."""
    n, k = probs.shape
    likely = probs.argmax(1)
    usual, typical = np.zeros((k, k)), np.zeros((k, k))  # [i, j]: p_i on the pictures labeled and predicted j
    for j in range(k):
        own = (labels == j) & (likely == j)
        if own.any():
            usual[:, j] = np.quantile(probs[own], ALIKE, axis=0)
            typical[:, j] = np.median(probs[own], axis=0)
    doubted = probs[np.arange(n), labels] < np.maximum(DOUBT * thresholds[labels], usual[labels, likely])
    # Where j's typical picture gets a real share of i, the model learned that j is often filed as i, and a
    # j filed as i no longer looks wrong to it: there the pair's estimated count decides.
    learned = typical[labels, likely] > FILED / k
    return np.where(learned, _pruned_by_noise_rate(labels, probs, joint), doubted)


def _pruned_by_noise_rate(labels: np.ndarray, probs: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """For each pair (given i, likely j), the n * joint[i, j] images of class i with the largest p_j - p_i."""
    n, k = probs.shape
    chosen = np.zeros(n, dtype=bool)
    for i in range(k):
        members = np.flatnonzero(labels == i)
        for j in range(k):
            take = int(round(n * joint[i, j])) if i != j else 0
            if take <= 0 or len(members) == 0:
                continue
            margin = probs[members, j] - probs[members, i]
            order = members[np.argsort(-margin, kind="stable")]
            chosen[order[: min(take, len(members))]] = True
    return chosen
