"""The recipe decided from the planned amount of training, the same for a given --epochs and for the epochs a
--time budget planned on any machine: the switches depend on epochs and steps, never on seconds."""

from __future__ import annotations

import pytest

import imgclf
from imgclf.engine import recipe


@pytest.fixture(scope="module")
def six_thousand(fmnist):
    images, labels = fmnist
    return imgclf.load_data((images[:6000], labels[:6000]))


@pytest.mark.parametrize(
    "epochs, expected",
    [(5, "off"), (8, "flips"), (12, "flips"), (20, "flips"), (29, "flips"), (30, "crops"), (60, "crops")],
)
def test_augmentation_follows_the_planned_epochs(six_thousand, epochs, expected):
    # A budget that planned 20 epochs on a fast machine used to cross into crops and shifts (from 15), which on
    # the full Fashion-MNIST trailed flips alone at 20 epochs and only drew level at 30.
    config, notes = recipe.resolve(imgclf.Config().override(device="cpu", epochs=epochs), six_thousand)
    aug = config.data.augment
    got = "off" if not config.train.augment else "flips" if aug.crop_padding == 0 else "crops"
    assert got == expected, notes
    assert config.train.tta == (expected != "off")  # test-time views come with flips
    if expected == "flips":
        assert any("crops and shifts from 30 epochs" in n for n in notes)


def test_a_short_run_of_many_epochs_gets_no_crops(six_thousand):
    # 30 epochs of a 6-step epoch are 180 steps in all: too little training for crops and shifts to pay.
    config, _ = recipe.resolve(imgclf.Config().override(device="cpu", epochs=30, batch_size=1024), six_thousand)
    assert config.train.augment and config.data.augment.crop_padding == 0


@pytest.mark.slow
def test_a_budget_beyond_what_pays_plans_at_most_the_cap_and_says_so(fmnist, tmp_path, caplog):
    import logging

    from imgclf.engine.budget import MAX_PLANNED_EPOCHS, TimeBudget
    from imgclf.engine.trainer import Trainer

    images, labels = fmnist
    data = imgclf.load_data((images[:60], labels[:60]))  # one short step an epoch: thousands would fit in 30 s
    config, _ = recipe.resolve(imgclf.Config().override(device="cpu", epochs=1), data)
    with caplog.at_level(logging.INFO, logger="imgclf"):
        planned = TimeBudget(30.0).plan(Trainer(data, config, tmp_path / "run"))
    assert planned == MAX_PLANNED_EPOCHS
    assert f"{MAX_PLANNED_EPOCHS} are planned, beyond which more training has not paid" in caplog.text
