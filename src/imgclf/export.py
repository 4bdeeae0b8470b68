"""Exporting a bundle to ONNX or TorchScript, preprocessing included, with a parity check on real images.

The exported graph takes raw pixels (float32 N x C x H x W, values 0..255, the bundle's channels and
size) and returns logits: scaling and normalisation are inside, so a user needs only to decode and
resize. A sidecar <file>.json records the classes and that input contract.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf.engine.bundle import BundleSpec
from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")
FORMATS = ("onnx", "torchscript")
PARITY_ATOL = 1e-4
CHECK_IMAGES = 64


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    top1_agree: float
    images: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < PARITY_ATOL and self.top1_agree == 1.0


def _check_pixels(spec: BundleSpec, source: str | None) -> np.ndarray:
    """Real images for the parity check, in the model's input format: the given source, else the run's."""
    from imgclf.data.sources import load_data

    source = source or spec.source
    if not source:
        raise ImgclfError("the parity check needs real images: pass --check SOURCE (a folder, CSV or dataset of such images).")
    data = load_data(source, **spec.preprocessing.data_settings(), val_fraction=0.0)
    part = data.test if data.test is not None else data.train
    return part.take(np.arange(min(CHECK_IMAGES, len(part)))).astype(np.float32)


def export(
    model_path: str | Path, fmt: str, out: str | Path | None = None, *, dynamic_batch: bool = False, check: str | None = None
) -> ExportResult:
    """Write the bundle's model as ONNX or TorchScript and compare its logits with PyTorch's on real images."""
    from imgclf.engine.bundle import bundle_dir, load_bundle

    if fmt not in FORMATS:
        raise ImgclfError(f"--format {fmt} is not one of {', '.join(FORMATS)}.")
    model, spec = load_bundle(model_path)
    pre = spec.preprocessing
    wrapped = pre.module(model.float().eval()).eval()
    pixels = _check_pixels(spec, check)
    out = Path(out) if out else bundle_dir(model_path) / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(pixels[:2] if dynamic_batch else pixels[:1])
    if fmt == "onnx":
        _to_onnx(wrapped, example, out, dynamic_batch)
        run = _onnx_runner(out)
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice: the format still serves C++ and mobile
            traced = torch.jit.trace(wrapped, example)
            traced.save(str(out))
            loaded = torch.jit.load(str(out))
        run = lambda x: loaded(torch.from_numpy(x)).detach().numpy()
    with torch.no_grad():
        reference = wrapped(torch.from_numpy(pixels)).numpy()
    batch = len(pixels) if dynamic_batch else 1
    got = np.concatenate([run(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
    result = ExportResult(out, float(np.abs(got - reference).max()), float((got.argmax(1) == reference.argmax(1)).mean()), len(pixels))
    sidecar = {
        "format": fmt,
        "classes": spec.labels,
        "architecture": spec.architecture.name,
        "input": {
            "name": "pixels",
            "dtype": "float32",
            "layout": "NCHW",
            "shape": [None if dynamic_batch else 1, *pre.shape],
            "values": pre.describe()["values"],
            "resize": pre.describe()["resize_rule"],
        },
        "output": {"name": "logits", "softmax": "not applied"},
        "normalization": "included in the graph",
        "parity": {"images": result.images, "max_abs_diff": result.max_abs_diff, "top1_agree": result.top1_agree},
    }
    Path(str(out) + ".json").write_text(json.dumps(sidecar, indent=2))
    return result


def _to_onnx(model: nn.Module, example: torch.Tensor, out: Path, dynamic_batch: bool) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImgclfError("ONNX export needs the onnx and onnxscript packages: pip install 'imgclf[export]'.") from None
    shapes = {"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    quiet = io.StringIO()  # the exporter narrates its passes on stdout; failures still raise
    with torch.no_grad(), contextlib.redirect_stdout(quiet), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), input_names=["pixels"], output_names=["logits"], dynamic_shapes=shapes, dynamo=True, verbose=False
        )
        assert program is not None  # dynamo=True: export returns the ONNXProgram
        program.save(str(out))


def _onnx_runner(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImgclfError("checking an ONNX export needs onnxruntime: pip install 'imgclf[export]'.") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
