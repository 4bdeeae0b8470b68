"""Why the default adds flips and test-time views from 8 epochs: the default recipe with and without them
(and with the weight average) on Fashion-MNIST subsets of 1,000 and 4,000 images x 2, 5 and 12 epochs,
mean test accuracy over 2 seeds on 2,000 test images. Prints one JSON line per cell.

    python benchmarks/augment_default.py > benchmarks/results/augment_default.log

The log in results/ was made before the default changed (so "base" is the old default: no augmentation
below 15 epochs); today's default is "flip_tta" from 8 epochs and "base" below.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import small_data  # noqa: E402

CANDIDATES = {"base": {"augment": False, "tta": False}, "flip_ema_tta": dict(augment=True, crop_padding=0, ema=True, tta=True),
              "flip_tta": dict(augment=True, crop_padding=0, tta=True)}


def main() -> None:
    import tempfile

    import imgclf

    logging.getLogger("imgclf").setLevel(logging.WARNING)
    x, y, xt, yt = small_data.fashion_mnist()
    with tempfile.TemporaryDirectory() as out:
        for n in (1000, 4000):
            for epochs in (2, 5, 12):
                row = {"n": n, "epochs": epochs}
                for name, settings in CANDIDATES.items():
                    accs = []
                    for seed in (0, 1):
                        pick = np.random.default_rng(seed).permutation(len(x))[:n]
                        run = imgclf.train((x[pick], y[pick]), epochs=epochs, seed=seed, device="cpu", out=out, test=(xt, yt), **settings)
                        accs.append(run.test["acc"])
                    row[name] = round(100 * float(np.mean(accs)), 2)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
