"""The device decisions whose paths run only on a GPU, checked on any machine: the rules take the device's
facts as arguments (scripts/gpu_checks.sh runs the real thing where there is a GPU)."""

from __future__ import annotations

import pytest
import torch

from imgclf.data.loader import RESIDENT_SHARE, fits_resident
from imgclf.engine.hardware import eval_batch_size, grad_scaler, out_of_memory_advice, pick_precision
from imgclf.errors import ImgclfError

CUDA, CPU, MPS = torch.device("cuda"), torch.device("cpu"), torch.device("mps")


@pytest.mark.parametrize(
    "name, device, units, expected",
    [
        ("auto", CUDA, True, torch.bfloat16),  # an Ampere or later GPU
        ("auto", CUDA, False, torch.float16),  # a Turing or Volta GPU: float16 with loss scaling
        ("16", CUDA, True, torch.float16),
        ("bf16", CUDA, True, torch.bfloat16),
        ("32", CUDA, True, None),
        ("auto", CPU, True, torch.bfloat16),  # a CPU with AVX512-BF16 or AMX: bf16 autocast, measurably faster
        ("auto", CPU, False, None),  # elsewhere bf16 is emulated and slower: float32
        ("bf16", CPU, True, torch.bfloat16),
        ("32", CPU, True, None),
        ("auto", MPS, False, None),
    ],
)
def test_precision_follows_what_the_device_computes_natively(name, device, units, expected):
    assert pick_precision(name, device, bf16_units=units) == expected


def test_fine_tuning_on_a_cpu_stays_in_float32_unless_bf16_is_asked():
    assert pick_precision("auto", CPU, bf16_units=True, pretrained=True) is None  # not yet measured on photos
    assert pick_precision("bf16", CPU, bf16_units=True, pretrained=True) == torch.bfloat16
    assert pick_precision("auto", CUDA, bf16_units=True, pretrained=True) == torch.bfloat16  # a GPU's mixed precision as ever


@pytest.mark.parametrize(
    "name, device, units, said",
    [
        ("bf16", CUDA, False, "this GPU has no bfloat16 support; use --precision 16"),
        ("bf16", CPU, False, "not supported on this cpu"),  # emulated bf16 is slower than float32
        ("16", CPU, True, "not supported on this cpu"),
        ("16", MPS, False, "not supported on this mps"),
    ],
)
def test_a_precision_the_device_lacks_is_one_line(name, device, units, said):
    with pytest.raises(ImgclfError, match=said):
        pick_precision(name, device, bf16_units=units)


def test_the_grad_scaler_runs_for_float16_only():
    assert grad_scaler(CPU, torch.float16).is_enabled()
    assert not grad_scaler(CPU, torch.bfloat16).is_enabled() and not grad_scaler(CPU, None).is_enabled()
    # a disabled scaler leaves the loss and the step as they are
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.5)
    scaler = grad_scaler(CPU, None)
    loss = (w * 3).sum()
    assert torch.equal(scaler.scale(loss), loss)
    scaler.scale(loss).backward()
    scaler.step(opt)
    assert torch.equal(w.detach(), torch.tensor([-0.5, -0.5]))


def test_out_of_memory_advice_names_what_ran_out_and_what_to_change():
    gpu = out_of_memory_advice(CUDA, 256, "resnet50", (3, 224, 224), None)
    assert gpu == ("the cuda ran out of memory at batch size 256 (resnet50, 3x224x224 images); "
                   "try --batch-size 128, --precision 16 or a smaller --image-size.")
    assert "--precision" not in out_of_memory_advice(CUDA, 256, "resnet50", (3, 224, 224), torch.bfloat16)  # already halved
    cpu = out_of_memory_advice(CPU, 1, "small_resnet", (1, 28, 28), None)
    assert "--batch-size 1 or" in cpu and "--precision" not in cpu and "\n" not in cpu


def test_a_split_lives_on_the_device_while_it_takes_a_quarter_of_the_free_memory():
    free = 80 * 2**30  # an H100's 80 GiB
    assert RESIDENT_SHARE == 0.25
    assert fits_resident(60_000 * 28 * 28, free)  # Fashion-MNIST: 47 MB
    assert fits_resident(20 * 2**30, free) and not fits_resident(20 * 2**30 + 1, free)
    assert not fits_resident(1_281_167 * 3 * 224 * 224, free)  # ImageNet at 224 px: 193 GB streams from the map


@pytest.mark.parametrize("shape, batch", [((1, 28, 28), 1024), ((3, 32, 32), 1024), ((3, 64, 64), 512), ((3, 224, 224), 32),
                                          ((3, 512, 512), 16)])
def test_the_evaluation_batch_follows_the_input_size(shape, batch):
    assert eval_batch_size(shape) == batch
    assert eval_batch_size(shape, asked=7) == 7
