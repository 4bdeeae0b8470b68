"""Bad files never crash a run nor give a wrong label: skipped and reported, or an error under --strict."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FOLDER_NAMES, add_bad_files, write_broken_copies, write_class_tree, write_format_corpus, write_odd_files
from imgclf import DataError, load_data


@pytest.fixture
def messy_tree(tmp_path, fmnist_small):
    images, labels = fmnist_small
    root = write_class_tree(tmp_path / "messy", images[:60], labels[:60])
    expected = add_bad_files(root / FOLDER_NAMES[labels[0]], images[0])
    (root / "emptyclass").mkdir()
    (root / "readme.txt").write_text("not a class")
    return root, expected


def _reasons(path):
    """File name -> reason of skipped.csv (or message of warnings.csv)."""
    with open(path, newline="") as f:
        return {row["path"].rsplit("/", 1)[-1]: row.get("reason") or row["message"] for row in csv.DictReader(f)}


def test_bad_files_are_skipped_and_listed(messy_tree, caplog):
    root, expected = messy_tree
    data = load_data(root, val_fraction=0)
    assert len(data.train) == 60 and "emptyclass" not in data.classes
    reasons = _reasons(data.cache_dir / "skipped.csv")
    for name, word in expected.items():
        assert word in reasons[name] or (word == "not an image" and "corrupt" in reasons[name]), (name, reasons[name])
    assert "empty class folder" in reasons["emptyclass"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "skipped" in warnings[0] and "skipped.csv" in warnings[0]
    # A cache hit still reports the files skipped while decoding.
    again = load_data(root, val_fraction=0)
    assert again.cache_hit and _reasons(again.cache_dir / "skipped.csv").keys() == reasons.keys()


def test_strict_names_the_first_bad_file(messy_tree):
    root, _ = messy_tree
    with pytest.raises(DataError) as err:
        load_data(root, strict=True)
    assert str(root) in str(err.value) and "--strict" in str(err.value)


def test_strict_stops_on_a_cache_hit_too(tmp_path, fmnist_small):
    images, labels = fmnist_small
    root = write_class_tree(tmp_path / "t", images[:20], labels[:20])
    (root / FOLDER_NAMES[labels[0]] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    load_data(root)
    with pytest.raises(DataError, match="broken.png"):
        load_data(root, strict=True)


def test_csv_problems_are_skipped_with_reasons(csv_layout, tmp_path):
    root = tmp_path / "apparel"
    shutil.copytree(csv_layout, root)
    rows = list(csv.reader((root / "train.csv").read_text().splitlines()))
    rows += [["9999", "3"], ["5", "1" if rows[5][1] != "1" else "2"], ["7", rows[7][1]], ["", "1"]]
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    data = load_data(root, val_fraction=0)
    reasons = [s.reason for s in data.skipped]
    assert any("missing file: id '9999'" in r for r in reasons)
    assert sum("conflicting label" in r for r in reasons) == 2  # both rows of id 5: neither label can be trusted
    assert any("duplicate id '7'" in r and "repeats" in r for r in reasons)
    assert any("row without an image id" in r for r in reasons)
    origins = [o.rsplit("/", 1)[1] for o in data.train.origins]
    assert "5.png" not in origins and origins.count("7.png") == 1


def test_test_csv_with_unknown_label_is_skipped(csv_layout, tmp_path):
    root = tmp_path / "apparel"
    shutil.copytree(csv_layout, root)
    with open(root / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "label"], ["201", "3"], ["202", "banana"]])
    data = load_data(root)
    assert len(data.test) == 1 and any("label outside the known set: 'banana'" in s.reason for s in data.skipped)


@pytest.mark.slow
def test_cli_error_is_one_line_without_traceback(messy_tree):
    root, _ = messy_tree
    proc = subprocess.run([sys.executable, "-m", "imgclf", "data", "inspect", str(root), "--strict"], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("imgclf: error:") and "Traceback" not in proc.stderr and len(lines) == 1


@pytest.mark.slow
def test_cli_inspect_lists_skips(messy_tree):
    root, expected = messy_tree
    proc = subprocess.run([sys.executable, "-m", "imgclf", "data", "inspect", str(root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "bomb.png: decompression bomb" in proc.stdout and "skipped.csv" in proc.stdout


def _pillow_decodes(path: Path) -> bool:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fmnist_small):
    """Every mode x format x compression Pillow writes, odd but real files, and broken copies of each format."""
    root = tmp_path_factory.mktemp("corpus") / "corpus"
    folder = root / "all"
    good = write_format_corpus(folder)
    odd = write_odd_files(folder, fmnist_small[0][0])
    write_broken_copies(folder, good)
    return root, odd


# imgclf's own log lines during a load: the cache, the skip count, the warning count. Nothing else may reach the terminal.
OWN_LINES = ("cache built:", "cache hit:", "skipped ", "the image libraries warned about ")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_file_pillow_decodes_is_loaded_and_the_terminal_stays_quiet(corpus, tmp_path, workers):
    root, odd = corpus
    env = {**os.environ, "IMGCLF_CACHE": str(tmp_path / "cache")}  # a cold decode
    proc = subprocess.run([sys.executable, "-m", "imgclf", "data", "inspect", str(root), "--val-fraction", "0", "--workers", workers],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    stray = [line for line in proc.stderr.splitlines() if not line.startswith(OWN_LINES)]
    assert not stray, stray
    data = load_data(root, val_fraction=0, cache_dir=str(tmp_path / "cache"))
    assert data.cache_hit
    files = sorted((root / "all").iterdir())
    assert len(files) > 160
    decodable = {str(p) for p in files if _pillow_decodes(p)}
    assert set(data.train.origins) == decodable
    reasons = _reasons(data.cache_dir / "skipped.csv")
    assert {p.name for p in files if str(p) not in decodable} == set(reasons) and all(reasons.values())
    assert "Using code not yet in table" in reasons["damaged-lzw.tif"]  # libtiff's words, kept as the reason
    said = _reasons(data.cache_dir / "warnings.csv")
    assert "malformed MPO" in said["malformed-mpo.jpg"] and "Fax4Decode" in said["damaged-fax.tif"]
    assert "warned about" in proc.stderr and "warnings.csv" in proc.stdout


@pytest.mark.slow
def test_predict_keeps_the_libraries_quiet_too(corpus, tiny_bundle, tmp_path):
    root, _ = corpus
    out = tmp_path / "preds.csv"
    proc = subprocess.run([sys.executable, "-m", "imgclf", "predict", str(tiny_bundle), str(root), "--out", str(out), "--workers", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr
    assert "warned about" in proc.stdout
    said = _reasons(out.with_name("preds.warnings.csv"))
    assert "malformed MPO" in said["malformed-mpo.jpg"] and "Fax4Decode" in said["damaged-fax.tif"]


def test_a_file_that_fails_to_decode_does_not_choose_the_size_or_the_channels(tmp_path, fmnist_small):
    """Its header reads (600x400, colour) but its pixels do not: the others keep their own 28x28 gray."""
    from PIL import Image

    images, labels = fmnist_small
    root = write_class_tree(tmp_path / "t", images[:13], labels[:13])
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 600, 3), dtype=np.uint8))
    big.save(root / FOLDER_NAMES[labels[0]] / "big.png")
    data = (root / FOLDER_NAMES[labels[0]] / "big.png").read_bytes()
    (root / FOLDER_NAMES[labels[0]] / "big.png").write_bytes(data[: len(data) // 3])
    loaded = load_data(root, val_fraction=0)
    assert loaded.image_size == (28, 28) and loaded.channels == 1 and len(loaded.train) == 13
    assert "truncated" in _reasons(loaded.cache_dir / "skipped.csv")["big.png"]
    assert not any("sizes vary" in n for n in loaded.notes)
