"""BatchNorm statistics measured again for the weights at hand before each validation (PreciseBN, as
detectron2 and fvcore do it).

Why: a norm's running averages trail weights that move fast, and start from mean 0 and variance 1. In a
short run they never catch up: 2,000 Fashion-MNIST images at a tutorial's batch of 128 make 16 steps an
epoch, and the default network (which normalises after its max-pools, whose outputs are far from mean 0)
scored 10% on validation after its first epoch while training was at 51%, and 42% and 19% on test after
two (two seeds). Measured again on 2,048 training images, validation follows training; long runs, whose
averages had caught up, are unchanged (benchmarks/time_to_accuracy.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from imgclf.data.loader import DeviceLoader
from imgclf.engine.bundle import unwrap
from imgclf.engine.callbacks import Callback
from imgclf.models.features import BATCH, cache_key, read_arrays, write_arrays

log = logging.getLogger("imgclf")
CALIBRATION_IMAGES = 2048  # training images the statistics are measured on: a few forward passes an epoch
ADAPT_DRAW_SEED = 0  # the fixed draw of training images a large set's statistics are adapted to
_NORMS = (nn.modules.batchnorm._BatchNorm,)


# Norms that track running statistics: their running_mean, running_var and num_batches_tracked are tensors (torch types
# them Tensor | None, None in the norms that do not track them).
def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[torch.Tensor], autocast: Callable | None = None) -> int:
    """Replace every BatchNorm's running mean and variance with their plain average over `batches` (each
    norm in training mode, every other layer, dropout included, in evaluation mode); the number of batches
    used. autocast: the training's precision context, if any. A model without BatchNorm, or no batches,
    is left as it was."""
    norms = batch_norms(model)
    if not norms:
        return 0
    was_training = model.training
    kept = [
        (
            m.momentum,
            cast(Tensor, m.running_mean).clone(),
            cast(Tensor, m.running_var).clone(),
            cast(Tensor, m.num_batches_tracked).clone(),
        )
        for m in norms
    ]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches seen since the reset
        m.train()
    used = 0
    try:
        for x in batches:
            with autocast() if autocast is not None else contextlib.nullcontext():
                model(x)
            used += 1
    finally:
        for m, (momentum, mean, var, count) in zip(norms, kept):
            m.momentum = momentum
            if not used:
                (
                    cast(Tensor, m.running_mean).copy_(mean),
                    cast(Tensor, m.running_var).copy_(var),
                    cast(Tensor, m.num_batches_tracked).copy_(count),
                )
        model.train(was_training)
    return used


class AdaptNorms(Callback):
    """Before the first epoch: BatchNorm statistics measured on the training images, as they are (no
    augmentation), replacing the ones the pretrained weights brought (AdaBN; Li et al., 2016).

    Why: ImageNet's statistics describe photos. A folder of drawings on white, or of emoji, shifts every
    layer's activations away from them, and a head fitted on features normalised by the wrong statistics
    learns the shift. Measured on the clip-art set (benchmarks/transfer.py): the probe alone scored 2.5
    points higher with the statistics of its own images (seed 0), the fine-tuned run 0.5 higher (3 seeds),
    the probe on emoji 0.45 higher (seed 0). One forward pass of up to CALIBRATION_IMAGES
    images; the statistics are cached like the features (keyed by the weights, the normalisation and the
    images), so a second run on the same data reads them back. A resumed run keeps what it trained with."""

    key = "adapt_norms"

    def __init__(self, cache_dir) -> None:
        self.cache_dir = cache_dir
        self.result: dict = {}

    def on_fit_start(self, trainer) -> None:
        if self.result or trainer.step:
            return
        model, data = unwrap(trainer.model), trainer.data
        norms = batch_norms(model)
        if not norms:
            self.result = {"norms": 0}
            return
        start = time.perf_counter()
        images = data.train
        if len(images) > CALIBRATION_IMAGES:
            draw = torch.randperm(len(images), generator=torch.Generator().manual_seed(ADAPT_DRAW_SEED))[:CALIBRATION_IMAGES]
            images = images.subset(draw.sort().values.numpy())
        cached = _adapted(model, images, data.mean, data.std, trainer.device, self.cache_dir, trainer.channels_last)
        if trainer.ema is not None:
            trainer.ema.module.load_state_dict(model.state_dict())
        seconds = time.perf_counter() - start
        self.result = {"norms": len(norms), "images": len(images), "cached": cached, "seconds": round(seconds, 2)}
        how = "read from the cache" if cached else f"measured on {len(images):,} training images in {seconds:.1f} s"
        log.info(
            "BatchNorm statistics of %d layers %s (the pretrained ones describe the weights' own images; --no-adapt-norms keeps them)",
            len(norms),
            how,
        )

    def state_dict(self) -> dict:
        return dict(self.result)

    def load_state_dict(self, state: dict) -> None:
        self.result = dict(state)


def _adapted(model: nn.Module, images, mean, std, device: torch.device, cache_dir, channels_last: bool) -> bool:
    """Measure the statistics of `images` into the model's norms, or read them back from
    cache_dir/norms/<key>.npz; whether they came from the cache."""
    norms = batch_norms(model)
    path = Path(cache_dir) / "norms" / f"{cache_key(model, {'train': images}, mean, std)}.npz"
    stored = read_arrays(path, [f"{what}{i}" for i in range(len(norms)) for what in ("mean", "var")])
    if stored is not None:
        try:
            with torch.no_grad():
                for i, norm in enumerate(norms):
                    cast(Tensor, norm.running_mean).copy_(torch.from_numpy(stored[f"mean{i}"]))
                    cast(Tensor, norm.running_var).copy_(torch.from_numpy(stored[f"var{i}"]))
            return True
        except RuntimeError:  # of other shapes: measured again
            pass
    loader = DeviceLoader(images, BATCH, mean=mean, std=std, device=device, channels_last=channels_last)
    recalibrate(model, (x for x, _ in loader if len(x) > 1))
    write_arrays(
        path, {f"{what}{i}": getattr(norm, f"running_{what}").cpu().numpy() for i, norm in enumerate(norms) for what in ("mean", "var")}
    )
    return False
