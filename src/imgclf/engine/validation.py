"""The loss and accuracy of a model over a loader, summed over the ranks (validation in the loop, and the
time budget's measurement of it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.data.loader import DeviceLoader
from imgclf.engine import hardware
from imgclf.engine.distributed import SINGLE, World


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DeviceLoader, device: torch.device, dtype, world: World = SINGLE) -> dict:
    """Mean cross-entropy (no label smoothing) and accuracy over a loader; over every rank's shard when
    the loader is one of several (each image counted once: shards are disjoint and unpadded)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct, images
    for x, y in loader:
        with hardware.autocast(device, dtype):
            out = model(x)
        sums[0] += F.cross_entropy(out.float(), y, reduction="sum").double()
        sums[1] += (out.argmax(1) == y).sum()
        sums[2] += len(y)
    model.train(was_training)
    loss, correct, n = (float(v) for v in world.sum(sums))
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1), "images": int(n)}
