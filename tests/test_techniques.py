"""The training techniques of the one config, each a switch: weight averaging, test-time views, mixup
and cutmix, alternating flips, schedules, weight decay groups, gradient clipping, class imbalance and
training to a wall-clock budget. On real Fashion-MNIST and digits images, on the CPU.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

import imgclf
from imgclf import AugmentConfig, DeviceLoader, ImgclfError
from imgclf.config import parse_duration
from imgclf.data.augment import mix, tta_views
from imgclf.engine.schedule import lr_factor

FAST = dict(batch_size=64, device="cpu")


def _subset(fmnist, per_class: int, start: int = 0):
    images, labels = fmnist
    rows = np.sort(np.concatenate([np.flatnonzero(labels == c)[start:start + per_class] for c in range(10)]))
    return images[rows], labels[rows]


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_ema_is_scored_saved_and_resumed(fmnist, tmp_path):
    data = _subset(fmnist, 40)
    run = imgclf.train(data, epochs=2, ema=True, ema_decay=0.9, keep="last", out=str(tmp_path), name="ema", **FAST)
    last, best = _weights(run.run_dir / "checkpoints/last.pt"), _weights(run.run_dir / "checkpoints/best.pt")
    assert "ema" in last and int(last["ema"]["updates"]) == 2 * (len(run.data.train) // 64)
    averaged = last["ema"]["model"]
    raw = last["model"]
    key = "head.weight"
    assert not torch.equal(averaged[key], raw[key])  # the average is not the raw weights
    assert best["epoch"] == 2 and torch.equal(best["model"][key], averaged[key])  # the kept weights are the average


@pytest.mark.slow
def test_ema_resumes_exactly_after_a_kill(tmp_path):
    import signal
    import subprocess
    import sys

    from test_train import DIGITS, run_cli, wait_for_checkpoint

    args = [*DIGITS, "--epochs", "4", "--ema", "--out", str(tmp_path)]
    assert run_cli("train", *args, "--name", "straight").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "imgclf", "train", *args, "--name", "cut"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(tmp_path / "cut", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert run_cli("train", "--resume", str(tmp_path / "cut")).returncode == 0
    a, b = (_weights(tmp_path / name / "checkpoints/last.pt")["ema"]["model"] for name in ("cut", "straight"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = _weights(tmp_path / "straight/checkpoints/best.pt")["model"]
    if _weights(tmp_path / "straight/checkpoints/best.pt")["epoch"] == 4:
        assert all(torch.equal(best[k], b[k]) for k in b)


def test_tta_views_are_the_image_its_mirror_and_shifts():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    views = list(tta_views(x))
    assert len(views) == 6 and math.isclose(sum(w for _, w in views), 1.0)
    assert torch.equal(views[1][0], x.flip(3))
    assert torch.equal(views[2][0][:, :, 1:, 1:], x[:, :, :3, :3]) and views[2][0][:, :, 0].abs().sum() == 0
    assert torch.equal(views[4][0][:, :, :3, :3], x[:, :, 1:, 1:])
    assert [w for _, w in tta_views(x, shift=0)] == [0.5, 0.5]


@pytest.mark.slow
def test_tta_in_the_final_score_only_when_training_flipped(fmnist, tmp_path):
    images, labels = _subset(fmnist, 40)
    test = _subset(fmnist, 10, start=100)
    run = imgclf.train((images, labels), test=test, epochs=1, augment=True, tta=True, out=str(tmp_path), **FAST)
    results = json.loads((run.run_dir / "results.json").read_text())
    assert results["tta"] is True
    plain = imgclf.evaluate(run.run_dir, test, tta=False)
    viewed = imgclf.evaluate(run.run_dir, test, tta=True)
    assert viewed.metrics["tta"] and not np.allclose(plain.probs, viewed.probs)
    assert np.allclose(imgclf.evaluate(run.run_dir, test).probs, viewed.probs)  # by default as the run's final score
    assert results["test_acc"] == pytest.approx(viewed.metrics["accuracy"])
    # predict averages the same views (through its own inference path: folded BatchNorm, channels-last).
    clf = imgclf.load(run.run_dir, device="cpu", tta=True)
    assert np.allclose(clf.predict_proba(test[0]), viewed.probs, atol=1e-4)
    assert not np.allclose(imgclf.load(run.run_dir, device="cpu").predict_proba(test[0]), viewed.probs, atol=1e-4)
    # Digits are never flipped in training, so no flipped views at the end either.
    run = imgclf.train("digits", epochs=1, augment=True, tta=True, out=str(tmp_path), **FAST)
    assert json.loads((run.run_dir / "results.json").read_text())["tta"] is False


def test_mixup_and_cutmix_targets(fmnist):
    images, labels = _subset(fmnist, 2)
    x = torch.from_numpy(images[:, None].astype(np.float32))
    y = torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mixed, target = mix(x, y, 10, mixup=0.4, cutmix=0.0, gen=gen)
    assert torch.allclose(target.sum(1), torch.ones(len(y)))
    assert y[0] != y[-1]  # image 0 is mixed with the last (the batch reversed), of another class
    lam = float(target[0, y[0]])
    assert 0 < lam < 1 and torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[-1], atol=1e-4)
    same = y == y.flip(0)
    pasted_in_all = 0.0
    for _ in range(5):
        cut, target = mix(x, y, 10, mixup=0.0, cutmix=1.0, gen=gen)
        pasted = (cut != x).any(1).float().mean((1, 2))  # share of pixels taken from the partner image
        share = 1 - target[torch.arange(len(y)), y]
        assert torch.all(pasted[~same] <= share[~same] + 1e-6)  # pasted pixels that happen to be equal are not seen
        pasted_in_all += float(pasted[~same].mean())
    assert pasted_in_all > 0.05  # the boxes are really pasted (a cutmix that did nothing would pass the line above)


def test_alternating_flips_mirror_every_image_once_in_two_epochs(fmnist):
    images, labels = _subset(fmnist, 5)
    data = imgclf.load_data((images, labels), val_fraction=0)
    loader = DeviceLoader(data.train, 50, mean=data.mean, std=data.std, train=True, seed=3,
                          augment=AugmentConfig(crop_padding=0, hflip=True, alternate_flips=True))
    base = DeviceLoader(data.train, 50, mean=data.mean, std=data.std, train=False)
    plain = torch.cat([x for x, _ in base])
    flipped_count = torch.zeros(len(plain))
    for epoch in range(2):
        order = loader.positions(epoch)
        loader.set_epoch(epoch)
        batches = torch.cat([x for x, _ in loader])
        for x, row in zip(batches, order):
            if torch.equal(x, plain[row].flip(2)) and not torch.equal(x, plain[row]):
                flipped_count[row] += 1
            else:
                assert torch.equal(x, plain[row])
    symmetric = torch.tensor([torch.equal(p, p.flip(2)) for p in plain])
    assert torch.all(flipped_count[~symmetric] == 1)


def test_linear_schedule_and_durations():
    assert lr_factor("linear", 0, 100, 0.0) == pytest.approx(1.0)
    assert lr_factor("linear", 50, 100, 0.0) == pytest.approx(0.5, abs=1e-3)
    assert lr_factor("linear", 100, 100, 0.0) < 1e-3
    assert [parse_duration(t) for t in ("90s", "3m", "1h", "1h30m", "45")] == [90, 180, 3600, 5400, 45]
    for bad in ("3 minutes", "", "2s", "m"):
        with pytest.raises(ImgclfError):
            parse_duration(bad)


def test_weight_decay_skips_norms_and_biases_unless_asked():
    from imgclf.models.transfer import param_groups

    model = imgclf.create_model("small_resnet", 1, 10, (28, 28))
    groups = param_groups(model, 0.01, weight_decay=0.05, decay_norms=False)
    for g in groups:
        flat = all(p.ndim <= 1 for p in g["params"])
        assert g["weight_decay"] == (0.0 if flat else 0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0.05 for g in param_groups(model, 0.01, weight_decay=0.05, decay_norms=True))


@pytest.mark.slow
def test_gradient_clipping_bounds_the_step(fmnist, tmp_path):
    from imgclf.engine import recipe
    from imgclf.engine.trainer import Trainer

    images, labels = _subset(fmnist, 20)
    data = imgclf.load_data((images, labels))
    config, _ = recipe.resolve(imgclf.Config().override(clip_grad=0.01, lr=1.0, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                                                        device="cpu", batch_size=64), data)
    trainer = Trainer(data, config, tmp_path / "run")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    x, y = next(iter(trainer.train_loader))
    for g in trainer.optimizer.param_groups:
        g["lr"] = 1.0
    trainer.train_step(x, y)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(trainer.model.parameters(), before)))
    assert 0 < float(moved) <= 0.01 + 1e-5  # plain SGD at lr 1 moves the weights by exactly the clipped gradient
    assert not (tmp_path / "run").exists()


def _macro_f1(run, test) -> float:
    return imgclf.evaluate(run.run_dir, test).metrics["macro_avg"]["f1"]


@pytest.mark.slow
def test_class_weights_and_balanced_sampler_help_a_rare_class(fmnist, tmp_path):
    """Trouser at 5% of the other classes' count: without help the network hardly predicts it."""
    images, labels = fmnist
    rows = np.sort(np.concatenate([np.flatnonzero(labels == c)[:(10 if c == 1 else 200)] for c in range(10)]))
    train = images[rows], labels[rows]
    test = _subset(fmnist, 50, start=1000)
    settings = dict(epochs=3, val_fraction=0, out=str(tmp_path), **FAST)
    plain = _macro_f1(imgclf.train(train, test=test, **settings), test)
    weighted = _macro_f1(imgclf.train(train, test=test, class_weights="balanced", **settings), test)
    sampled = _macro_f1(imgclf.train(train, test=test, sampler="balanced", **settings), test)
    assert weighted > plain and sampled > plain


def test_balanced_sampler_draws_classes_equally(fmnist):
    images, labels = fmnist
    rows = np.concatenate([np.flatnonzero(labels == c)[:(20 if c == 0 else 400)] for c in range(3)])
    data = imgclf.load_data((images[rows], labels[rows]), val_fraction=0)
    loader = DeviceLoader(data.train, 100, mean=data.mean, std=data.std, train=True, sampler="balanced")
    counts = np.bincount(data.train.labels[loader.positions(0).numpy()], minlength=3)
    assert counts.sum() == len(data.train) and counts.min() > 0.8 * counts.max()


@pytest.mark.slow
def test_time_budget_plans_the_epochs_and_records_them(fmnist, tmp_path):
    images, labels = _subset(fmnist, 60)
    run = imgclf.train((images, labels), time="12s", out=str(tmp_path), name="budget", device="cpu")
    config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    planned = config["train"]["epochs"]
    assert config["train"]["time"] is None and planned == len(run.history) >= 1
    assert json.loads((run.run_dir / "run.json").read_text())["requested"]["time"] == "12s"
    # The same config.yaml repeats the run without measuring again.
    again = imgclf.train((images, labels), imgclf.Config.from_yaml(run.run_dir / "config.yaml"), out=str(tmp_path), name="again")
    assert len(again.history) == planned


@pytest.mark.slow
def test_time_budget_shrinks_the_run_when_the_clock_runs_out(fmnist, tmp_path):
    from imgclf.engine import recipe
    from imgclf.engine.budget import TimeBudget
    from imgclf.engine.trainer import Trainer

    images, labels = _subset(fmnist, 30)
    data = imgclf.load_data((images, labels))
    config, _ = recipe.resolve(imgclf.Config().override(device="cpu", epochs=50), data)
    trainer = Trainer(data, config, tmp_path / "run")
    budget = TimeBudget(60.0)
    planned = budget.plan(trainer)
    assert planned >= 1
    budget.begin()
    assert budget.epochs_left(trainer, 0) is None
    budget.start -= 59.0  # as if the machine had been busy for most of the budget
    trainer.epoch = 1
    assert budget.epochs_left(trainer, 1) == 0


@pytest.mark.slow
def test_preset_best_sits_under_the_users_own_settings(fmnist, tmp_path):
    """The preset's wider network, augmentation, average and views are what the run records, the user's
    flags win over it, and a run that starts from other weights keeps its own network."""
    data = _subset(fmnist, 20)
    run = imgclf.train(data, preset="best", epochs=1, out=str(tmp_path), name="best", **FAST)
    t = yaml.safe_load((run.run_dir / "config.yaml").read_text())["train"]
    assert (t["model"], t["epochs"], t["augment"], t["ema"], t["tta"]) == ("small_resnet_wide", 1, True, True, True)
    assert run.model.head.in_features == 96
    plain = imgclf.train(data, epochs=1, out=str(tmp_path), name="plain", **FAST)
    tuned = imgclf.train(data, preset="best", epochs=1, init_from=str(plain.run_dir), ema=False, out=str(tmp_path), name="tuned", **FAST)
    t = yaml.safe_load((tuned.run_dir / "config.yaml").read_text())["train"]
    assert tuned.model.head.in_features == 64 and t["model"] != "small_resnet_wide" and t["ema"] is False and t["augment"] is True


def test_bad_technique_settings_are_one_line(tmp_path):
    for settings in ({"class_weights": "inverse"}, {"sampler": "uniform"}, {"mixup": -1}, {"ema_decay": 1.5},
                     {"time": "soon"}, {"preset": "fastest"}):
        with pytest.raises(ImgclfError) as err:
            imgclf.train("digits", out=str(tmp_path), **settings)
        assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_callbacks_see_each_event_in_order_and_keep_their_state(fmnist, tmp_path):
    """The loop's events, in the order engine/callbacks.py says, around the techniques (built by the trainer
    from its config, before the run's own callbacks); a callback's state goes into the checkpoint and
    comes back on restore."""
    from imgclf.engine import recipe
    from imgclf.engine.callbacks import Callback, RunFiles
    from imgclf.engine.techniques import ClipGradients, KeepEpoch, MixBatches, PreciseNorms, WeightAveraging
    from imgclf.engine.trainer import Trainer

    class Recorder(Callback):
        key = "recorder"

        def __init__(self):
            self.events, self.steps = [], 0

        def on_fit_start(self, trainer):
            self.events.append("fit")

        def on_epoch_start(self, trainer):
            self.events.append("epoch")

        def on_batch_start(self, trainer, x, y):
            assert y.ndim == 2  # the mixing technique acted first: soft targets
            self.events.append("batch")
            return x, y

        def on_after_backward(self, trainer):
            assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)
            self.events.append("backward")

        def on_optimizer_step(self, trainer):
            self.events.append("optimizer")

        def on_step_end(self, trainer):
            self.steps += 1
            self.events.append("step")

        def on_validation_start(self, trainer):
            self.events.append("validation")

        def on_validation_end(self, trainer, row):
            assert "val_acc" in row and "kept" in row  # KeepEpoch decided before this one
            self.events.append("validated")

        def on_epoch_end(self, trainer, row):
            self.events.append("end")

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = int(state["steps"])

    images, labels = _subset(fmnist, 10)
    data = imgclf.load_data((images, labels))
    config, _ = recipe.resolve(imgclf.Config().override(device="cpu", epochs=1, batch_size=32, mixup=0.2, clip_grad=5.0, ema=True), data)
    recorder = Recorder()
    trainer = Trainer(data, config, tmp_path / "run", callbacks=[RunFiles(), recorder], files={"note.txt": "made with the run"})
    kinds = [type(cb) for cb in trainer.callbacks]
    assert kinds == [MixBatches, ClipGradients, WeightAveraging, PreciseNorms, KeepEpoch, RunFiles, Recorder]
    trainer.fit()
    steps = len(trainer.train_loader)
    assert recorder.events == ["fit", "epoch", *(["batch", "backward", "optimizer", "step"] * steps), "validation", "validated", "end"]
    assert (tmp_path / "run" / "note.txt").read_text() == "made with the run"  # the files given at construction
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["callbacks"]["recorder"] == {"steps": steps} and saved["best"]["epoch"] == 1 and "ema" in saved
    again = Trainer(data, config, tmp_path / "again", callbacks=[Recorder()])
    again.restore(saved)
    assert again.callbacks[-1].steps == steps and again.best == trainer.best
    assert torch.equal(again.ema.module.state_dict()["head.weight"], trainer.ema.module.state_dict()["head.weight"])


def test_keep_epoch_follows_its_metric_and_direction():
    """KeepEpoch owns what "best" means: the highest accuracy by default (the training one without a
    validation split), or the lowest of a loss; keep="last" keeps every epoch but remembers the top."""
    from imgclf.engine.techniques import KeepEpoch

    def run(keeper, rows):
        marks = []
        for row in rows:
            keeper.on_validation_end(None, row)
            marks.append((row["improved"], row["kept"]))
        return marks

    accs = [{"epoch": i + 1, "train_acc": 0.5, "val_acc": v} for i, v in enumerate((0.6, 0.8, 0.7))]
    best = KeepEpoch()
    assert run(best, accs) == [(True, True), (True, True), (False, False)] and best.best == {"val_acc": 0.8, "epoch": 2}
    no_val = KeepEpoch()
    run(no_val, [{"epoch": 1, "train_acc": 0.3}, {"epoch": 2, "train_acc": 0.2}])
    assert no_val.best == {"val_acc": 0.3, "epoch": 1}  # the training accuracy stands in
    losses = KeepEpoch("val_loss", mode="min")
    rows = [{"epoch": i + 1, "train_acc": 0.5, "val_loss": v} for i, v in enumerate((0.9, 0.4, 0.6))]
    assert run(losses, rows) == [(True, True), (True, True), (False, False)] and losses.best == {"val_loss": 0.4, "epoch": 2}
    last = KeepEpoch(keep="last")
    run(last, [dict(r) for r in accs])
    assert last.best == {"val_acc": 0.7, "epoch": 3} and last.top == {"val_acc": 0.8, "epoch": 2}
    with pytest.raises(ValueError, match="mode='up'"):
        KeepEpoch(mode="up")


def test_a_budget_is_said_as_time_spells_it_to_three_digits():
    from imgclf.engine.budget import _text

    said = [_text(s) for s in (20, 40, 180, 200, 600, 86400)]
    assert said == ["20s", "40s", "3m", "3.33m", "10m", "24h"]  # a fold's share of 10 minutes: 3.33m, not 3.33333m
    assert [parse_duration(s) for s in said[:3]] == [20, 40, 180]
