"""Folders as users have them: notebook and system leftovers, links, link loops. Training, `data inspect`
and `predict` list the same files, each once, under the right label."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
from imgclf import load_data


def _tree(root: Path, images: np.ndarray, per_class: int = 6) -> Path:
    """root/cat/ and root/dog/ with per_class real Fashion-MNIST PNGs each (different images)."""
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(images[c * per_class + i], "L").save(root / name / f"{name}{i}.png")
    return root


def _skipped(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["path"]: row["reason"] for row in csv.DictReader(f)}


def _counts(data) -> dict[str, int]:
    return {c: int(n) for c, n in zip(data.classes, data.train.class_counts(data.num_classes))}


@pytest.fixture
def jupyter_tree(tmp_path, fmnist_small):
    root = _tree(tmp_path / "pets", fmnist_small[0])
    checkpoints = root / "cat" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(root / "cat" / "cat0.png", checkpoints / "c0-checkpoint.png")
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    shutil.copy(root / "cat" / "cat1.png", root / "__MACOSX" / "cat" / "._cat1.png")
    (root / "dog" / "@eaDir").mkdir()
    shutil.copy(root / "dog" / "dog0.png", root / "dog" / "@eaDir" / "dog0.png")
    return root


@pytest.fixture
def loop_tree(tmp_path, fmnist_small):
    root = _tree(tmp_path / "looped", fmnist_small[0])
    os.symlink("..", root / "dog" / "loop")
    return root


def test_hidden_and_system_folders_are_not_entered_and_listed_once(jupyter_tree):
    data = load_data(jupyter_tree, val_fraction=0)
    assert data.classes == ["cat", "dog"] and _counts(data) == {"cat": 6, "dog": 6}
    assert not any("checkpoint" in o or "@eaDir" in o for o in data.train.origins)
    skipped = _skipped(data.cache_dir / "skipped.csv")
    for folder in (jupyter_tree / "cat" / ".ipynb_checkpoints", jupyter_tree / "__MACOSX", jupyter_tree / "dog" / "@eaDir"):
        assert "hidden or system folder" in skipped[str(folder)]
    assert not any(p.startswith(str(jupyter_tree / "__MACOSX") + "/") for p in skipped)  # the folder once, not its files


def test_a_link_loop_neither_multiplies_a_class_nor_mislabels_it(loop_tree):
    data = load_data(loop_tree, val_fraction=0)
    assert _counts(data) == {"cat": 6, "dog": 6}
    dogs = [o for o, lab in zip(data.train.origins, data.train.labels) if lab == data.classes.index("dog")]
    assert all(Path(o).parent == loop_tree / "dog" for o in dogs)
    assert "link loop" in _skipped(data.cache_dir / "skipped.csv")[str(loop_tree / "dog" / "loop")]


def test_links_are_followed_but_nothing_is_listed_twice(tmp_path, fmnist_small):
    images = fmnist_small[0]
    root = _tree(tmp_path / "pets", images)
    extra = tmp_path / "more-cats"
    extra.mkdir()
    for i in range(3):
        Image.fromarray(images[100 + i], "L").save(extra / f"m{i}.png")
    os.symlink(extra, root / "cat" / "more")  # a folder linked in: followed
    os.symlink(extra, root / "cat" / "more-again")  # the same real folder a second time: not entered
    os.symlink(root / "cat" / "cat0.png", root / "cat" / "zz-same.png")  # a second path to a file
    os.symlink(root / "dog", root / "cat" / "dogs")  # into another class: its images would get two labels
    os.symlink(root / "dog" / "dog1.png", root / "cat" / "a-dog.png")
    data = load_data(root, val_fraction=0)
    assert _counts(data) == {"cat": 9, "dog": 6}
    skipped = _skipped(data.cache_dir / "skipped.csv")
    assert "already listed" in skipped[str(root / "cat" / "more-again")]
    assert "already listed" in skipped[str(root / "cat" / "zz-same.png")]
    assert "another class" in skipped[str(root / "cat" / "dogs")] and "another class" in skipped[str(root / "cat" / "a-dog.png")]


def test_a_link_from_train_into_test_is_refused(tmp_path, fmnist_small):
    images = fmnist_small[0]
    root = tmp_path / "data"
    _tree(root / "train", images)
    _tree(root / "test", images[20:], per_class=2)
    os.symlink(root / "test" / "cat", root / "train" / "cat" / "test-cats")
    data = load_data(root, val_fraction=0)
    assert _counts(data) == {"cat": 6, "dog": 6} and len(data.test) == 4
    assert "another class or split" in _skipped(data.cache_dir / "skipped.csv")[str(root / "train" / "cat" / "test-cats")]


@pytest.mark.slow
def test_inspect_counts_the_same(jupyter_tree, loop_tree):
    for root in (jupyter_tree, loop_tree):
        proc = subprocess.run([sys.executable, "-m", "imgclf", "data", "inspect", str(root), "--val-fraction", "0"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        rows = {line.split()[1]: line.split()[2] for line in proc.stdout.splitlines() if line.split()[:1] in (["0"], ["1"])}
        assert rows == {"cat": "6", "dog": "6"}, proc.stdout


@pytest.mark.slow
def test_predict_lists_the_same_files_and_writes_what_it_left_out(jupyter_tree, tiny_bundle, tmp_path):
    os.symlink("..", jupyter_tree / "dog" / "loop")
    out = tmp_path / "new" / "preds.csv"  # a folder that does not exist yet
    proc = subprocess.run([sys.executable, "-m", "imgclf", "predict", str(tiny_bundle), str(jupyter_tree), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert sorted(ids) == sorted([f"cat/cat{i}.png" for i in range(6)] + [f"dog/dog{i}.png" for i in range(6)])
    skipped = _skipped(out.with_name("preds.skipped.csv"))
    assert "link loop" in skipped[str(jupyter_tree / "dog" / "loop")]
    assert "hidden or system folder" in skipped[str(jupyter_tree / "cat" / ".ipynb_checkpoints")]
    clf = imgclf.load(tiny_bundle, device="cpu")
    assert len(clf.predict_proba(str(jupyter_tree))) == 12


def test_the_real_path_wins_over_a_link_to_the_same_picture(tmp_path, fmnist_small):
    from imgclf.data.walk import image_files

    root = _tree(tmp_path / "p", fmnist_small[0])
    os.symlink(root / "dog" / "dog0.png", root / "cat" / "a-dog.png")  # walked before dog/ itself
    (root / "z" / "sub").mkdir(parents=True)
    Image.fromarray(fmnist_small[0][50], "L").save(root / "z" / "sub" / "x.png")
    os.symlink(root / "z" / "sub", root / "a-sub")  # a link to a folder that the walk reaches later
    found = [os.path.relpath(p, root) for p in image_files(root)]
    assert "dog/dog0.png" in found and "cat/a-dog.png" not in found
    assert "z/sub/x.png" in found and "a-sub/x.png" not in found
    assert len(found) == len(set(found)) == 13


def test_loose_files_beside_the_class_folders_are_reported(jupyter_tree):
    (jupyter_tree / "README.txt").write_text("pets")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(jupyter_tree / "cover.png")
    data = load_data(jupyter_tree, val_fraction=0)
    skipped = _skipped(data.cache_dir / "skipped.csv")
    assert "outside the class folders" in skipped[str(jupyter_tree / "cover.png")]
    assert "not an image" in skipped[str(jupyter_tree / "README.txt")]


@pytest.mark.slow
def test_predict_on_several_folders_keeps_ids_apart(jupyter_tree, loop_tree, tiny_bundle, tmp_path):
    out = tmp_path / "preds.csv"
    proc = subprocess.run([sys.executable, "-m", "imgclf", "predict", str(tiny_bundle), str(jupyter_tree), str(loop_tree), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert len(ids) == len(set(ids)) == 24 and os.path.join(str(loop_tree), "cat", "cat0.png") in ids


@pytest.mark.slow
def test_paths_that_cannot_work_are_one_line_errors(jupyter_tree, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, text=True)

    image = str(jupyter_tree / "cat" / "cat0.png")
    for args, words in ((["data", "inspect", image], "is a file, not a dataset"),
                        (["data", "audit", str(jupyter_tree), "--out", str(tmp_path)], "is a folder"),
                        (["data", "audit", str(jupyter_tree), "--out", f"{image}/audit.csv"], "a file is in the way"),
                        (["data", "inspect", str(jupyter_tree), "--grid", f"{image}/grid.png"], "a file is in the way"),
                        (["train", str(jupyter_tree), "--out", image, "--epochs", "1"], "is a file; pass a folder")):
        proc = run(*args)
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    closed = subprocess.run(f"{sys.executable} -m imgclf data audit {jupyter_tree} --exact-only | true; exit ${{PIPESTATUS[0]}}",
                            shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert closed.returncode == 141 and "Traceback" not in closed.stderr and "BrokenPipe" not in closed.stderr, closed.stderr


def test_a_test_folder_beside_the_class_folders_is_the_test_split(tmp_path, fmnist_small):
    images = fmnist_small[0]
    root = _tree(tmp_path / "pets", images)
    _tree(root / "test", images[20:], per_class=2)  # test/cat, test/dog
    data = load_data(root, val_fraction=0)
    assert data.classes == ["cat", "dog"] and len(data.train) == 12 and len(data.test) == 4
    assert data.layout == "class folders with train/test splits"
    bare = _tree(tmp_path / "pets2", images)
    (bare / "test").mkdir()
    Image.fromarray(images[30], "L").save(bare / "test" / "unknown.png")  # bare images: an unlabeled test split
    data = load_data(bare, val_fraction=0)
    assert data.classes == ["cat", "dog"] and len(data.test) == 1 and not data.test.labeled
