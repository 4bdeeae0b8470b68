"""The default recipe fitted to the data and the budget: decided once before training, logged, and
written to config.yaml, so that a run can be reproduced from its config alone.

What benchmarks/small_data.py measured on Fashion-MNIST (500 to 5,000 images, 2 to 15 epochs, and the
full set in 12 epochs) decides the defaults here:
- SGD at lr 0.1 with batches of 256 gives a few thousand images about 20 optimizer steps in all; its
  warmup is a handful of steps and training diverges (validation losses in the hundreds, 10-30% test
  accuracy). AdamW at 2e-3 learns within tens of steps, and on the full set in 12 epochs it scores as
  the old SGD recipe did (92.6%).
- Batches shrink for small training sets so that an epoch has about 100 steps: at 256, 450 images are
  one step an epoch.
- Augmentation slows short runs (5 to 15 points lower at 2 to 10 epochs on small sets, 0.7 points lower on
  the full set in 12 epochs) and pays in long ones. Crops and shifts start at 30 epochs (with 1,000 steps or
  more): on the full set flips alone led them at 20 epochs (93.41% against 93.18%), were level at 30
  (93.77 / 93.73%) and behind at 40 (93.69 / 93.87%; benchmarks/time_to_accuracy.py --only switches). From 15, as before, a time budget that
  planned 15-25 epochs on a fast machine trained a worse model than the 12-epoch default (issue 25).
- Flips alone (with test-time views of the mirror and 1-pixel shifts in the final score) cost about a
  point at 2 and 5 epochs and pay from about 8: in 12 epochs, 93.1% against 92.4% on the full set and
  83.9% against 81.6% on 1,000 images (benchmarks/time_to_accuracy.py, small_data.py).
- Small sets get more epochs (about 1,200 steps in all, at most 30): digits 98.9% against 97.7% in 12.
- Images under 16 px are enlarged to 16 for the default network, whose three pooling stages leave an
  8 px image 1 px wide: digits 99.3 ± 0.4% (8 seeds) against 98.2 ± 0.8% (12 seeds) at 8 px, in about
  14 s. Enlarging inside the network instead (a bilinear first layer) gave 98.7 ± 0.6% and was slower.
"""

from __future__ import annotations

import dataclasses
from typing import cast

from imgclf.config import AugmentConfig, Config
from imgclf.data.augment import decided
from imgclf.data.imageset import ImageData

MAX_BATCH = 256
MIN_BATCH = 32
STEPS_PER_EPOCH = 100  # what a batch size is fitted to when the data is small
AUGMENT_FROM_EPOCHS = 30  # crops and shifts: behind flips alone at 20 epochs on the full set, level at 30, ahead at 40
AUGMENT_FROM_STEPS = 1000
FLIPS_FROM_EPOCHS = 8  # flips alone pay from here (12 epochs: +0.7 points on the full set, +2.4 on 1,000 images)
EPOCHS = 12
MIN_SIDE = 16  # px: smaller images are enlarged to this for the default network
MIN_STEPS = 1200  # small sets get more epochs, up to MAX_EPOCHS, so that a run has about this many steps
MAX_EPOCHS = 30


def fitted_batch(n_train: int) -> int:
    """The largest power of two that still gives about STEPS_PER_EPOCH steps, between MIN and MAX_BATCH."""
    batch = MIN_BATCH
    while batch * 2 <= min(MAX_BATCH, n_train // STEPS_PER_EPOCH):
        batch *= 2
    return min(batch, max(1, n_train))


def fitted_epochs(steps: int) -> int:
    """EPOCHS, or more when an epoch is short: digits (1,300 images, 40 steps an epoch) score 97.7% in 12
    epochs and 98.9% in 30 (where crops and shifts start), and 1,000 Fashion-MNIST images 84.0% either way."""
    return min(MAX_EPOCHS, max(EPOCHS, -(-MIN_STEPS // max(1, steps))))


def steps_per_epoch(n_train: int, batch: int) -> int:
    return n_train // batch if n_train > batch else 1  # the last partial batch is dropped when there is more than one


def enlarged(config: Config, data: ImageData) -> ImageData:
    """The data enlarged to MIN_SIDE when its images are smaller, no size was asked for and the network is
    the built-in default (a network the user chose takes the images as they are)."""
    from imgclf.models.registry import default_model_name

    t = config.train
    h, w = data.image_size
    if config.data.image_size is not None or min(h, w) >= MIN_SIDE or t.init_from or t.pretrained or t.weights:
        return data
    if (t.model or default_model_name(data.image_size)) != default_model_name(data.image_size):
        return data
    scale = MIN_SIDE / min(h, w)
    size = (round(h * scale), round(w * scale))
    return data.resized(
        size,
        config.data.resize,
        f"image size {size[0]}x{size[1]} (enlarged from the images' {h}x{w}: "
        f"the default network needs {MIN_SIDE} px or more; --image-size sets it)",
        **config.data.framing(),
    )


def resolve(config: Config, data: ImageData, world_size: int = 1, scale_lr: bool = True) -> tuple[Config, list[str]]:
    """config with every 'decide later' filled in for this data, and a sentence for each adaptation.

    world_size: processes of a data-parallel job. The batch fitted to the data is the global one, shared
    out between them; a --batch-size given is per process, and the global batch is that times the
    processes, with the learning rate scaled by --lr-scaling (none by default; scale_lr=False for a resumed
    run, whose lr was decided when it started)."""
    from imgclf.engine import transfer_recipe
    from imgclf.models.registry import default_model_name

    config, notes = transfer_recipe.decide(config, data)
    t, n = config.train, len(data.train)
    batch = t.batch_size
    lr = t.resolved_lr()
    if batch is None:
        batch = fitted_batch(n)
        if batch < MAX_BATCH:
            notes.append(
                f"batch size {batch}: {n} training images make {steps_per_epoch(n, batch)} steps an epoch "
                f"(batches of {MAX_BATCH} would make {steps_per_epoch(n, MAX_BATCH)}); --batch-size sets it"
            )
        if world_size > 1:
            per = max(1, batch // world_size)
            notes.append(
                f"global batch {per * world_size}: {world_size} processes x {per}; the lr ({lr:g}) is the one for that "
                "global batch, as in one process"
            )
            batch = per
    else:
        if batch * world_size > n:
            shared = f" shared by {world_size} processes" if world_size > 1 else ""
            notes.append(f"batch size {batch} capped to the {n} training images{shared}")
            batch = max(1, n // world_size)
        if world_size > 1:
            how = t.lr_scaling if scale_lr else "none"
            scale = {"none": 1.0, "linear": float(world_size), "sqrt": world_size**0.5}[how]
            rule = {
                "none": f"kept at {lr:g}, as given for the global batch (--lr-scaling linear or sqrt scales it from a batch of {batch})",
                "linear": f"{lr:g} x {world_size} = {lr * scale:g} (linear scaling)",
                "sqrt": f"{lr:g} x sqrt({world_size}) = {lr * scale:g} (square-root scaling)",
            }[how]
            notes.append(f"global batch {batch * world_size}: {world_size} processes x --batch-size {batch}; lr {rule}")
            lr *= scale
    steps = steps_per_epoch(n, batch * world_size)
    epochs = t.epochs
    if epochs is None:
        epochs = fitted_epochs(steps)
        if epochs > EPOCHS:
            notes.append(
                f"{epochs} epochs: {steps} steps an epoch make {epochs * steps:,} steps in all ({EPOCHS} epochs would make "
                f"{EPOCHS * steps:,}); --epochs sets it"
            )
    t = dataclasses.replace(t, epochs=epochs)
    augment, aug_cfg = _augmentation(dataclasses.replace(config, train=t), data, steps, notes)
    model = t.model or (None if t.init_from else default_model_name(data.image_size, t.pretrained))
    train = dataclasses.replace(
        t,
        model=model,
        batch_size=batch,
        lr=lr,
        weight_decay=t.resolved_weight_decay(),
        warmup=t.resolved_warmup(),
        augment=augment,
        tta=bool(augment and aug_cfg.hflip) if t.tta is None else t.tta,
        head_from_probe=bool(t.head_from_probe),
        freeze_stride=t.freeze_stride or 0,
        frozen_norms=bool(t.frozen_norms),
        adapt_norms=bool(t.adapt_norms),
        keep=t.keep or "best",
    )
    if (line := transfer_recipe.suggestion(config, data)) is not None:
        notes.append(line)
    size = cast("tuple[int, int]", tuple(data.image_size))
    data_config = dataclasses.replace(config.data, image_size=size, channels=data.channels, augment=aug_cfg)
    return Config(data=data_config, train=train), notes


def _augmentation(config: Config, data: ImageData, steps: int, notes: list[str]) -> tuple[bool, AugmentConfig]:
    """Whether to augment and how, when left to decide: the full crop/shift and flips for long runs,
    flips alone for medium ones (where flips keep the meaning), nothing for short ones."""
    t, cfg = config.train, config.data.augment
    augment = t.augment
    if augment is None:
        assert t.epochs is not None  # resolve() decided it before asking
        total = steps * t.epochs
        run = f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}, {total:,} step{'s' if total != 1 else ''}"
        augment = t.epochs >= AUGMENT_FROM_EPOCHS and total >= AUGMENT_FROM_STEPS
        flips = data.hflip if cfg.hflip is None else cfg.hflip
        if not augment and t.epochs >= FLIPS_FROM_EPOCHS and flips and cfg.crop_padding is None:
            augment, cfg = True, dataclasses.replace(cfg, crop_padding=0)
            notes.append(
                f"augmentation: flips only in a run of this length ({run}; crops and shifts from "
                f"{AUGMENT_FROM_EPOCHS} epochs and {AUGMENT_FROM_STEPS:,} steps); --no-augment turns it off"
            )
        elif not augment:
            notes.append(
                f"augmentation off: in a run this short ({run}) it slows learning more than it helps (flips from "
                f"{FLIPS_FROM_EPOCHS} epochs, crops from {AUGMENT_FROM_EPOCHS}); --augment turns it on"
            )
    return augment, decided(cfg, data.image_size, data.hflip)
