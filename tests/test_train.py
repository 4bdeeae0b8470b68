"""Training through the Python API and the CLI, on real data: accuracy, run directories, the bundle,
resuming (exactly), surviving SIGKILL and Ctrl-C, and clean stops on non-finite losses.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import imgclf
from conftest import write_class_tree
from imgclf import DeviceLoader, ImgclfError

QUICK = dict(epochs=3, batch_size=128, device="cpu")


def _accuracy(model, images, labels, data) -> float:
    held = imgclf.load_data((images, labels), val_fraction=0)
    loader = DeviceLoader(held.train, 500, mean=data.mean, std=data.std)
    model.eval()
    with torch.no_grad():
        right = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return right / len(labels)


@pytest.mark.slow
def test_api_three_lines_reach_well_above_chance(fmnist, tmp_path):
    images, labels = fmnist
    run = imgclf.train((images[:4000], labels[:4000]), out=str(tmp_path), **QUICK)
    assert _accuracy(run.model, images[50000:51000], labels[50000:51000], run.data) >= 0.70
    assert len(run.history) == 3 and run.run_dir.parent == tmp_path
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt", "model.safetensors", "model.json", "results.json"):
        assert (run.run_dir / name).is_file(), name
    spec = json.loads((run.run_dir / "model.json").read_text())
    assert spec["architecture"]["name"] == "small_resnet" and spec["input"] == {"channels": 1, "size": [28, 28], "resize": "crop",
                                                                          "interpolation": "bilinear", "crop_fraction": 1.0}
    assert spec["classes"] == [str(i) for i in range(10)] and len(spec["normalization"]["mean"]) == 1
    # The bundle alone rebuilds the same model.
    model, _ = imgclf.load_bundle(run.run_dir)
    x = torch.randn(4, 1, 28, 28)
    run.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), run.model(x), atol=1e-5)
    rows = (run.run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc,lr") and len(rows) == 4


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_cli_train_folder_scores_its_test_split(tmp_path, fmnist):
    images, labels = fmnist
    root = tmp_path / "data"
    write_class_tree(root / "train", images[:4000], labels[:4000])
    write_class_tree(root / "test", images[59000:], labels[59000:])
    proc = run_cli("train", str(root), "--epochs", "4", "--batch-size", "128", "--device", "cpu", "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert "device cpu" in log and "epoch 4/4" in log and "train loss" in log and "val loss" in log and "test: loss" in log
    results = json.loads(next((tmp_path / "runs").glob("*/results.json")).read_text())
    assert results["test_acc"] >= 0.70


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# One fixed thread: the bit-for-bit comparisons below hold for a fixed thread count (torch's CPU sums run in an
# order that depends on it), and by default the count follows the cores the other test worker leaves free.
DIGITS = ["digits", "--image-size", "32", "--batch-size", "64", "--device", "cpu", "--threads", "1"]


def wait_for_checkpoint(run_dir: Path, epoch: int, proc, limit: float = 900) -> None:
    """Until checkpoints/last.pt holds `epoch` (written atomically, so it is whole when seen): the test
    follows the run, not a clock; `limit` only stops a run that hangs."""
    last, seen, deadline = run_dir / "checkpoints" / "last.pt", None, time.time() + limit
    while time.time() < deadline:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp is not None and stamp != seen:
            seen = stamp
            if torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= epoch:
                return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before epoch {epoch}: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {limit:.0f} s: the run hangs")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Six epochs without interruption: the reference for every resume test."""
    out = tmp_path_factory.mktemp("straight")
    proc = run_cli("train", *DIGITS, "--epochs", "6", "--out", str(out), "--name", "ref")
    assert proc.returncode == 0, proc.stderr
    return out / "ref"


@pytest.mark.slow
def test_same_seed_same_weights(straight, tmp_path):
    proc = run_cli("train", *DIGITS, "--epochs", "6", "--out", str(tmp_path), "--name", "again")
    assert proc.returncode == 0, proc.stderr
    assert _same(_weights(straight / "checkpoints/last.pt"), _weights(tmp_path / "again/checkpoints/last.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_interrupted_then_resumed_equals_straight(straight, tmp_path, how):
    args = [sys.executable, "-m", "imgclf", "train", *DIGITS, "--epochs", "6", "--out", str(tmp_path), "--name", "cut"]
    # Ctrl-C as a user's shell delivers it: a test worker may ignore SIGINT, and a child would inherit that
    # (a full `make test` ran the 6 epochs to the end through the signal).
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = tmp_path / "cut"
    wait_for_checkpoint(run_dir, 2, proc)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    if how == signal.SIGINT:
        assert proc.returncode == 130 and "resume with: imgclf train --resume" in err and "Traceback" not in err
    saved = torch.load(run_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)  # never corrupt
    assert 2 <= saved["epoch"] < 6
    resumed = run_cli("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert _same(_weights(straight / "checkpoints/last.pt"), _weights(run_dir / "checkpoints/last.pt"))
    assert (run_dir / "metrics.csv").read_text().count("\n") == 7  # header + 6 epochs, none doubled


@pytest.mark.slow
def test_extend_a_finished_run(straight, tmp_path):
    import shutil

    run_dir = tmp_path / "ext"
    shutil.copytree(straight, run_dir)
    proc = run_cli("train", "--resume", str(run_dir), "--epochs", "8")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr and "epoch 8/8" in proc.stderr
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["epoch"] == 8


@pytest.mark.slow
def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(straight, tmp_path):
    import shutil

    run_dir = tmp_path / "blowup"
    shutil.copytree(straight, run_dir)
    last = run_dir / "checkpoints/last.pt"
    digest = hashlib.sha256(last.read_bytes()).hexdigest()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["train"]["lr"] = 1e12  # a run whose learning rate blows it up in its next epoch (--lr cannot change on resume)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("train", "--resume", str(run_dir), "--epochs", "8")
    assert proc.returncode == 2
    assert "non-finite in epoch 7" in proc.stderr and "--lr" in proc.stderr and "Traceback" not in proc.stderr
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_non_finite_from_the_start(tmp_path):
    proc = run_cli("train", *DIGITS, "--epochs", "2", "--lr", "1e12", "--out", str(tmp_path))
    assert proc.returncode == 2 and "nothing was saved" in proc.stderr


@pytest.mark.slow
def test_config_round_trip_and_flag_override(straight, tmp_path):
    proc = run_cli("train", "digits", "--config", str(straight / "config.yaml"), "--epochs", "1", "--lr", "0.05",
                   "--out", str(tmp_path), "--name", "copy")
    assert proc.returncode == 0, proc.stderr
    old = yaml.safe_load((straight / "config.yaml").read_text())
    new = yaml.safe_load((tmp_path / "copy/config.yaml").read_text())
    assert new["train"]["epochs"] == 1 and new["train"]["lr"] == 0.05 and new["train"]["name"] == "copy"
    assert new["data"] == old["data"]
    assert {k: v for k, v in new["train"].items() if k not in ("epochs", "lr", "name", "out")} == \
        {k: v for k, v in old["train"].items() if k not in ("epochs", "lr", "name", "out")}


@pytest.mark.slow
def test_run_directories_are_never_overwritten(tmp_path):
    first = imgclf.train("digits", epochs=1, out=str(tmp_path), device="cpu")
    second = imgclf.train("digits", epochs=1, out=str(tmp_path), device="cpu")
    assert first.run_dir != second.run_dir and second.run_dir.name.endswith("-2")
    with pytest.raises(ImgclfError, match="--force"):
        imgclf.train("digits", epochs=1, out=str(tmp_path), name=first.run_dir.name, device="cpu")
    forced = imgclf.train("digits", epochs=1, out=str(tmp_path), name=first.run_dir.name, force=True, device="cpu")
    assert forced.run_dir == first.run_dir


@pytest.mark.slow
def test_init_from_with_new_classes_and_frozen_backbone(straight, tmp_path, digits):
    images, labels = digits
    keep = labels < 4  # four of the ten classes: the head must be new
    bundle_state = imgclf.load_bundle(straight)[0].state_dict()
    run = imgclf.train((images[keep], labels[keep]), init_from=str(straight), image_size=32, freeze_epochs=2, epochs=2,
                       out=str(tmp_path), device="cpu")
    state = run.model.state_dict()
    assert state["head.weight"].shape == (4, 64)
    convs = [k for k in state if k.endswith(".weight") and state[k].ndim == 4]
    assert convs and all(torch.equal(state[k].cpu(), bundle_state[k]) for k in convs)  # frozen all along


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    for args, words in ((["train", "digits", "--optimizer", "rmsprop", "--out", str(tmp_path)], "optimizer='rmsprop'"),
                        (["train", "--resume", str(tmp_path / "nothing")], "not a run directory"),
                        (["train", "digits", "--device", "cuda", "--out", str(tmp_path)], "no CUDA GPU")
                        if not torch.cuda.is_available() else
                        (["train", "digits", "--epochs", "0", "--out", str(tmp_path)], "must be at least 1")):
        proc = run_cli(*args)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
