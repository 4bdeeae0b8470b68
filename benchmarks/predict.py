"""Issue 6's benchmark: predicting the 10,000 Fashion-MNIST test images as PNG files.

Side by side, taking turns in each round: imgclf's prediction (worker processes that decode and run
the model on their chunks), the same split the other way (workers decode, the model runs in this
process on all cores), and the tutorial's loop (open each file with PIL, transform, call the model on
one image). Same bundle, same files. Beside them the model's compute ceiling: images/s of the bare
forward pass (ImageClassifier.predict_pixels) on the same images decoded beforehand, so that what
decoding and the pipeline cost is visible. Writes benchmarks/results/predict.{md,json}.

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


def tutorial_loop(model, paths: list[str], mean: float, std: float, device: str) -> list[int]:
    """The tutorials' way: one file, one transform, one model call at a time."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    model.eval()
    out = []
    with torch.no_grad():
        for p in paths:
            x = tf(Image.open(p).convert("L")).unsqueeze(0).to(device)
            out.append(int(model(x).argmax(1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (both sides use it)")
    args = parser.parse_args()
    import imgclf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_pngs(tmp / "png", args.images)
        run = imgclf.train("fashion-mnist", epochs=1, out=str(tmp / "runs"))
        clf = imgclf.load(run.run_dir, device=args.device)
        model, spec = imgclf.load_bundle(run.run_dir)
        model.to(args.device)
        mean, std = spec.preprocessing.mean[0], spec.preprocessing.std[0]
        labels = {}

        def imgclf_predict():
            labels["imgclf"] = clf.predict_proba(paths).argmax(1)

        def decode_in_workers_predict_here():
            from imgclf.data.parallel import chunks, iter_chunks, worker_count

            workers = worker_count(None)
            jobs = [(paths[a:b],) for a, b in chunks(len(paths), workers, size=clf.batch_size)]
            probs = [clf.predict_decoded(out)[1] for out, _ in iter_chunks(clf.pre_.read_files, jobs, workers, "decoding")]
            labels["split"] = np.concatenate(probs).argmax(1)

        def tutorial():
            labels["tutorial"] = tutorial_loop(model, paths, mean, std, args.device)

        decoded = np.stack(clf.pre_.read_files(paths)[0])

        def ceiling():
            labels["ceiling"] = clf.predict_pixels(decoded).argmax(1)

        names = {"imgclf": "imgclf predict (workers decode and predict, batches of 256)",
                 "split": "workers decode, model in this process on all cores",
                 "tutorial": "tutorial per-image loop",
                 "ceiling": "compute ceiling: the model alone on images decoded beforehand (all cores)"}
        times = common.interleaved({names["imgclf"]: imgclf_predict, names["split"]: decode_in_workers_predict_here,
                                    names["tutorial"]: tutorial, names["ceiling"]: ceiling}, args.rounds)
    agree = float(np.mean(np.array(labels["imgclf"]) == np.array(labels["tutorial"])))
    agree_split = float(np.mean(labels["imgclf"] == labels["split"]))
    per_round = [t / i for i, t in zip(times[names["imgclf"]], times[names["tutorial"]])]
    rows = [{"what": k, "median s": common.median(v), "images/s": args.images / common.median(v), "runs (s)": " ".join(f"{x:.2f}" for x in v)}
            for k, v in times.items()]
    ratio = rows[0]["images/s"] / rows[2]["images/s"]
    summary = [f"{args.images} Fashion-MNIST test PNGs, default model (small_resnet), {common.machine()['cores']} cores, device {clf.device_}.",
               f"imgclf predicts {ratio:.1f}x the images/s of the per-image loop (ratio of medians; per round: "
               + " ".join(f"{r:.1f}x" for r in per_round) + "; target >= 10x): " + ("met" if ratio >= 10 else "NOT met"),
               f"Workers that predict too: {rows[0]['images/s'] / rows[1]['images/s']:.2f}x the images/s of workers that only decode.",
               f"imgclf and the tutorial loop agree on {agree:.2%} of the labels; imgclf's two ways on {agree_split:.2%}.",
               f"imgclf predict from PNG files runs at {rows[0]['images/s'] / rows[3]['images/s']:.0%} of the model's own compute "
               f"ceiling ({rows[3]['images/s']:,.0f} images/s on decoded images): the rest is decoding and moving pixels."]
    path = common.write("predict", rows, summary, {"images": args.images, "ratio": ratio, "ratio_per_round": per_round,
                                                   "ceiling_share": rows[0]["images/s"] / rows[3]["images/s"]})
    print(path.read_text())


if __name__ == "__main__":
    main()
