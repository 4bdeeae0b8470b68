"""Issue 6's benchmark: predicting the 10,000 Fashion-MNIST test images as PNG files.

Side by side, one after another: imgclf's prediction (parallel decoding, batches through the model)
and the tutorial's loop (open each file with PIL, transform, call the model on one image). Same
bundle, same files. Writes benchmarks/results/predict.{md,json}.

    python benchmarks/predict.py [--images 10000]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402



def write_pngs(folder: Path, n: int) -> list[str]:
    from PIL import Image

    path = common.fashion_mnist_file("t10k-images-idx3-ubyte")
    data = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    images = np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(im, "L").save(path)
        paths.append(str(path))
    return paths


def tutorial_loop(model, paths: list[str], mean: float, std: float) -> list[int]:
    """The tutorials' way: one file, one transform, one model call at a time."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    model.eval()
    out = []
    with torch.no_grad():
        for p in paths:
            x = tf(Image.open(p).convert("L")).unsqueeze(0)
            out.append(int(model(x).argmax(1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    import imgclf

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_pngs(tmp / "png", args.images)
        run = imgclf.train("fashion-mnist", epochs=1, out=str(tmp / "runs"))
        clf = imgclf.load(run.run_dir, device="cpu")
        model, spec = imgclf.load_bundle(run.run_dir)
        mean, std = spec["normalization"]["mean"][0], spec["normalization"]["std"][0]
        labels = {}

        def imgclf_predict():
            labels["imgclf"] = clf.predict_proba(paths).argmax(1)

        def tutorial():
            labels["tutorial"] = tutorial_loop(model, paths, mean, std)

        times = {"imgclf predict (parallel decode, batches of 256)": common.timed(imgclf_predict, 3),
                 "tutorial per-image loop": common.timed(tutorial, 2)}
    agree = float(np.mean(np.array(labels["imgclf"]) == np.array(labels["tutorial"])))
    rows = [{"what": k, "median s": common.median(v), "images/s": args.images / common.median(v), "runs (s)": " ".join(f"{x:.2f}" for x in v)}
            for k, v in times.items()]
    ratio = rows[0]["images/s"] / rows[1]["images/s"]
    summary = [f"{args.images} Fashion-MNIST test PNGs, default model (small_resnet), CPU.",
               f"imgclf predicts {ratio:.1f}x the images/s of the per-image loop (target >= 10x): " + ("met" if ratio >= 10 else "NOT met"),
               f"The two agree on {agree:.2%} of the labels."]
    path = common.write("predict", rows, summary, {"images": args.images})
    print(path.read_text())


if __name__ == "__main__":
    main()
