"""The CUDA paths run for real: float16 with loss scaling, bfloat16, batches streamed through pinned
memory, the out-of-memory line, prediction on the GPU, and NCCL across two GPUs. Skipped without a GPU
(the rules behind them are tested on any machine in test_hardware.py); .ci/gpu_checks runs them in one go."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import imgclf
from imgclf.data.loader import DeviceLoader
from imgclf.errors import ImgclfError

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision, scaled", [("16", True), ("bf16", False)])
def test_mixed_precision_trains_and_resumes_its_scaler(fmnist_small, tmp_path, precision, scaled):
    images, labels = fmnist_small
    run = imgclf.train((images, labels), epochs=2, batch_size=32, device="cuda", precision=precision, out=str(tmp_path))
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"] and np.isfinite(run.history[-1]["val_loss"])
    last = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert bool(last["scaler"]) == scaled  # a float16 run saves its loss scale, a bfloat16 run has none to save
    resumed = imgclf.train(resume=str(run.run_dir), epochs=3)
    assert len(resumed.history) == 3


def test_streamed_batches_equal_resident_ones_on_the_gpu(fmnist_small):
    data = imgclf.load_data(fmnist_small, val_fraction=0)
    kw = dict(batch_size=64, mean=data.mean, std=data.std, device="cuda", train=True, seed=1)
    resident = list(DeviceLoader(data.train, resident=True, **kw))
    streamed = list(DeviceLoader(data.train, resident=False, **kw))
    assert all(a[0].is_cuda and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resident, streamed))


def test_running_out_of_gpu_memory_is_one_line(fmnist_small, tmp_path):
    images, labels = fmnist_small
    torch.cuda.set_per_process_memory_fraction(0.02)  # a sliver of the card: resnet50 on 256 px images cannot fit
    try:
        with pytest.raises(ImgclfError, match=r"the cuda ran out of memory at batch size 256 \(resnet50, 3x256x256 images\); try "):
            imgclf.train((images, labels), model="resnet50", image_size=256, channels=3, batch_size=256, epochs=1, device="cuda",
                         precision="32", out=str(tmp_path))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_gpu_predictions_match_the_cpu_ones(tiny_bundle, fmnist_small):
    images = fmnist_small[0][:64]
    on_gpu, on_cpu = imgclf.load(tiny_bundle, device="cuda"), imgclf.load(tiny_bundle, device="cpu")
    assert on_gpu.device_.type == "cuda"
    assert np.allclose(on_gpu.predict_proba(images), on_cpu.predict_proba(images), atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across processes needs two GPUs")
def test_two_gpus_train_as_one_over_nccl(tmp_path):
    cmd = [sys.executable, "-m", "imgclf", "train", "digits", "--nproc", "2", "--epochs", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = [d for d in tmp_path.iterdir() if (d / "results.json").is_file()]
    assert json.loads((run_dir / "results.json").read_text())["processes"] == 2
