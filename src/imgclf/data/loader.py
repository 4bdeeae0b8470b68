"""Batches on the training device from a uint8 split: shuffled, sharded, normalised and augmented there.

The images go to the device once (when they fit) as uint8, a quarter of their float size; each step then
indexes a batch, converts and normalises it in place. Larger-than-memory splits stream from their
memory map batch by batch instead.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from imgclf.config import AugmentConfig
from imgclf.data.augment import Augment, alternate_flip_mask
from imgclf.data.imageset import ImageSet

RESIDENT_SHARE = 0.25  # of free device (or host) memory that a resident split may take


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**31


def fits_resident(nbytes: int, free_bytes: int) -> bool:
    """Whether a split's uint8 pixels live on the device for the whole run (one copy, then batches are
    indexed there) rather than streamed from the memory map batch by batch: when they take at most
    RESIDENT_SHARE of the device's free memory, leaving the rest to the model, its activations and the
    other splits."""
    return nbytes <= RESIDENT_SHARE * free_bytes


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2**63)


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The seed of one batch's augmentation: a function of where the batch stands, not of what came
    before it, so that an epoch resumed at batch k augments exactly as an uninterrupted one."""
    return (epoch_seed(seed, epoch, rank) * 1_000_033 + batch * 7_919 + 1) % (2**63)


def scale_shift(mean, std, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation as one multiply-add on 0..255 pixels: x * scale + shift == (x / 255 - mean) / std.
    The one place it is written: training's loaders and every way into a trained model use it."""
    std_t = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1) / std_t
    return scale.to(device), shift.to(device)


class DeviceLoader:
    """Iterates (images float N x C x H x W normalised, labels int64) batches of one split on `device`.

    train=True shuffles (a new order every epoch, from seed and epoch) and, given an AugmentConfig,
    augments; rank/world_size give each process a disjoint shard of every epoch's order, together all of
    it once, and in training the same number of batches on every rank (data-parallel steps must pair
    up). sampler="balanced" draws an epoch's images with replacement so that every class is drawn
    equally often (for imbalanced data). resume_within_epoch() continues an epoch cut off after k batches.
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        *,
        mean,
        std,
        device="cpu",
        train: bool = False,
        augment: AugmentConfig | None = None,
        hflip_default: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        resident: bool | None = None,
        channels_last: bool = False,
        sampler: str = "shuffle",
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.split, self.batch_size, self.train = images, int(batch_size), train
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.channels_last, self.epoch = channels_last, 0
        self._resume: dict | None = None  # where the next epoch's iteration starts (resume_within_epoch)
        self._current: dict | None = None  # how the epoch being iterated was resumed
        self._scale, self._shift = scale_shift(mean, std, self.device)
        self.augment = Augment.resolve(augment, images.images.shape[2:], hflip_default) if train and augment else None
        nbytes = len(images) * int(np.prod(images.images.shape[1:]))
        self.resident = fits_resident(nbytes, _free_bytes(self.device)) if resident is None else resident
        self._images = torch.from_numpy(images.array()).to(self.device) if self.resident else None
        self._labels = torch.from_numpy(images.labels).to(self.device)
        self._weights = None  # the balanced sampler's draw weight per image: 1 / its class's count
        if sampler == "balanced":
            counts = np.bincount(images.labels)
            self._weights = torch.from_numpy(1.0 / counts[images.labels]).float()
        self._phase = None
        if self.augment is not None and self.augment.alternate_flips:
            gen = torch.Generator().manual_seed(epoch_seed(seed, -1))
            self._phase = (torch.rand(len(images), generator=gen) < 0.5).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration gives (as for resuming a run)."""
        self.epoch = epoch

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """Every position of the split in an epoch's order, all ranks together."""
        n = len(self.split)
        if not self.train:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch if epoch is None else epoch))
        if self._weights is not None:
            return torch.multinomial(self._weights, n, replacement=True, generator=gen)
        return torch.randperm(n, generator=gen)

    def positions(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's positions in the split for an epoch, in the order they are served."""
        return self.order(epoch)[self.rank :: self.world_size]

    def _batches_of(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        if self.train:  # the smallest shard's count on every rank: each step is one step of every rank
            return self._batches_of(len(self.split) // self.world_size)
        return self._batches_of(len(range(self.rank, len(self.split), self.world_size)))

    def resume_within_epoch(self, served: torch.Tensor, world_size: int, batch_size: int, batches: int) -> None:
        """The next iteration continues the current epoch, of which the positions in `served` (a mask over
        the split) were served, `batches` batches of `batch_size` to each of `world_size` ranks: with the
        same world and batch exactly as the epoch would have gone on; otherwise the images not served yet,
        shared out anew."""
        self._resume = {
            "served": served.bool().cpu(),
            "world_size": int(world_size),
            "batch_size": int(batch_size),
            "batches": int(batches),
        }

    def _plan(self, rank: int, resume: dict | None) -> tuple[torch.Tensor, int, int, int]:
        """(rows `rank` serves, the first batch number, the batch count, an offset of the augmentation
        seeds' batch numbers) of an epoch, as resumed by `resume` (None: from its start)."""
        if resume is None:
            return self.order()[rank :: self.world_size], 0, len(self), 0
        if (resume["world_size"], resume["batch_size"]) == (self.world_size, self.batch_size):
            return self.order()[rank :: self.world_size], resume["batches"], len(self), 0
        rest = self.order()[~resume["served"][self.order()]] if self._weights is None else self._rest_drawn(resume)
        return rest[rank :: self.world_size], 0, self._batches_of(len(rest) // self.world_size), 1_000_000

    def _rest_drawn(self, resume: dict) -> torch.Tensor:
        """The balanced sampler draws with replacement, so a position may come twice and a mask cannot say
        what was served: the rest of the epoch's draw after the batches served (rank r served draws r,
        r + W, ...: together the first batches x batch x W)."""
        return self.order()[resume["batches"] * resume["batch_size"] * resume["world_size"] :]

    def served(self, batches: int) -> torch.Tensor:
        """The mask of the split's positions served to all ranks after `batches` batches of the epoch now
        being iterated (numbered as it numbers them): what a checkpoint within the epoch records."""
        resume = self._current
        mask = torch.zeros(len(self.split), dtype=torch.bool)
        if resume is not None and (resume["world_size"], resume["batch_size"]) != (self.world_size, self.batch_size):
            mask |= resume["served"]
        for rank in range(self.world_size):
            rows = self._plan(rank, resume)[0]
            mask[rows[: batches * self.batch_size]] = True
        return mask

    def batches_left(self) -> tuple[int, int]:
        """(first batch number, batch count) of the next iteration: (0, len()) unless an epoch is resumed."""
        _, first, count, _ = self._plan(self.rank, self._resume)
        return first, count

    def _batch(self, rows: torch.Tensor, rows_on_device: torch.Tensor) -> torch.Tensor:
        if self.resident:
            assert self._images is not None  # resident: the split was put on the device in __init__
            return self._images[rows_on_device]
        x = torch.from_numpy(self.split.take(rows.numpy()))
        return x.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x.to(self.device)

    def __iter__(self):
        self._current, self._resume = self._resume, None
        rows_all, first, count, offset = self._plan(self.rank, self._current)
        gen = torch.Generator(device=self.device) if self.augment is not None else None
        for b in range(first, count):
            if gen is not None:
                gen.manual_seed(batch_seed(self.seed, self.epoch, self.rank, b + offset))
            rows = rows_all[b * self.batch_size : (b + 1) * self.batch_size]
            rows_on_device = rows.to(self.device, non_blocking=True)
            yield self._served(rows, rows_on_device, gen, self.epoch), self._labels[rows_on_device]
        if self.train:
            self.epoch += 1

    def _served(self, rows: torch.Tensor, rows_on_device: torch.Tensor, gen, epoch: int) -> torch.Tensor:
        """A batch as training sees it: augmented (when on), normalised, in the memory layout asked for."""
        x = self._batch(rows, rows_on_device)
        if self.augment is not None:
            mirrored = alternate_flip_mask(self._phase[rows_on_device], epoch) if self._phase is not None else None
            x = self.augment.on_uint8(x, gen, mirrored)
        x = x.float().mul_(self._scale).add_(self._shift)
        if self.augment is not None:
            x = self.augment.on_float(x, gen)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def sample(self, images: int, seed: int = 0):
        """Batches of up to `images` of this rank's images as training sees them (augmented alike), the
        same images and the same augmentation every call (a fixed draw from seed): what BatchNorm's
        statistics are measured on (engine/norm_stats.py). Batches of one image are left out, as a norm
        cannot take statistics of one."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed + seed, -2, self.rank))
        # The same count on every rank (the smallest shard's), so that norms that synchronise see as many batches.
        own = torch.arange(self.rank, len(self.split), self.world_size)[: len(self.split) // self.world_size]
        rows = own[torch.randperm(len(own), generator=gen)[:images]]
        aug_gen = None
        if self.augment is not None:
            aug_gen = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed + seed, -2, self.rank) + 1)
        for b in range(0, len(rows), self.batch_size):
            chunk = rows[b : b + self.batch_size]
            if len(chunk) < 2:
                break
            yield self._served(chunk, chunk.to(self.device, non_blocking=True), aug_gen, self.epoch)
