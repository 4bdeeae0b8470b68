"""Prediction from a bundle: every input kind, bad files reported in place, CSV ids and templates."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from imgclf import ImgclfError


@pytest.fixture(scope="module")
def run(tmp_path_factory, fmnist):
    images, labels = fmnist
    return imgclf.train((images[:2000], labels[:2000]), epochs=2, batch_size=128, device="cpu",
                        out=str(tmp_path_factory.mktemp("predict-runs")))


@pytest.fixture(scope="module")
def held_out(fmnist):
    images, labels = fmnist
    return images[55000:55040], labels[55000:55040]


@pytest.mark.slow
def test_round_trip_equals_the_in_memory_model(run, held_out):
    images, _ = held_out
    clf = imgclf.load(run.run_dir)
    assert clf.classes_ == list(range(10))  # trained on integer labels: integers come back
    x = (torch.tensor(images, dtype=torch.float32)[:, None] / 255 - run.data.mean[0]) / run.data.std[0]
    run.model.eval()
    with torch.no_grad():
        expected = run.model.cpu()(x).softmax(1).numpy()
    probs = clf.predict_proba(images)
    assert np.allclose(probs, expected, atol=1e-5)
    assert clf.predict(images) == [int(i) for i in expected.argmax(1)]
    top = clf.top_k(images[:3], k=3)
    assert len(top) == 3 and len(top[0]) == 3 and top[0][0][0] == int(expected[0].argmax())
    assert top[0][0][1] >= top[0][1][1] >= top[0][2][1]


def test_every_format_and_mode_gives_the_same_answer(run, held_out, tmp_path):
    images, _ = held_out
    clf = imgclf.load(run.run_dir)
    # The image with the widest margin between the first two classes: a model of 2 epochs is unsure of
    # most, and a lossy copy (JPEG, a 500 px resize) may tip an unsure answer without any fault of ours.
    top2 = np.sort(clf.predict_proba(images), 1)[:, -2:]
    pick = int(np.argmax(top2[:, 1] - top2[:, 0]))
    images = images[pick:pick + 1]
    want = clf.predict(images)[0]
    gray = Image.fromarray(images[0], "L")
    variants = {"a.png": gray, "b.bmp": gray, "c.tiff": gray, "d.webp": gray, "e.png": gray.convert("RGB"),
                "f.png": gray.convert("RGBA"), "g.png": gray.convert("P"), "h.tif": Image.fromarray(images[0].astype(np.uint16) * 257)}
    for name, img in variants.items():
        img.save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
        assert clf.predict(str(tmp_path / name)) == [want], name
    gray.save(tmp_path / "j.jpg", quality=98)
    assert clf.predict(str(tmp_path / "j.jpg")) == [want]
    assert clf.predict(gray) == [want] and clf.predict(torch.from_numpy(images[0])) == [want]
    # A big colour photo for a model of 28x28 gray images: converted by the bundle's preprocessing.
    big = gray.convert("RGB").resize((500, 500))
    big.save(tmp_path / "big.jpg", quality=95)
    assert clf.predict(str(tmp_path / "big.jpg")) == [want]
    assert clf.predict(str(tmp_path)) and len(clf.predict(str(tmp_path))) == 10  # a folder


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_folder_with_bad_files_reports_them_in_place(run, held_out, tmp_path):
    images, _ = held_out
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(images[i], "L").save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    (folder / "2_empty.png").write_bytes(b"")
    (folder / "3_text.jpg").write_text("not an image")
    out = tmp_path / "p.csv"
    proc = run_cli("predict", str(run.run_dir), str(folder), "--out", str(out), "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["id"] for r in rows] == ["0.png", "2.png", "2_empty.png", "3_text.jpg", "4.png", "sub/1.png", "sub/3.png"]
    errors = dict(csv.reader(out.with_name("p.errors.csv").read_text().splitlines()[1:]))  # errors beside, not a column
    assert set(errors) == {"2_empty.png", "3_text.jpg"} and "empty" in errors["2_empty.png"] and "error" not in rows[0]
    assert all(r["label"] == "" for r in rows if r["id"] in errors)
    assert all(r["label"] and r["top1_label"] == r["label"] and float(r["top2_prob"]) <= float(r["top1_prob"]) for r in rows if r["id"] not in errors)
    assert "2 input(s) could not be read" in proc.stdout
    with pytest.raises(ImgclfError, match="2_empty.png"):
        imgclf.load(run.run_dir).predict(str(folder))


@pytest.mark.slow
def test_csv_of_ids_and_a_submission_template(run, csv_layout, tmp_path):
    out = tmp_path / "sub.csv"
    proc = run_cli("predict", str(run.run_dir), str(csv_layout / "test.csv"), "--template", str(csv_layout / "sample_submission.csv"),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == [str(i) for i in range(201, 251)]
    assert all(r[1] in [str(i) for i in range(10)] for r in rows[1:])
    plain = tmp_path / "plain.csv"
    proc = run_cli("predict", str(run.run_dir), str(csv_layout / "test.csv"), "--out", str(plain), "--proba")
    got = list(csv.DictReader(plain.read_text().splitlines()))
    assert [r["id"] for r in got] == [str(i) for i in range(201, 251)]
    assert abs(sum(float(got[0][f"prob_{c}"]) for c in range(10)) - 1) < 1e-4
    assert [r["label"] for r in got] == [r[1] for r in rows[1:]]


def test_many_files_go_through_worker_processes_with_the_same_answers(run, fmnist, tmp_path):
    """Past PARALLEL_FROM files, CPU workers decode and predict their chunks themselves: same rows, same
    order, bad files and ids without a file in place, and this process keeps its own torch threads."""
    images = fmnist[0][50000:50300]
    paths, ids = [], []
    for i, im in enumerate(images):
        Image.fromarray(im, "L").save(tmp_path / f"{i:03d}.png")
        paths.append(str(tmp_path / f"{i:03d}.png"))
        ids.append(str(i))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for at, (image_id, path) in {70: ("empty", str(tmp_path / "empty.png")), 150: ("text", str(tmp_path / "text.jpg")),
                                 200: ("missing", "")}.items():
        paths.insert(at, path)
        ids.insert(at, image_id)
    threads = torch.get_num_threads()
    pooled = imgclf.ImageClassifier(run.run_dir, device="cpu", workers=2, batch_size=64)
    serial = imgclf.ImageClassifier(run.run_dir, device="cpu", workers=1, batch_size=64)
    items, probs = pooled.files_with_probabilities(paths, ids)
    assert torch.get_num_threads() == threads
    serial_items, serial_probs = serial.files_with_probabilities(paths, ids)
    assert [(it.id, it.error) for it in items] == [(it.id, it.error) for it in serial_items]
    assert [it.id for it in items if it.error] == ["empty", "text", "missing"]
    good = [i for i, it in enumerate(items) if not it.error]
    assert np.isnan(np.delete(probs, good, axis=0)).all()
    assert np.allclose(probs[good], serial_probs[good], atol=1e-5)
    assert np.allclose(probs[good], serial.predict_proba(images), atol=1e-5)


@pytest.mark.slow
def test_single_image_prints_its_top_5(run, held_out, tmp_path):
    Image.fromarray(held_out[0][0], "L").save(tmp_path / "one.png")
    proc = run_cli("predict", str(run.run_dir), str(tmp_path / "one.png"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6 and lines[1].strip().endswith("%")


def test_bundle_format_version_is_checked(run, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(run.run_dir, copy)
    spec = json.loads((copy / "model.json").read_text())
    spec["format"] = 99
    (copy / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ImgclfError, match="bundle format 99"):
        imgclf.load(copy)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_malicious_pickles_as_models_are_refused_and_run_nothing(run, tmp_path):
    marker = tmp_path / "pwned"
    evil_dir = tmp_path / "evil"
    shutil.copytree(run.run_dir, evil_dir)
    with open(evil_dir / "model.safetensors", "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state": _Exploit(marker)}, f)
    with pytest.raises(ImgclfError, match="model.safetensors"):
        imgclf.load(evil_dir)
    proc = run_cli("predict", str(tmp_path / "evil.pth"), str(tmp_path))
    assert proc.returncode == 2 and "no model bundle" in proc.stderr
    with open(evil_dir / "checkpoints" / "last.pt", "wb") as f:
        pickle.dump({"model": _Exploit(marker)}, f)
    from imgclf.engine.checkpoint import load_checkpoint

    with pytest.raises(ImgclfError, match="not a readable imgclf checkpoint"):
        load_checkpoint(evil_dir / "checkpoints" / "last.pt")
    assert not marker.exists()


def test_write_predictions_is_the_cli_without_printing(tiny_bundle, fmnist_small, tmp_path):
    """The API writes what `imgclf predict` writes: the CSV in input order, and the reasons beside it."""
    import csv

    folder = tmp_path / "test"
    folder.mkdir()
    for i, im in enumerate(fmnist_small[0][:4]):
        Image.fromarray(im).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    clf = imgclf.load(tiny_bundle, device="cpu")
    written = imgclf.write_predictions(clf, [str(folder)], tmp_path / "out.csv", top_k=2)
    rows = list(csv.DictReader(open(written.path)))
    assert [r["id"] for r in rows] == ["0.png", "1.png", "2.png", "3.png", "broken.png"]
    assert rows[-1]["label"] == "" and all(r["label"] for r in rows[:4]) and "top2_prob" in rows[0]
    assert written.labelled == 4 and written.bad == 1
    assert "broken.png" in written.errors.read_text()
