"""The data audit: planted leaks and conflicts are found, distinct images are left alone, and the
figures on real Fashion-MNIST agree with an independent computation on its raw IDX arrays."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
from conftest import FMNIST_DIR, FOLDER_NAMES, _read_idx
from imgclf.data.audit import audit


def _save(path: Path, image: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "L").save(path, **options)


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The picture moved by (dy, dx) pixels, the uncovered edge black, as a slightly different crop gives."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory, fmnist):
    """train/, val/ and test/ class folders of 2,000 distinct Fashion-MNIST images (1,450 in train, 50 in
    val, 500 in test), plus planted copies of training and validation images: file name -> what it is."""
    images, labels = fmnist
    root = tmp_path_factory.mktemp("planted") / "data"
    for i in range(2000):
        _save(root / ("train" if i < 1450 else "val" if i < 1500 else "test") / FOLDER_NAMES[labels[i]] / f"{i:04d}.png", images[i])
    other = lambda i: FOLDER_NAMES[(labels[i] + 1) % 10]  # noqa: E731
    plants = {
        f"test/{FOLDER_NAMES[labels[5]]}/copy-of-0005.png": (images[5], {}, "exact duplicate"),
        f"test/{FOLDER_NAMES[labels[6]]}/copy-of-0006.png": (images[6], {}, "exact duplicate"),
        f"test/{other(7)}/relabelled-0007.png": (images[7], {}, "label conflict"),
        f"train/{FOLDER_NAMES[labels[8]]}/zz-again-0008.png": (images[8], {}, "exact duplicate"),
        f"train/{other(9)}/zz-relabelled-0009.png": (images[9], {}, "label conflict"),
        f"test/{FOLDER_NAMES[labels[10]]}/jpeg-of-0010.jpg": (images[10], {"quality": 75}, "near duplicate"),
        f"test/{FOLDER_NAMES[labels[11]]}/shift-of-0011.png": (_shifted(images[11], 1, -1), {}, "near duplicate"),
        f"test/{FOLDER_NAMES[labels[12]]}/shift-jpeg-of-0012.jpg": (_shifted(images[12], 0, 1), {"quality": 75}, "near duplicate"),
        f"test/{FOLDER_NAMES[labels[13]]}/brighter-0013.png": (np.clip(images[13] * 1.1, 0, 255).astype(np.uint8), {}, "near duplicate"),
        f"test/{FOLDER_NAMES[labels[1450]]}/shift-of-1450.png": (_shifted(images[1450], -1, 0), {}, "near duplicate"),
        f"test/{FOLDER_NAMES[labels[1451]]}/shift-of-1451.png": (_shifted(images[1451], 0, -1), {}, "near duplicate"),
        f"test/{FOLDER_NAMES[labels[1452]]}/brighter-1452.png": (np.clip(images[1452] * 1.1, 0, 255).astype(np.uint8), {}, "near duplicate"),
    }
    for name, (image, options, _) in plants.items():
        _save(root / name, image, **options)
    return root, {str(root / name): kind for name, (_, _, kind) in plants.items()}


def test_planted_duplicates_are_all_found_and_nothing_else(planted):
    root, plants = planted
    data = imgclf.load_data(root, val_fraction=0)
    result = audit(data)
    pairs = {f.path_a: f for f in result.findings if f.path_b}
    assert {p: f.kind for p, f in pairs.items()} == plants
    for path, f in pairs.items():
        original = int(Path(path).stem[-4:])
        assert Path(f.path_b).name == f"{original:04d}.png" and f.split_b == ("train" if original < 1450 else "val")
        if f.kind == "near duplicate":
            assert 0 <= f.distance <= result.near_threshold
    counts = result.counts()
    assert counts["exact_within"] == {"train": 1, "val": 0, "test": 0}
    assert counts["exact_across"] == {"train-val": 0, "train-test": 2, "val-test": 0}
    assert counts["label_conflicts"] == 2 and counts["near_across"] == {"train-val": 0, "train-test": 4, "val-test": 3}


@pytest.mark.slow
def test_audit_cli_writes_csv_and_json_and_exits_zero(planted, tmp_path):
    root, plants = planted
    out, js = tmp_path / "a" / "audit.csv", tmp_path / "audit.json"
    proc = subprocess.run([sys.executable, "-m", "imgclf", "data", "audit", str(root), "--val-fraction", "0", "--out", str(out),
                           "--json", str(js)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "label conflicts (identical pixels, different labels): 2" in proc.stdout and "train-test 4, val-test 3" in proc.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["path_a"]: r["kind"] for r in rows if r["path_b"]} == plants
    assert json.loads(js.read_text())["counts"]["label_conflicts"] == 2
    proc = subprocess.run([sys.executable, "-m", "imgclf", "data", "audit", str(root), "--val-fraction", "0", "--json", "-"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["counts"]["exact_across"] == {"train-val": 0, "train-test": 2, "val-test": 0}
    proc = subprocess.run([sys.executable, "-m", "imgclf", "data", "inspect", str(root), "--val-fraction", "0"], capture_output=True, text=True)
    assert proc.returncode == 0 and "audit (" in proc.stdout and "label conflicts (identical pixels, different labels): 2" in proc.stdout


@pytest.mark.slow
def test_training_warns_of_a_leak_and_dedupe_drops_the_copies(planted, tmp_path, caplog):
    root, _ = planted
    caplog.set_level(logging.INFO, logger="imgclf")
    run = imgclf.train(root, epochs=1, batch_size=256, device="cpu", val_fraction=0, out=str(tmp_path))
    leaks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("leak:")]
    assert len(leaks) == 1 and "3 validation/test image(s)" in leaks[0]  # two copies and one relabelled copy in test and "--dedupe" in leaks[0]
    page = (run.run_dir / "report.html").read_text()
    assert "Data audit" in page and (run.run_dir / "audit.csv").exists()
    caplog.clear()
    deduped = imgclf.train(root, epochs=1, batch_size=256, device="cpu", val_fraction=0, dedupe=True, out=str(tmp_path))
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dedupe:")]
    # 0008 and its repeat: the repeat goes; 0009 under two labels: both go; 0005, 0006, 0007: copied into test.
    assert notes and ("dropped 6 training image(s): 1 repeating an earlier training image, 2 under conflicting labels "
                      "(every copy), 3 identical to a validation/test image") in notes[0]
    assert len(deduped.data.train) == len(run.data.train) - 6
    assert not any(r.getMessage().startswith("leak:") for r in caplog.records)
    kept = {Path(o).name for o in deduped.data.train.origins}
    assert "0008.png" in kept and not kept & {"zz-again-0008.png", "0009.png", "zz-relabelled-0009.png", "0005.png"}
    with open(deduped.run_dir / "dedupe.csv", newline="") as f:
        reasons = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert "repeats" in reasons["zz-again-0008.png"] and "labels" in reasons["0009.png"] and "identical to test" in reasons["0005.png"]


def test_sizes_and_balance(tmp_path, fmnist_small):
    images, _ = fmnist_small
    for i in range(20):
        _save(tmp_path / "many" / f"{i}.png", np.asarray(Image.fromarray(images[i]).resize((64, 64))))
    _save(tmp_path / "few" / "tiny.png", images[20][:16, :16])
    _save(tmp_path / "few" / "wide.png", np.asarray(Image.fromarray(images[21]).resize((200, 40))))
    data = imgclf.load_data(tmp_path, image_size=64, val_fraction=0)
    result = audit(data)
    assert [Path(f.path_a).name for f in result.findings if f.kind == "tiny image"] == ["tiny.png"]
    assert [Path(f.path_a).name for f in result.findings if f.kind == "extreme aspect ratio"] == ["wide.png"]
    assert result.balance["ratio"] == 10 and "macro-averaged F1" in result.balance["warning"] and "few" in result.balance["warning"]


def test_fashion_mnist_figures_match_an_independent_count():
    """Exact duplicates and label conflicts of the real Fashion-MNIST, counted with Python sets of the raw
    IDX rows (not with the audit's hashing and grouping)."""
    raw = {split: (_read_idx(FMNIST_DIR, f"{stem}-images-idx3-ubyte"), _read_idx(FMNIST_DIR, f"{stem}-labels-idx1-ubyte"))
           for split, stem in (("train", "train"), ("test", "t10k"))}
    seen: dict[str, dict[bytes, set[int]]] = {}
    for split, (x, y) in raw.items():
        seen[split] = {}
        for row, label in zip(x, y):
            seen[split].setdefault(row.tobytes(), set()).add(int(label))
    within = {s: len(raw[s][0]) - len(seen[s]) for s in raw}
    across = sum(row in seen["train"] for row in seen["test"])
    conflicts = sum(len(labels) > 1 for part in seen.values() for labels in part.values())
    conflicts += sum(seen["test"][row] != seen["train"][row] for row in seen["test"] if row in seen["train"])
    result = audit(imgclf.load_data("fashion-mnist", val_fraction=0), near=False)
    counts = result.counts()
    assert counts["exact_within"] == within and counts["exact_across"]["train-test"] + conflicts == across + conflicts
    assert counts["label_conflicts"] == conflicts
    assert result.images == {"train": 60000, "test": 10000}


def test_sizes_of_a_separate_test_folder_do_not_index_the_training_files(tmp_path, fmnist_small):
    """A --test folder is another source: its rows are not rows of the training files' sizes (a run with
    a test folder larger than training ended in an IndexError at the audit)."""
    import dataclasses

    images, _ = fmnist_small
    for i in range(6):
        _save(tmp_path / "train" / ("a" if i % 2 else "b") / f"{i}.png", np.asarray(Image.fromarray(images[i]).resize((64, 64))))
    for i in range(6, 30):
        _save(tmp_path / "test" / ("a" if i % 2 else "b") / f"{i}.png", images[i][:16, :16])
    data = imgclf.load_data(tmp_path / "train", image_size=64, val_fraction=0)
    test = imgclf.load_data(tmp_path / "test", image_size=64, val_fraction=0).train
    result = audit(dataclasses.replace(data, test=test))
    assert result.images["test"] == 24 and not [f for f in result.findings if f.kind == "tiny image"]
