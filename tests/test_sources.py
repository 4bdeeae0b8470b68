"""Every source layout gives the same result, with labels that match the truth and torchvision's mapping."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FMNIST_CLASSES, FMNIST_DIR, FOLDER_NAMES
from imgclf import DataError, load_data


def test_class_tree_matches_imagefolder_and_known_labels(class_tree, fmnist_small):
    from torchvision.datasets import ImageFolder

    data = load_data(class_tree, val_fraction=0)
    reference = ImageFolder(str(class_tree))
    assert data.classes == reference.classes == sorted(FOLDER_NAMES)
    assert [(o, int(l)) for o, l in zip(data.train.origins, data.train.labels)] == [(p, l) for p, l in reference.samples]
    # Every decoded image equals the real pixels, under the label the folder name gives it.
    images, labels = fmnist_small
    for origin, label, pixels in zip(data.train.origins, data.train.labels, data.train.array()):
        i = int(origin.rsplit("img", 1)[1].split(".")[0])
        assert data.classes[label] == FOLDER_NAMES[labels[i]]
        assert np.array_equal(pixels[0], images[i])
    assert data.channels == 1 and data.image_size == (28, 28)


def test_split_folders_are_detected(split_tree):
    data = load_data(split_tree)
    assert (len(data.train), len(data.val), len(data.test)) == (200, 50, 50)
    assert "train/val/test" in data.layout
    assert (data.val.class_counts(10) == 5).all() and (data.test.class_counts(10) == 5).all()
    assert all("/valid/" in o for o in data.val.origins)


def test_csv_layout(csv_layout, fmnist):
    images, labels = fmnist
    data = load_data(csv_layout, val_fraction=0)
    assert data.classes == [str(i) for i in range(10)]
    assert len(data.train) == 200 and len(data.test) == 50 and not data.test.labeled
    for origin, label, pixels in zip(data.train.origins, data.train.labels, data.train.array()):
        i = int(origin.rsplit("/", 1)[1].split(".")[0]) - 1
        assert label == labels[i] and np.array_equal(pixels[0], images[i])
    assert data.submission_template.endswith("sample_submission.csv")
    assert "CSV" in data.layout


def test_csv_with_names_extensions_and_custom_columns(tmp_path, fmnist):
    images, labels = fmnist
    (tmp_path / "pics").mkdir()
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File_Name", "Category"])
        for i in range(60):
            name = f"p{i}.png"
            Image.fromarray(images[i], "L").save(tmp_path / "pics" / name)
            w.writerow([name if i % 2 else f"p{i}", FMNIST_CLASSES[labels[i]]])  # with and without extension
    with pytest.raises(DataError, match="no image id column"):
        load_data(tmp_path / "labels.csv")
    data = load_data(tmp_path / "labels.csv", id_column="file_name", label_column="Category", val_fraction=0)
    assert data.classes == sorted(set(FMNIST_CLASSES[l] for l in labels[:60]))
    assert len(data.train) == 60
    got = {o.rsplit("/", 1)[1]: data.classes[l] for o, l in zip(data.train.origins, data.train.labels)}
    assert all(got[f"p{i}.png"] == FMNIST_CLASSES[labels[i]] for i in range(60))


def test_builtin_fashion_mnist_has_true_labels(fmnist):
    images, labels = fmnist
    data = load_data("fashion-mnist", val_fraction=0)
    assert data.classes == FMNIST_CLASSES
    assert np.array_equal(data.train.labels, labels) and labels[:4].tolist() == [9, 0, 0, 3]
    assert np.array_equal(data.train.take(np.arange(5))[:, 0], images[:5])
    assert len(data.test) == 10000 and (data.test.class_counts(10) == 1000).all()
    assert data.hflip is True


def test_builtin_digits_and_flip_default(digits):
    data = load_data("digits")
    assert data.channels == 1 and data.image_size == (8, 8)
    assert len(data.train) + len(data.val) == len(digits[0]) and data.test is None
    assert data.hflip is False  # a mirrored digit is another symbol


def test_builtin_lookup_order_prefers_data_root(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "mine" / "fashion-mnist"
    shutil.copytree(FMNIST_DIR, copy)
    monkeypatch.setenv("IMGCLF_DATA", str(tmp_path / "mine"))
    assert str(copy) in load_data("fashion-mnist").layout
    other = tmp_path / "other" / "FashionMNIST" / "raw"  # torchvision's own layout is found too
    shutil.copytree(FMNIST_DIR, other)
    assert str(other) in load_data("fashion-mnist", data_root=str(tmp_path / "other")).layout


def test_offline_builtin_gives_one_line_error(tmp_path):
    with pytest.raises(DataError) as err:
        load_data("mnist", data_root=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "train-images-idx3-ubyte.gz" in message and str(tmp_path) in message


def test_unknown_source_is_named():
    with pytest.raises(DataError, match="not-a-dataset: no such folder"):
        load_data("not-a-dataset")


@pytest.mark.parametrize("layout_maker, layout", [
    (lambda x: x, "NHW"),
    (lambda x: x[:, None], "NCHW"),
    (lambda x: x[:, :, :, None], "NHWC"),
    (lambda x: np.repeat(x[:, :, :, None], 3, axis=3), "NHWC"),
])
def test_arrays_layout_detected(fmnist_small, layout_maker, layout):
    images, labels = fmnist_small
    data = load_data((layout_maker(images), labels), val_fraction=0)
    assert layout in data.layout
    assert np.array_equal(data.train.array()[:, 0], images)


def test_arrays_float_ranges_and_tensors(fmnist_small):
    images, labels = fmnist_small
    for x in (images / 255.0, images.astype(np.float32), torch.from_numpy(images / 255.0)):
        data = load_data(x, labels=torch.from_numpy(labels), val_fraction=0)
        assert np.array_equal(data.train.array()[:, 0], images)


def test_arrays_ambiguous_layout_needs_layout_argument():
    x = np.zeros((5, 3, 8, 3), np.uint8)
    with pytest.raises(DataError, match="layout='NCHW' or layout='NHWC'"):
        load_data((x, np.zeros(5, int)))
    assert load_data((x, np.zeros(5, int)), layout="NHWC", val_fraction=0).train.images.shape == (5, 3, 3, 8)


def test_arrays_bad_values_are_refused():
    with pytest.raises(DataError, match="rescale"):
        load_data((np.full((4, 8, 8), 300.0), np.zeros(4, int)))
    with pytest.raises(DataError, match="4 images but 3 labels"):
        load_data((np.zeros((4, 8, 8), np.uint8), np.zeros(3, int)))


def test_array_string_labels_and_resize(fmnist_small):
    images, labels = fmnist_small
    names = np.array([FMNIST_CLASSES[l] for l in labels])
    data = load_data((images, names), image_size=32, channels=3, val_fraction=0)
    assert data.classes == sorted(set(names)) and data.train.images.shape[1:] == (3, 32, 32)
    assert [data.classes[l] for l in data.train.labels] == names.tolist()
