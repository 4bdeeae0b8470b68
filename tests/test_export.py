"""ONNX and TorchScript exports: parity with PyTorch on real images, and ONNX usable without imgclf."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

import imgclf
from imgclf.export import PARITY_ATOL, export


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return imgclf.train("fashion-mnist", epochs=1, device="cpu", val_fraction=0.02, out=str(tmp_path_factory.mktemp("export-runs")))


@pytest.mark.slow
@pytest.mark.parametrize("fmt, dynamic", [("onnx", True), ("onnx", False), ("torchscript", False)])
def test_parity_on_real_images(run, tmp_path, fmt, dynamic):
    result = export(run.run_dir, fmt, tmp_path / f"m.{fmt}", dynamic_batch=dynamic)
    assert result.images == 64 and result.max_abs_diff < PARITY_ATOL and result.top1_agree == 1.0
    sidecar = json.loads((tmp_path / f"m.{fmt}.json").read_text())
    assert sidecar["classes"] == run.data.classes and sidecar["input"]["shape"][1:] == [1, 28, 28]


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_without_imgclf(run, tmp_path):
    path = tmp_path / "model.onnx"
    proc = subprocess.run([sys.executable, "-m", "imgclf", "export", str(run.run_dir), "--format", "onnx", "--dynamic-batch",
                           "--out", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "top-1 agreement 100.00%" in proc.stdout, proc.stderr
    images = run.data.test.take(range(6))
    files = []
    for i, im in enumerate(images):
        Image.fromarray(im[0], "L").save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np, onnxruntime as ort
        from PIL import Image
        meta = json.load(open({str(path) + ".json"!r}))
        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        pixels = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32)[None] for f in {files!r}])
        logits = session.run(None, {{"pixels": pixels}})[0]
        print(json.dumps([meta["classes"][i] for i in logits.argmax(1)]))
        assert "imgclf" not in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == imgclf.load(run.run_dir).predict(files)
