"""The recipe for a network that starts from pretrained weights (--pretrained, or --weights with a timm
--model): the images its weights were trained on, a head fitted before fine-tuning, photo augmentation.

Decided here, once, before training, each in one line of the log and written to config.yaml like the rest
of the recipe (engine/recipe.py). What benchmarks/transfer.py measured on real colour sets decides the
values below; a setting the user gave is never changed.
- Image size, mean and std are the weights' own (timm's pretrained_cfg): a network sees what it was
  trained on, not the dataset's statistics at a size chosen from its files. Their framing (bicubic, a
  0.875-0.95 centre crop) is not: users' pictures fill their frame, and on clip-art it scored lower.
- The head is fitted on the frozen network's features before the first epoch (engine/probe.py): the loss
  starts below chance, where a random head's first epoch frozen or not learns little at a photo size.
- BatchNorm statistics are measured on the user's training images before the head is fitted
  (engine/norm_stats.py AdaptNorms), then kept while fine-tuning: the head and the fine-tuning see the
  statistics of the images they classify, not of ImageNet's photos.
- Random resized crops (8% of the area or more, as torchvision's) and flips: what fine-tuning on a few
  hundred photos needs to not memorise them.
- The last epoch's weights, not the best on validation: a short cosine run settles at its end, and a few
  dozen validation images pick an epoch by chance (clip-art: 2.1 points higher, mean of 3 seeds).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imgclf.config import Config
from imgclf.data.imageset import ImageData
from imgclf.models.timm_models import WeightsPreprocessing

EPOCHS = 6
# AdamW measured (clip-art 68.5% at 2e-4, 59.9% at 5e-4); SGD (Nesterov, clip-art seed 0): 25.6% at 0.01 (it collapses in
# the first epoch), 61.1% at 3e-3, 58.9% at 1e-3; 3e-3 over 3 seeds 60.9% against AdamW's 62.6%
LR = {"adamw": 2e-4, "adam": 2e-4, "sgd": 3e-3}
MIN_AREA = 0.08  # torchvision's default; 25%+ scored 2.4 points lower on clip-art (3 seeds), 0.6 lower on emoji (2)
FREEZE_STRIDE = 4
# Not the weights' own framing (timm's bicubic and crop_pct 0.875-0.95), mean of 3 seeds: bicubic 59.0% and
# bicubic with a 0.875 centre crop 54.8% on clip-art against 62.6% bilinear on the whole square; 72.1% and 70.5%
# against 71.2% on emoji (64 px, enlarged). The crop loses on both; bicubic gains 1 point there and loses 3.5 here.
INTERPOLATION = "bilinear"
CROP_FRACTION = 1.0


def transfer_model(config: Config) -> str | None:
    """The timm architecture this run fine-tunes from pretrained weights, or None when it does not (built-in
    networks, --init-from, training from scratch)."""
    from imgclf.models.registry import PRETRAINED_DEFAULT, builtin_models

    t = config.train
    if t.init_from or not (t.pretrained or t.weights):
        return None
    name = t.model or (PRETRAINED_DEFAULT if t.pretrained else None)
    return None if name is None or name in builtin_models() else name


def weights_preprocessing(config: Config) -> WeightsPreprocessing | None:
    from imgclf.models.timm_models import weights_preprocessing as of_architecture

    name = transfer_model(config)
    return of_architecture(name) if name else None


def before_loading(config: Config) -> tuple[Config, list[str]]:
    """The data settings the weights decide: their image size, and RGB (gray images become three equal
    channels, as the weights expect), unless the user set them."""
    pre = weights_preprocessing(config)
    if pre is None:
        return config, []
    d, notes = config.data, []
    name = transfer_model(config)
    if d.image_size is None:
        d = dataclasses.replace(d, image_size=pre.size)
        notes.append(f"image size {pre.size[0]}x{pre.size[1]}: the size {pre.tag}'s weights were trained at (--image-size sets it)")
    if d.interpolation is None or d.crop_fraction is None:
        d = dataclasses.replace(
            d, interpolation=d.interpolation or INTERPOLATION, crop_fraction=CROP_FRACTION if d.crop_fraction is None else d.crop_fraction
        )
        whole = "the whole centred square" if d.crop_fraction == 1.0 else f"a {d.crop_fraction:g} centre crop"
        notes.append(
            f"framing: {d.interpolation} resampling, {whole}; {pre.tag}'s weights were evaluated with {pre.interpolation} "
            f"resampling and a {pre.crop_pct:g} centre crop, which scored lower on pictures that fill their frame "
            f"(--interpolation {pre.interpolation} --crop-fraction {pre.crop_pct:g} follow them)"
        )
    if d.channels is None:
        d = dataclasses.replace(d, channels=3)
        notes.append(
            f"3 channels: {name}'s weights take RGB, so gray images are given as three equal channels "
            "(--channels 1 adapts the first layer instead)"
        )
    return dataclasses.replace(config, data=d), notes


def normalised(config: Config, data: ImageData) -> tuple[ImageData, list[str]]:
    """The data with the mean and std the weights were trained with (averaged over RGB for gray input)."""
    pre = weights_preprocessing(config)
    if pre is None:
        return data, []
    mean, std = pre.mean, pre.std
    if data.channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    note = (
        f"normalisation: the mean {_fmt(mean)} and std {_fmt(std)} {pre.tag}'s weights were trained with (the data's "
        f"own are {_fmt(data.mean)} and {_fmt(data.std)})"
    )
    return dataclasses.replace(data, mean=tuple(mean), std=tuple(std)), [note]


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def decide(config: Config, data: ImageData) -> tuple[Config, list[str]]:
    """The settings left to decide, decided for fine-tuning pretrained weights; the config as it was when
    the run does not start from them."""
    if transfer_model(config) is None:
        return config, []
    t, aug, notes = config.train, config.data.augment, []
    name = transfer_model(config)
    adapt: dict[str, Any] = {} if t.adapt_norms is not None else {"adapt_norms": True}
    if t.probe:
        epochs = 0 if t.epochs is None else t.epochs
        t = dataclasses.replace(t, epochs=epochs, augment=bool(t.augment), tta=bool(t.tta), **adapt)
        notes.append(f"linear probe: a head fitted on {name}'s features, no fine-tuning")
        return dataclasses.replace(config, train=t), notes
    changes: dict[str, Any] = dict(adapt)
    if t.epochs is None:
        changes["epochs"] = EPOCHS
        notes.append(f"{EPOCHS} epochs: fine-tuning pretrained weights converges in a few (--epochs sets it)")
    if t.lr is None:
        changes["lr"] = LR[t.optimizer]
        notes.append(f"lr {LR[t.optimizer]:g}: fine-tuning moves pretrained weights less than training from scratch (--lr sets it)")
    if t.head_from_probe is None:
        changes["head_from_probe"] = True
        notes.append(f"the head is fitted on {name}'s features before the first epoch (--no-head-from-probe starts it random)")
    if t.augment is None:
        changes["augment"] = True
        flips = data.hflip if aug.hflip is None else aug.hflip
        crop = MIN_AREA if aug.resized_crop is None else aug.resized_crop
        aug = dataclasses.replace(aug, resized_crop=crop, crop_padding=0 if aug.crop_padding is None else aug.crop_padding)
        notes.append(
            f"augmentation: random resized crops of {crop:.0%} of the area or more{' and flips' if flips else ''}, "
            "as pretrained networks are fine-tuned on photos (--no-augment turns it off)"
        )
    if t.freeze_stride is None:
        changes["freeze_stride"] = FREEZE_STRIDE
        notes.append(
            f"the layers down to 1/{FREEZE_STRIDE} of the image's side keep their pretrained weights: generic low-level "
            "features, and the costliest backward pass (--freeze-stride 0 trains them too)"
        )
    if t.frozen_norms is None:
        changes["frozen_norms"] = True
        adapted = changes.get("adapt_norms", t.adapt_norms)
        which = "measured on your images before the first epoch" if adapted else "of the pretrained weights"
        notes.append(
            f"BatchNorm keeps the statistics {which} while fine-tuning (its scale and shift still learn): batches of "
            "a few dozen photos estimate them worse, and the fitted head was fitted on them (--no-frozen-norms)"
        )
    if t.keep is None:
        changes["keep"] = "last"
        notes.append(
            "the run ends with its last epoch's weights: a short cosine run settles there, and the best epoch on a few "
            "dozen validation images is chance (--keep best)"
        )
    if t.tta is None:
        changes["tta"] = False
    t = dataclasses.replace(t, **changes)
    return Config(data=dataclasses.replace(config.data, augment=aug), train=t), notes


SUGGEST_UNDER = 50_000  # training images: past this, training from scratch catches up with pretrained features
SUGGEST_FROM_SIDE = 64  # px: colour images this large look enough like photos for ImageNet features to pay


def suggestion(config: Config, data: ImageData) -> str | None:
    """One line for a small folder of colour pictures trained from scratch: pretrained weights usually win
    there by a wide margin (benchmarks/transfer.py), and nothing else would tell the user."""
    t = config.train
    if t.pretrained or t.weights or t.init_from or t.probe or data.channels != 3:
        return None
    if min(data.image_size) < SUGGEST_FROM_SIDE or len(data.train) >= SUGGEST_UNDER:
        return None
    return (
        f"{len(data.train):,} colour images of {data.image_size[0]}x{data.image_size[1]} px trained from scratch: on sets like "
        "this, a network starting from pretrained ImageNet weights usually scores far higher (README 'Your own photos'); "
        "try --pretrained --model efficientnet_lite0, or --weights FILE --model NAME for weights on disk"
    )
