"""The on-device loader: shuffling, sharding across ranks, normalisation and batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclf import AugmentConfig, DeviceLoader, load_data


@pytest.fixture(scope="module")
def data():
    return load_data("digits")


def _loader(data, **kw):
    kw.setdefault("batch_size", 64)
    return DeviceLoader(data.train, mean=data.mean, std=data.std, hflip_default=data.hflip, **kw)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_are_disjoint_and_complete(data, world_size):
    for epoch in (0, 1):
        shards = [_loader(data, train=True, rank=r, world_size=world_size, seed=5).positions(epoch) for r in range(world_size)]
        together = torch.cat(shards)
        assert len(together) == len(data.train) and len(torch.unique(together)) == len(data.train)
        assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    # evaluation shards too
    shards = [_loader(data, rank=r, world_size=world_size).positions() for r in range(world_size)]
    assert sorted(torch.cat(shards).tolist()) == list(range(len(data.train)))


def test_labels_follow_images_and_every_sample_served_once(data):
    loader = _loader(data, train=True, augment=AugmentConfig(crop_padding=0), seed=1)
    seen = []
    for x, y in loader:
        seen.append(y)
    assert torch.cat(seen).sort().values.tolist() == sorted(data.train.labels.tolist())
    # without augmentation, each served image equals the stored one, under its own label
    plain = _loader(data, train=False, batch_size=100)
    x, y = next(iter(plain))
    raw = torch.from_numpy(data.train.take(np.arange(100))).float()
    expected = (raw / 255 - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5) and y.tolist() == data.train.labels[:100].tolist()


def test_reshuffled_each_epoch_and_reproducible(data):
    a = _loader(data, train=True, seed=7)
    first = [y.clone() for _, y in a]
    second = [y.clone() for _, y in a]
    assert a.epoch == 2
    assert not torch.equal(torch.cat(first), torch.cat(second))
    b = _loader(data, train=True, seed=7)
    xa = [x for x, _ in _loader(data, train=True, seed=7)]
    xb = [x for x, _ in b]
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))  # same seed, same augmented batches
    b.set_epoch(1)
    assert torch.equal(torch.cat([y for _, y in b]), torch.cat(second))


def test_normalised_statistics(data):
    x = torch.cat([x for x, _ in _loader(data, batch_size=500)])
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


def test_augmentation_changes_images_but_not_shapes():
    data = load_data("fashion-mnist", val_fraction=0)
    sub = data.train.subset(np.arange(512))
    kw = dict(mean=data.mean, std=data.std, batch_size=512, seed=0)
    plain = next(iter(DeviceLoader(sub, **kw)))[0]
    aug = DeviceLoader(sub, train=True, augment=AugmentConfig(erasing=1.0), **kw)
    assert aug.augment.hflip and aug.augment.max_dy == 3
    x, _ = next(iter(aug))
    assert x.shape == plain.shape and not torch.equal(x, plain)
    erased = (x == 0).flatten(1).sum(1)
    assert (erased > 0).float().mean() > 0.95  # erasing at p=1 blanks a patch of every image


def test_flip_is_off_for_digits(data):
    loader = _loader(data, train=True, augment=AugmentConfig())
    assert loader.augment.hflip is False
    assert _loader(data, train=True).augment is None  # no AugmentConfig: batches served as they are


def test_shift_moves_content_by_at_most_the_padding():
    from imgclf.data.augment import shift_and_flip

    x = torch.zeros(200, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    out = shift_and_flip(x, 2, 2, False, torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(out[:, 0] == 255, as_tuple=True)[1:]
    assert len(ys) == 200 and (ys - 4).abs().max() == 2 and (xs - 4).abs().max() == 2
    assert len({(int(a), int(b)) for a, b in zip(ys, xs)}) == 25  # all 5x5 offsets occur


def test_flip_mirrors_about_half_the_images():
    from imgclf.data.augment import shift_and_flip

    x = torch.zeros(400, 3, 6, 10, dtype=torch.uint8)
    x[:, :, :, 0] = 255  # a bright left edge
    out = shift_and_flip(x, 0, 0, True, torch.Generator().manual_seed(0))
    right = (out[:, :, :, -1] == 255).all(dim=(1, 2))
    left = (out[:, :, :, 0] == 255).all(dim=(1, 2))
    assert (right ^ left).all() and 150 < int(right.sum()) < 250


def test_streaming_from_memory_map_equals_resident(tmp_path, fmnist_small):
    from conftest import write_class_tree

    root = write_class_tree(tmp_path / "t", *fmnist_small)
    data = load_data(root)
    kw = dict(mean=data.mean, std=data.std, batch_size=32, train=True, seed=3)
    resident = [(x, y) for x, y in DeviceLoader(data.train, resident=True, **kw)]
    streamed = [(x, y) for x, y in DeviceLoader(data.train, resident=False, **kw)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resident, streamed))
