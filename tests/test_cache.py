"""Decode once: hits load without decoding, and any change to the file list rebuilds the cache."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from conftest import FOLDER_NAMES, write_class_tree
from imgclf import load_data


def test_hit_miss_and_invalidation(tmp_path, fmnist_small):
    images, labels = fmnist_small
    root = write_class_tree(tmp_path / "t", images[:50], labels[:50])
    first = load_data(root, val_fraction=0)
    assert first.cache_hit is False
    stamp = os.stat(first.cache_dir / "images.npy").st_mtime_ns
    second = load_data(root, val_fraction=0)
    assert second.cache_hit is True and second.cache_dir == first.cache_dir
    assert os.stat(second.cache_dir / "images.npy").st_mtime_ns == stamp  # nothing rewritten
    assert isinstance(second.train.images, np.memmap)
    assert np.array_equal(second.train.array(), first.train.array())

    # A changed file: same name, other pixels, so its size or mtime differs.
    victim = root / FOLDER_NAMES[labels[0]] / "img00000.png"
    Image.fromarray(255 - images[0], "L").save(victim)
    os.utime(victim, ns=(1, 1))
    changed = load_data(root, val_fraction=0)
    assert changed.cache_hit is False
    row = changed.train.origins.index(str(victim))
    assert np.array_equal(changed.train.take(np.array([row]))[0, 0], 255 - images[0])

    # An added and a removed file.
    Image.fromarray(images[60], "L").save(root / FOLDER_NAMES[labels[60]] / "extra.png")
    assert len(load_data(root, val_fraction=0).train) == 51
    assert load_data(root, val_fraction=0).cache_hit is True
    (root / FOLDER_NAMES[labels[60]] / "extra.png").unlink()
    after = load_data(root, val_fraction=0)
    assert after.cache_hit is False and len(after.train) == 50


def test_size_and_channels_are_part_of_the_key(tmp_path, fmnist_small):
    root = write_class_tree(tmp_path / "t", fmnist_small[0][:20], fmnist_small[1][:20])
    a = load_data(root)
    b = load_data(root, image_size=16, channels=3)
    assert a.cache_dir != b.cache_dir and b.train.images.shape[1:] == (3, 16, 16)
    assert load_data(root).cache_hit and load_data(root, image_size=16, channels=3).cache_hit


def test_resampling_and_centre_crop_are_part_of_the_key(tmp_path, fmnist_small):
    root = write_class_tree(tmp_path / "t", fmnist_small[0][:20], fmnist_small[1][:20])
    plain = load_data(root, image_size=20, val_fraction=0)
    bicubic = load_data(root, image_size=20, interpolation="bicubic", val_fraction=0)
    cropped = load_data(root, image_size=20, crop_fraction=0.5, val_fraction=0)
    assert len({plain.cache_dir, bicubic.cache_dir, cropped.cache_dir}) == 3
    assert not np.array_equal(plain.train.array(), bicubic.train.array())
    # Half the side of a 28 px garment, enlarged to 20 px: the border of the picture is gone, its middle fills the frame.
    assert plain.train.array()[:, :, 0].mean() < cropped.train.array()[:, :, 0].mean()
    assert load_data(root, image_size=20, crop_fraction=0.5, val_fraction=0).cache_hit
    # The default framing keeps the key it had before the framing could be set: existing caches stay valid.
    assert load_data(root, image_size=20, interpolation="bilinear", crop_fraction=1.0, val_fraction=0).cache_dir == plain.cache_dir


def test_damaged_cache_is_rebuilt(tmp_path, fmnist_small):
    root = write_class_tree(tmp_path / "t", fmnist_small[0][:20], fmnist_small[1][:20])
    data = load_data(root)
    (data.cache_dir / "images.npy").write_bytes(b"not a numpy file")
    again = load_data(root)
    assert again.cache_hit is False and len(again.train) + len(again.val) == 20


def test_parallel_and_serial_decoding_agree(tmp_path, fmnist_small):
    root = write_class_tree(tmp_path / "t", *fmnist_small)
    serial = load_data(root, workers=1, cache_dir=str(tmp_path / "c1"), val_fraction=0)
    parallel = load_data(root, workers=2, cache_dir=str(tmp_path / "c2"), val_fraction=0)
    assert np.array_equal(serial.train.array(), parallel.train.array())
    assert serial.train.origins == parallel.train.origins
