"""Evaluation figures against known answers and an independent computation; plots; the report in a
real browser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import imgclf
from imgclf.evaluation import compute_metrics, format_report


def test_metrics_on_a_hand_made_case():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],   # 2 of 3 class-0 right, one taken for 1
                      [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])  # one class-1 taken for 0
    m = compute_metrics(labels, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    a, b, c = m["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    assert c["f1"] == 1.0
    assert m["macro_avg"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["weighted_avg"]["recall"] == pytest.approx(4 / 6)
    assert m["loss"] == pytest.approx(-np.log([0.8, 0.6, 0.2, 0.8, 0.4, 0.8]).mean())
    assert m["most_confused"][0]["count"] == 1 and "top5_accuracy" not in m
    assert m["top_losses"][0]["index"] == 2 and m["top_losses"][0]["predicted"] == "b"
    assert "macro avg" in format_report(m)


def test_top5_when_more_than_five_classes():
    labels = np.arange(7)
    probs = np.eye(7)[(labels + 1) % 7] * 0.5 + np.eye(7)[labels] * 0.3 + 0.2 / 7  # true class second everywhere
    m = compute_metrics(labels, probs, [str(i) for i in range(7)])
    assert m["accuracy"] == 0 and m["top5_accuracy"] == 1.0


def test_a_diverged_model_is_scored_as_guesses_and_said(caplog):
    """NaN scores (weights blown up by too high a learning rate) are chance, not a crash in scikit-learn."""
    labels = np.arange(7)
    probs = np.eye(7)[labels]
    probs[:3] = np.nan
    m = compute_metrics(labels, probs, [str(i) for i in range(7)])
    assert m["non_finite"] == 3 and np.isfinite(m["loss"]) and 4 / 7 <= m["accuracy"] <= 5 / 7 and "top5_accuracy" in m
    assert any("3 of 7 images got non-finite scores" in r.getMessage() and "--lr" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist):
    images, labels = fmnist
    root = tmp_path_factory.mktemp("evalrun")
    from conftest import write_class_tree

    write_class_tree(root / "data" / "train", images[:2000], labels[:2000])
    write_class_tree(root / "data" / "test", images[58000:58600], labels[58000:58600])
    run = imgclf.train(str(root / "data"), epochs=2, batch_size=128, augment=True, out=str(root / "runs"), device="cpu")  # flips on: the TTA test needs them
    return run, root / "data", images[58000:58600], labels[58000:58600]


@pytest.mark.slow
def test_evaluate_agrees_with_an_independent_computation(trained):
    run, data_dir, images, labels = trained
    ev = imgclf.evaluate(run.run_dir, str(data_dir), tta=False)  # plain forward passes, as computed below
    assert ev.split == "test" and ev.metrics["images"] == 600
    # Independent: the bundle's model on the raw pixels, normalised by hand, metrics by hand.
    import torch

    model, spec = imgclf.load_bundle(run.run_dir)
    x = (torch.tensor(images, dtype=torch.float32)[:, None] / 255 - spec.preprocessing.mean[0]) / spec.preprocessing.std[0]
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    classes = list(spec.classes)
    from conftest import FOLDER_NAMES

    truth = np.array([classes.index(FOLDER_NAMES[l]) for l in labels])
    order = np.argsort([o.rsplit("img", 1)[1] for o in ev.images.origins])  # files were written in row order
    got = ev.probs.argmax(1)[order]
    assert np.array_equal(got, pred)
    assert ev.metrics["accuracy"] == pytest.approx((pred == truth).mean())
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (truth, pred), 1)
    assert ev.metrics["confusion_matrix"] == cm.tolist()
    for k, row in enumerate(ev.metrics["per_class"]):
        assert row["recall"] == pytest.approx(cm[k, k] / cm[k].sum())
        assert row["precision"] == pytest.approx(cm[k, k] / cm[:, k].sum() if cm[:, k].sum() else 0)


def test_every_plot_is_a_real_png(trained):
    run = trained[0]
    for name in ("curves", "confusion", "f1", "samples", "misclassified", "top_losses"):
        path = run.run_dir / "report" / f"{name}.png"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 300 and img.height >= 200, name
    assert (run.run_dir / "evaluation.json").stat().st_size > 1000


@pytest.mark.slow
def test_cli_evaluate_and_report(trained, tmp_path):
    run, data_dir = trained[0], trained[1]
    out = tmp_path / "e.json"
    proc = subprocess.run([sys.executable, "-m", "imgclf", "evaluate", str(run.run_dir), str(data_dir), "--tta", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "precision" in proc.stdout and "weighted avg" in proc.stdout and "top-5 accuracy" in proc.stdout
    import json

    assert json.loads(out.read_text())["tta"] is True  # this model trained with flips
    (run.run_dir / "report.html").unlink()
    proc = subprocess.run([sys.executable, "-m", "imgclf", "report", str(run.run_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (run.run_dir / "report.html").stat().st_size > 50_000


def test_report_in_a_real_browser(trained, tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI"):
            pytest.fail("Chromium and chromedriver are missing: 'make browser' installs them.")
        pytest.skip("Chromium and chromedriver are not installed ('make browser' installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        run = trained[0]
        browser.get((run.run_dir / "report.html").resolve().as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        assert browser.title.startswith("imgclf report")
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 6
        decoded = browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert all(decoded)
        rows = browser.find_elements(By.CSS_SELECTOR, "#class-table tbody tr")
        assert len(rows) == 10 + 2 and "tshirt" in browser.find_element(By.ID, "class-table").text
        shot = tmp_path / "report.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()


@pytest.mark.slow
def test_a_run_given_a_test_source_is_evaluated_on_it(fmnist, tmp_path):
    """A run trained with --test scored that test set at its end; `imgclf evaluate RUN` scores the same
    images, not the handful of validation images, and agrees with results.json."""
    from conftest import write_class_tree

    images, labels = fmnist
    train = write_class_tree(tmp_path / "train", images[:300], labels[:300])
    test = write_class_tree(tmp_path / "test", images[60000 - 120 :], labels[60000 - 120 :])
    run = imgclf.train(str(train), test=str(test), epochs=1, batch_size=32, device="cpu", out=str(tmp_path / "runs"))
    ev = imgclf.evaluate(run.run_dir)
    results = json.loads((run.run_dir / "results.json").read_text())
    assert ev.split == "test" and ev.metrics["images"] == 120
    assert ev.metrics["accuracy"] == pytest.approx(results["test_acc"])
