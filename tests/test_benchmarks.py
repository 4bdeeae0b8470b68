"""The time-to-accuracy benchmark's smoke run: every section runs on tiny data and writes its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "time_to_accuracy.py"


@pytest.mark.slow
def test_time_to_accuracy_quick_writes_every_section(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--results", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    recipes = [r["recipe"] for r in report["rows"]]
    assert any("tutorial" in r for r in recipes) and any("--preset best" in r for r in recipes) and any("--time" in r for r in recipes)
    assert len(report["tables"]) == 8  # grid, digits, sizes, techniques, peak, profile, switches, budgets
    switches = next(rows for title, rows in report["tables"].items() if "switch" in title)
    assert {r["augmentation"] for r in switches} == {"flips", "crops+flips"}
    budgets = next(rows for title, rows in report["tables"].items() if "budgets" in title)
    assert [r["run"] for r in budgets] == ["default", "--time 10s", "--time 20s"]
    assert all("epochs, augmentation" in r["planned"] for r in budgets)
    assert any(line.startswith("2,000 images (quick), --time 20s: ") for line in report["summary"])
    peak = next(rows for title, rows in report["tables"].items() if "limit" in title)
    assert peak[0]["GFLOP/s"] > 0 and 0 < peak[1]["share of peak %"] < 200
    profile = next(rows for title, rows in report["tables"].items() if "time goes" in title)
    assert {"convolution", "optimizer"} <= {r["kind of operation"] for r in profile}
    assert abs(sum(r["share %"] for r in profile) - 100) < 0.1
    png = (tmp_path / "time_to_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Command:" in (tmp_path / "time_to_accuracy.md").read_text()


@pytest.mark.slow
def test_unknown_section_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "fashon", "--results", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown section" in proc.stderr and "Traceback" not in proc.stderr


def _quick(name: str, tmp_path, *flags: str) -> dict:
    """benchmarks/<name>.py --quick into tmp_path; its results JSON."""
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / f"{name}.py"), "--quick", *flags, "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.slow
def test_distributed_quick_measures_one_process_and_two(tmp_path):
    rows = _quick("distributed", tmp_path)["rows"]
    assert [r["configuration"].split(" x ")[0] for r in rows] == ["1 process", "2 processes"]
    assert all(r["train images/s (median)"] > 0 for r in rows)


@pytest.mark.slow
def test_serve_quick_measures_both_settings_and_the_overload(tmp_path):
    result = _quick("serve", tmp_path)
    assert len(result["rows"]) == 6 and all(r["requests/s (median)"] > 0 and r["errors"] == 0 for r in result["rows"])
    assert "only 200 and 503" in (tmp_path / "serve.md").read_text()


@pytest.mark.slow
def test_transfer_quick_runs_every_contender_but_fastai(tmp_path):
    """benchmarks/transfer.py on a tiny set of real photo crops written here (not the packaged sets)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    for name, photo in zip(("temple", "flower"), load_sample_images().images):
        for part, count in (("train", 10), ("test", 6)):
            folder = tmp_path / "sets" / "photos" / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(photo[20 * i:20 * i + 200, 30 * i:30 * i + 200]).resize((96, 96)).save(folder / f"{i}.jpg")
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "transfer.py"), "--quick", "--root", str(tmp_path / "sets"), "--sets",
                           "photos", "--only", "tutorial,imgclf,probe,scratch", "--switch", 'bicubic={"interpolation": "bicubic"}',
                           "--work", str(tmp_path / "work"), "--results", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "transfer.json").read_text())
    rows = report["rows"]
    assert [r["contender"] for r in rows] == ["tutorial", "imgclf", "probe", "scratch", "imgclf bicubic"]
    assert all(0 <= r["test acc %"] <= 100 for r in rows) and rows[2]["epochs"] == 0
    assert report["info"]["switches"] == {"imgclf bicubic": {"interpolation": "bicubic"}}


@pytest.mark.slow
def test_photo_speed_quick_measures_each_setting_and_profiles_a_step(tmp_path):
    report = _quick("photo_speed", tmp_path, "--profile")
    row = report["rows"][0]
    assert row["model"] == "efficientnet_lite0" and row["train img/s, channels-last, stem fixed"] > 0
    assert row["train img/s, imgclf's step (stem fixed, norms frozen)"] > 0 and row["train img/s, no BatchNorm (bound of folding it)"] > 0
    spent = next(rows for title, rows in report["tables"].items() if title.startswith("Where a training step"))
    kinds = {r["kind of operation"] for r in spent}
    assert {"depthwise convolution, backward", "1x1 convolution, forward"} <= kinds
    assert abs(sum(r["share %"] for r in spent) - 100) < 0.1
    bound = next(rows for title, rows in report["tables"].items() if "matmul" in title)
    assert bound[0]["GFLOP/s"] > 0 and 0 < bound[1]["share of peak %"] < 100


@pytest.mark.slow
def test_busy_quick_measures_idle_and_beside_a_busy_process(tmp_path):
    from imgclf.engine.cpu import usable_cpus

    rows = _quick("busy", tmp_path)["rows"]
    assert {r["machine"] for r in rows} == {"idle", "beside a 1-core Python loop"} and all(r["images/s"] > 0 for r in rows)
    beside = next(r for r in rows if r["machine"] != "idle" and r["threads"] == "default (free cores)")
    if usable_cpus() >= 2:  # the default leaves the busy core to its neighbour, and says so
        assert beside["threads used"] != f"{usable_cpus()} threads" and "machine is busy" in beside["said"]


@pytest.mark.slow
def test_bf16_quick_measures_both_precisions_where_the_cpu_has_the_units(tmp_path):
    from imgclf.engine.cpu import has_bf16_units

    rows = _quick("bf16", tmp_path)["rows"]
    if has_bf16_units():
        assert rows[0]["network"] == "small_resnet" and rows[0]["fp32 img/s"] > 0 and rows[0]["bf16 img/s"] > 0
    else:
        assert rows[0]["what"] == "not measured" and "no AVX512-BF16" in rows[0]["why"]


@pytest.mark.slow
def test_labels_quick_scores_the_check_against_the_flips(tmp_path):
    script = Path(__file__).parent.parent / "benchmarks" / "labels.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "labels_quick.json").read_text())["rows"][0]
    assert row["noise"] == "symmetric 5%" and row["images"] == 4000 and row["flipped"] == 200
    assert 0.2 < row["precision"] <= 1 and 0.5 < row["recall"] <= 1  # the check finds flips, far above chance (5%)
    assert row["precision"] >= row["noise_rate precision"]  # the default's filter against confident learning's pruning
    # imgclf's pruning is cleanlab's: from the same scores, nearly the same suspects
    assert row["cleanlab suspects"] == "not installed" or abs(row["cleanlab recall"] - row["noise_rate recall"]) < 0.02
