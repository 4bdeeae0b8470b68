"""The validation split: stratified, seeded, explained when a class is too small."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf import ImgclfError, load_data
from imgclf.config import DataConfig
from imgclf.data.imageset import stratified_split


def test_stratified_proportions_on_fashion_mnist():
    data = load_data("fashion-mnist")
    train, val = data.train.class_counts(10), data.val.class_counts(10)
    assert (val == 600).all() and (train == 5400).all()
    assert not set(data.train.index) & set(data.val.index)


def test_uneven_classes_keep_their_share(digits):
    labels = np.concatenate([np.zeros(200, int), np.ones(50, int), np.full(10, 2)])
    tr, va, notes = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[va]).tolist() == [40, 10, 2] and not notes
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)


def test_seeded():
    labels = np.repeat(np.arange(5), 40)
    a, b, c = (stratified_split(labels, 0.1, s)[1] for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_single_image_class_is_explained():
    labels = np.array([0] * 20 + [1] * 20 + [2])
    tr, va, notes = stratified_split(labels, 0.1, 0, classes=["Shirt", "Coat", "Bag"])
    assert 40 in tr and 40 not in va
    assert notes and "single image" in notes[0] and notes[0].endswith(": Bag")


def test_fraction_is_validated():
    with pytest.raises(ImgclfError, match="val_fraction"):
        DataConfig(val_fraction=1.5)
