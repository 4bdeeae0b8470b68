"""Every network works for any channels and size; timm models load local weights; freezing holds."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from imgclf import ImgclfError, create_model, default_model_name, freeze_backbone, param_groups, summarize, unfreeze
from imgclf.models.registry import builtin_models

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 97, 131), (4, 64, 64), (1, 8, 8)]


@pytest.mark.parametrize("name", sorted(builtin_models()))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_builtin_forward_backward(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape[0], 7, shape[1:])
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # The same totals the summary table reports.
    summary = summarize(model, shape)
    assert summary.params == sum(p.numel() for p in model.parameters()) == sum(r.params for r in summary.rows)
    assert summary.output_shape == (7,)


def test_summary_flops_hand_checked():
    """sequential_convnet on 1x28x28: conv MACs = 28*28*9*(1*32 + 32*16 + 16*8), linear 6272*10; 2 FLOPs each."""
    summary = summarize(create_model("sequential_convnet", 1, 10, 28), (1, 28, 28))
    macs = 28 * 28 * 9 * (1 * 32 + 32 * 16 + 16 * 8) + 8 * 28 * 28 * 10
    assert summary.flops == 2 * macs == 9_608_704
    assert summary.params == 68_834  # the tutorial prints Linear(in_features=6272): 320 + 4624 + 1160 + 62730
    table = summary.table()
    assert "6272" in table and "9,608,704" in table and "68,834" in table


def test_tutorial_layer_lists_are_faithful():
    m = create_model("mnist_cnn", 1, 10, 28)
    assert m.pre_logits[0].in_features == 2048  # the tutorial's fc1: Linear(2048, 625)
    assert create_model("cifar10_cnn", 3, 10, 32).pre_logits[0].in_features == 64 * 4 * 4
    assert create_model("apparel_cnn", 1, 10, 28).head.in_features == 4 * 7 * 7


def test_default_model_by_size():
    assert default_model_name((28, 28)) == default_model_name((224, 224)) == "small_resnet"
    assert default_model_name((224, 224), pretrained=True) == "resnet18"  # the built-in default has no published weights


def test_large_images_go_through_a_patch_stem_and_old_bundles_keep_their_network():
    """Above 64 px the default network runs its stages at 64 px or less after a lossless space-to-depth
    stem; at 64 px and below it is the network it always was, and fit=False (a bundle's own arguments)
    builds it without the stem."""
    small, large = create_model("small_resnet", 3, 10, 64), create_model("small_resnet", 3, 10, (224, 200))
    assert not any(isinstance(m, nn.PixelUnshuffle) for m in small.modules())
    assert [m.downscale_factor for m in large.modules() if isinstance(m, nn.PixelUnshuffle)] == [4]
    assert large(torch.randn(2, 3, 224, 200)).shape == (2, 10)
    full = create_model("small_resnet", 3, 10, 224, fit=False)
    assert full.state_dict()["features.0.0.weight"].shape == small.state_dict()["features.0.0.weight"].shape == (8, 3, 3, 3)
    assert summarize(large, (3, 224, 224)).flops * 6 < summarize(full, (3, 224, 224)).flops


def test_new_networks_pool_before_the_norm_and_old_bundles_load_in_their_own_order(tmp_path):
    """A new network pools right after each stage's conv where the pooled map is large enough, and has no
    norm on its first conv; a bundle made before records no pool_first (its kwargs are {} or {"patch": 1})
    or no min_pooled_side, and must rebuild the order it was trained in, or its weights would load into the
    wrong layers."""
    from imgclf.engine.bundle import BundleSpec, load_bundle, save_bundle
    from imgclf.models.registry import Architecture
    from imgclf.preprocessing import Preprocessing

    def pools_first(model) -> list[bool]:
        stages = [m for m in model.features if isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d)][1:]
        return [isinstance(stage[1], nn.MaxPool2d) for stage in stages]

    new = create_model("small_resnet", 1, 10, 28)
    assert [type(m) for m in new.features[1]] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in new.features[0]] == [nn.Conv2d, nn.ReLU]
    # 28 -> 14 -> 7 pool first; the last stage's 7 -> 3 map is too small for a norm's statistics
    assert pools_first(new) == [True, True, False]
    assert pools_first(create_model("small_resnet", 1, 10, 8)) == [False, False, False]  # digits
    torch.manual_seed(0)
    # {} and {"patch": 1}: before pool_first; pool_first without min_pooled_side: every stage pooled first
    for i, kwargs in enumerate(({}, {"patch": 1}, {"patch": 1, "pool_first": True})):
        old = create_model("small_resnet", 1, 10, 28, fit=False, **kwargs)
        assert pools_first(old) == [bool(kwargs.get("pool_first"))] * 3
        old.train()
        old(torch.randn(8, 1, 28, 28))  # running statistics that are not the identity
        spec = BundleSpec(Architecture("small_resnet", 1, 10, (28, 28), kwargs), tuple("0123456789"),
                          Preprocessing(1, (28, 28), "crop", (0.5,), (0.25,)))
        loaded, _ = load_bundle(save_bundle(tmp_path / f"old{i}", old, spec))
        x = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(loaded(x), old.eval()(x))


@pytest.mark.slow
def test_a_run_on_larger_images_records_the_stem_and_its_bundle_loads(fmnist_small, tmp_path):
    import numpy as np

    import imgclf

    images, labels = fmnist_small
    big = np.repeat(np.repeat(images[:, None], 4, axis=2), 4, axis=3)[:, :, :111, :101]  # odd sides: the stem pads them
    run = imgclf.train((big, labels), epochs=1, batch_size=32, device="cpu", out=str(tmp_path))
    from imgclf.engine.bundle import bundle_dir, read_spec

    spec = read_spec(bundle_dir(run.run_dir))
    assert spec.architecture.name == "small_resnet" and spec.architecture.kwargs == {"patch": 2, "pool_first": True,
                                                                                    "min_pooled_side": 7}
    assert imgclf.evaluate(run.run_dir, (big[:50], labels[:50])).metrics["accuracy"] > 0
    from conftest import write_class_tree
    from imgclf.export import export

    check = write_class_tree(tmp_path / "check", big[:20, 0], labels[:20])
    for fmt in ("onnx", "torchscript"):
        assert export(run.run_dir, fmt, out=tmp_path / f"model-{fmt}", check=str(check), dynamic_batch=True).top1_agree == 1.0


def test_unknown_model_suggests():
    with pytest.raises(ImgclfError, match="Did you mean.*resnet18"):
        create_model("resnet81", 3, 10, 32)
    with pytest.raises(ImgclfError, match="at least 8"):
        create_model("small_resnet", 1, 10, 4)


def test_timm_model_any_channels():
    model = create_model("resnet18", 4, 5, 40)
    assert model(torch.randn(2, 4, 40, 40)).shape == (2, 5)


def _reference_resnet18(path, fmt: str):
    """An ImageNet-shaped resnet18 state dict written by the test: timm's naming as safetensors,
    torchvision's as a .pth of plain tensors."""
    torch.manual_seed(1)
    if fmt == "safetensors":
        import timm
        from safetensors.torch import save_file

        state = timm.create_model("resnet18", num_classes=1000).state_dict()
        save_file(state, str(path))
    else:
        import torchvision

        state = torchvision.models.resnet18(weights=None).state_dict()
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # a DDP-style checkpoint
    return state


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_weights_file_head_replaced_gray_stem(tmp_path, fmt):
    path = tmp_path / f"resnet18.{fmt}"
    state = _reference_resnet18(path, fmt)
    model = create_model("resnet18", 1, 10, 32, weights=str(path))
    assert model.get_classifier().out_features == 10
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    # timm's channel adaptation: an RGB stem summed over its input channels for one gray channel
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_freeze_then_unfreeze(tmp_path):
    path = tmp_path / "r.safetensors"
    _reference_resnet18(path, "safetensors")
    model = create_model("resnet18", 1, 3, 32, weights=str(path))
    freeze_backbone(model)
    assert model.fc.weight.requires_grad and model.bn1.weight.requires_grad
    assert not model.conv1.weight.requires_grad and not model.layer4[1].conv2.weight.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)), torch.arange(8) % 3).backward()
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert torch.equal(after["layer3.0.conv1.weight"], before["layer3.0.conv1.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    groups = param_groups(model, lr=0.1, backbone_lr_scale=0.1)
    assert [g["name"] for g in groups] == ["backbone", "head"] and groups[0]["lr"] == pytest.approx(0.01)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(list(model.parameters())) and all(isinstance(p, torch.Tensor) for p in grouped)
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    torch.optim.SGD(groups, lr=0.1)  # the groups are what an optimizer accepts


def test_builtin_weights_file_new_head_and_channels(tmp_path):
    from safetensors.torch import save_file

    source = create_model("small_resnet", 3, 10, 32)
    save_file(source.state_dict(), str(tmp_path / "mine.safetensors"))
    model = create_model("small_resnet", 1, 4, 28, weights=str(tmp_path / "mine.safetensors"))
    assert model.head.out_features == 4
    assert torch.equal(model.features[1][0].weight, source.features[1][0].weight)
    assert torch.allclose(model.features[0][0].weight, source.features[0][0].weight.sum(1, keepdim=True))


def test_weights_that_do_not_fit_are_named(tmp_path):
    from safetensors.torch import save_file

    save_file(create_model("apparel_cnn", 1, 10, 28).state_dict(), str(tmp_path / "a.safetensors"))
    with pytest.raises(ImgclfError, match="does not fit"):
        create_model("small_resnet", 1, 10, 28, weights=str(tmp_path / "a.safetensors"))
    with pytest.raises(ImgclfError, match="no such weights file"):
        create_model("small_resnet", 1, 10, 28, weights=str(tmp_path / "missing.pth"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv.weight": _Exploit(marker)}, f)
    with pytest.raises(ImgclfError, match="refused"):
        create_model("small_resnet", 1, 10, 28, weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_builtin_pretrained_is_refused_with_the_way_out():
    with pytest.raises(ImgclfError, match="--weights"):
        create_model("small_resnet", 1, 10, 28, pretrained=True)


def run(*args):
    return subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_models_and_summary():
    out = run("models").stdout
    assert all(name in out for name in builtin_models()) and "timm architectures" in out
    listed = run("models", "resnet1*").stdout
    assert "* resnet18" in listed and "with pretrained weights" in listed
    table = run("summary", "apparel_cnn", "--input", "1x28x28")
    assert table.returncode == 0 and "total params: 2,174" in table.stdout and "4x7x7" in table.stdout
    bad = run("summary", "apparel_cnn", "--input", "28x28")
    assert bad.returncode == 2 and "C x H x W" in bad.stderr


@pytest.mark.slow
def test_pretrained_hub_unreachable_gives_one_line_with_the_way_out():
    code = ("from imgclf import create_model, ImgclfError\n"
            "try:\n    create_model('resnet18', 1, 10, 32, pretrained=True)\n"
            "except ImgclfError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    # At once, not after a minute of hub retries, and a whole sentence that says where weights go.
    assert out.startswith("ERR the pretrained weights of resnet18 are not in the local cache") and out.rstrip().endswith("--weights FILE.")
    assert "huggingface" in out
    assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["small_resnet", "apparel_cnn", "mnist_cnn", "resnet18"])
def test_inference_rewrites_give_the_same_outputs(name):
    from imgclf.models.inference import MaxPool2x2, for_inference

    for size in [(32, 32), (29, 31)] + ([(100, 90)] if name == "small_resnet" else []):  # odd sides: floor-mode pooling drops
        # the last row/column; 100 px: the patch stem
        torch.manual_seed(0)
        model = create_model(name, 3, 5, size)
        model.train()
        for _ in range(3):  # give the norms running statistics that are not the identity
            model(torch.randn(16, 3, *size))
        model.eval()
        layers = [type(m) for m in model.modules()]
        fast = for_inference(model)
        x = torch.randn(4, 3, *size)
        with torch.no_grad():
            assert torch.allclose(fast(x), model(x), atol=1e-4)
            assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-4)
    if name == "small_resnet":  # every conv-norm pair folded; the norms after a pool stay (a pool sits between):
        # at 100x90 (patch 2: 50x45) the first two stages pool first, the third (11 -> 5 px) does not
        assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 2
    if name != "resnet18":  # timm's ResNet pools 3x3 with stride 2: left alone
        assert any(isinstance(m, MaxPool2x2) for m in fast.modules())
        assert not any(isinstance(m, MaxPool2x2) for m in for_inference(model, "cuda").modules())
    assert [type(m) for m in model.modules()] == layers  # the original is untouched


def test_pairwise_max_pool_equals_max_pool_exactly():
    from imgclf.models.inference import MaxPool2x2

    x = torch.randn(2, 5, 9, 12)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 4, 4] = float("inf")
    want, got = nn.MaxPool2d(2)(x), MaxPool2x2()(x)
    assert got.shape == want.shape == (2, 5, 4, 6)
    assert torch.equal(torch.nan_to_num(got, nan=7.0), torch.nan_to_num(want, nan=7.0))
    assert torch.isnan(got[0, 1, 1, 1]) and torch.isnan(want[0, 1, 1, 1])
