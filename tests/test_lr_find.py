"""The learning-rate range test and the GPU batch finder, on real Fashion-MNIST images: through the engine
(the trainer is put back exactly), the Python API and the CLI (nothing written but the plot)."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

import imgclf
from conftest import write_class_tree
from imgclf.cli import main
from imgclf.config import Config
from imgclf.engine import recipe
from imgclf.engine.lr_find import LrCurve, range_test
from imgclf.engine.trainer import Trainer

RANGE = dict(start=1e-5, end=100.0, steps=30)  # 30 steps reach lrs no network survives: the test stops early
SMALL = dict(device="cpu", batch_size=16)  # steps of half the default's size: quicker on a busy 2-core machine


def _trainer(images, labels, tmp_path, **settings) -> Trainer:
    data = imgclf.load_data((images, labels))
    config, _ = recipe.resolve(Config().override(**settings), data)
    return Trainer(data, config, tmp_path / "run")


def _same(a, b) -> bool:
    """Two state dicts (nested, as an optimizer's is) hold equal values, tensor for tensor."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
def test_the_range_test_puts_weights_and_optimizer_back_exactly(fmnist_small, tmp_path):
    trainer = _trainer(*fmnist_small, tmp_path, **SMALL)
    x, y = next(iter(trainer.train_loader))
    trainer.train_step(x, y)  # an optimizer with state (AdamW's moments) to be put back, not only weights
    model, optimizer = copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict())
    curve = range_test(trainer, **RANGE)
    assert len(curve.lrs) == len(curve.losses) == len(curve.smoothed) > 10
    assert _same(trainer.model.state_dict(), model) and _same(trainer.optimizer.state_dict(), optimizer)
    assert all(p.grad is None for p in trainer.model.parameters())
    # The trainer still trains as if nothing happened: the same step gives the same loss twice.
    _, first = trainer.train_step(x, y)
    trainer.model.load_state_dict(model)
    trainer.optimizer.load_state_dict(optimizer)
    _, again = trainer.train_step(x, y)
    assert first.item() == again.item()
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_lr_grows_exponentially_with_each_group_at_its_share(fmnist_small, tmp_path):
    trainer = _trainer(*fmnist_small, tmp_path, device="cpu")
    for g in trainer.optimizer.param_groups:
        g["scale"] = 0.5
    seen = []
    step = trainer.train_step
    trainer.train_step = lambda x, y: (seen.append([g["lr"] for g in trainer.optimizer.param_groups]), step(x, y))[1]
    curve = range_test(trainer, start=1e-6, end=1e-3, steps=10)
    assert len(curve.lrs) == 10 and curve.lrs[0] == pytest.approx(1e-6) and curve.lrs[-1] == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(curve.lrs, curve.lrs[1:])]
    assert ratios == pytest.approx([10 ** (1 / 3)] * 9)
    assert seen == [[pytest.approx(lr / 2)] * len(trainer.optimizer.param_groups) for lr in curve.lrs]


def test_the_suggestion_is_where_the_smoothed_loss_falls_fastest():
    lrs = [10 ** (-6 + i / 4) for i in range(30)]
    smoothed = [2.0] * 12 + [1.9, 1.5, 1.4, 1.35] + [1.3] * 8 + [1.4, 1.8, 2.5, 3.5, 5.0, 7.0]
    smoothed[4] = 2.45  # an early wobble: a steeper drop to its neighbour (2.45 -> 2.0) than any step of the real fall
    curve = LrCurve(lrs, smoothed, smoothed, lrs[0], lrs[-1], 30)
    assert curve.steepest() == pytest.approx(10 ** (-6 + 12.5 / 4))  # the middle of 2.0 -> 1.4, the steepest 3-step stretch
    assert curve.min_loss_lr() == pytest.approx(lrs[16] / 10)  # the first of the lowest losses
    with pytest.raises(imgclf.ImgclfError, match="lower --start"):
        LrCurve(lrs[:6], smoothed[:6], smoothed[:6], lrs[0], 1.0, 30).steepest()


def test_lr_find_suggests_inside_the_range_stops_early_and_keeps_nothing(fmnist_small, tmp_path):
    runs = tmp_path / "runs"
    result = imgclf.lr_find(fmnist_small, **SMALL, out=str(runs), plot=tmp_path / "lr.png", **RANGE)
    assert len(result.lrs) < RANGE["steps"]  # stopped once the smoothed loss passed 4x its minimum
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    assert result.lrs[0] == RANGE["start"] < result.suggestion < result.lrs[-1] < RANGE["end"]
    assert 1e-4 < result.suggestion < 1e-1 and result.recipe_lr == 2e-3  # a lr a network of this kind learns at
    with Image.open(result.plot) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not runs.exists()


def test_a_range_that_cannot_be_tested_fails_before_any_work(fmnist_small):
    with pytest.raises(imgclf.ImgclfError, match="--start 1 and --end 0.001"):
        imgclf.lr_find(fmnist_small, device="cpu", start=1, end=1e-3)
    with pytest.raises(imgclf.ImgclfError, match="--steps 3"):
        imgclf.lr_find(fmnist_small, device="cpu", steps=3)


@pytest.fixture
def small_folder(tmp_path, fmnist_small):
    return write_class_tree(tmp_path / "clothes", *fmnist_small)


def test_cli_lr_find_prints_the_suggestion_and_writes_only_the_plot(small_folder, tmp_path, capsys):
    runs, plot = tmp_path / "runs", tmp_path / "plots" / "lr.png"
    (runs / "taken").mkdir(parents=True)
    (runs / "taken" / "config.yaml").write_text("a run of the user's\n")  # a --name copied from a train command
    code = main(["lr-find", str(small_folder), "--device", "cpu", "--batch-size", "16", "--steps", "20", "--out", str(runs),
                 "--plot", str(plot), "--name", "taken", "--optimizer", "sgd"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "lr range test: 1e-06 to " in out and "of 20 steps" in out and "suggested lr: " in out
    assert "the recipe's lr: 0.1" in out and f"plot: {plot}" in out  # the sgd recipe's lr, as train would use it
    with Image.open(plot) as im:
        assert im.format == "PNG"
    assert [p.name for p in runs.iterdir()] == ["taken"] and [p.name for p in (runs / "taken").iterdir()] == ["config.yaml"]


def test_cli_batch_find_on_a_cpu_is_a_one_line_error(small_folder, capsys):
    assert main(["batch-find", str(small_folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("imgclf: error: batch-find measures GPU memory")
    assert "on a CPU (or MPS) the batch size is chosen for steps per epoch, not memory" in err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="batch-find measures GPU memory")
def test_batch_find_on_cuda_finds_a_limit_and_puts_the_trainer_back(fmnist, tmp_path):
    from imgclf.engine.batch_find import largest_batch

    images, labels = fmnist
    trainer = _trainer(images[:20000], labels[:20000], tmp_path, device="cuda", batch_size=64)
    model, optimizer = copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict())
    total = torch.cuda.mem_get_info()[1]
    # About 2 GiB more than it holds makes the real network run out well below the 18,000 training images.
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 2 * 2**30) / total))
    try:
        fit = largest_batch(trainer)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert None in fit.tried.values() and fit.start <= fit.largest < fit.cap, fit.tried
    assert all(peak is not None for b, peak in fit.tried.items() if b <= fit.largest)
    s = fit.suggestion
    assert s & (s - 1) == 0 and s <= 0.8 * fit.largest < 2 * s
    assert _same(trainer.model.state_dict(), model) and _same(trainer.optimizer.state_dict(), optimizer)
    x, y = next(iter(trainer.train_loader))
    trainer.train_step(x, y)  # the trainer (its grad scaler too) still steps after the out-of-memory trials
    assert "largest that fit" in fit.summary()
