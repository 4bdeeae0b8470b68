"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image


def run(*args):
    return subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_inspect_folder_with_grid(class_tree, tmp_path):
    grid = tmp_path / "grid.png"
    first = run("data", "inspect", str(class_tree), "--grid", str(grid))
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "class folders" in out and "tshirt" in out and "built now" in out
    assert "28x28 (300)" in out and "L (300)" in out
    with Image.open(grid) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 300
    second = run("data", "inspect", str(class_tree))
    assert "hit: nothing decoded" in second.stdout


@pytest.mark.slow
def test_inspect_builtin_and_csv(csv_layout):
    out = run("data", "inspect", "digits").stdout
    assert "off (they change what the images mean)" in out and "1 channel(s) x 8x8" in out
    csv_out = run("data", "inspect", str(csv_layout), "--image-size", "32").stdout
    assert "CSV of ids and labels with train/test splits" in csv_out and "unlabeled: test 50" in csv_out
    assert "32x32" in csv_out and "sample_submission.csv" in csv_out


def test_bad_flag_value_is_one_line():
    proc = run("data", "inspect", "digits", "--resize", "stretch")
    assert proc.returncode == 2 and "resize='stretch' is not one of crop, pad" in proc.stderr and "Traceback" not in proc.stderr
