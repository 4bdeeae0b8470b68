"""Identical and near-identical images, found from the decoded arrays.

Exact: a hash of each image's decoded pixels. Near: the same picture re-encoded, shifted by a pixel,
or a little brighter. A perceptual hash cannot tell those from different items on small images: on
28x28 Fashion-MNIST a 64-bit DCT hash puts a 1-pixel shift 10 to 16 bits away while 8% of distinct
images have another within 4 bits, and plain thumbnails put a shifted copy behind thousands of
look-alikes. So near duplicates are found in two steps (benchmarks/audit.py measures both):
- candidates: the 64 closest images by the magnitude spectrum of the Hann-windowed gray image, which a
  shift barely changes (a shifted copy ranks at most 54th among 60,000 Fashion-MNIST images);
- check: the RMS difference in gray levels of the central part, at the best of 9 shifts (up to 1 px)
  and after matching brightness and contrast, on a 28x28 version (13x13 after pooling).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.data.imageset import ImageSet

CHUNK = 4096  # images read from the memory map at a time
SIDE = 28  # images are compared at this size (smaller images at their own)
POOLED = 13  # side of the compared central part after 2x2 pooling
FREQUENCIES = 8  # lowest spatial frequencies in the candidate descriptor, per axis
CANDIDATES = 64
# Largest RMS difference (gray levels, after the best shift and brightness/contrast match) of a near
# duplicate. Measured on Fashion-MNIST (benchmarks/audit.py): re-encoded JPEGs (quality 50 and up),
# 1-pixel shifts and brightness changes of 10-20% stay at or below 5.9; no two of 2,000 distinct
# images come closer than 9.4.
NEAR_THRESHOLD = 7.0
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def row_hashes(images: ImageSet) -> list[bytes]:
    """A 128-bit hash of each image's pixels, streamed so that a memory-mapped split stays on disk."""
    out = []
    for a in range(0, len(images), CHUNK):
        block = np.ascontiguousarray(images.take(np.arange(a, min(len(images), a + CHUNK))))
        out += [hashlib.blake2b(row.data, digest_size=16).digest() for row in block]
    return out


def exact_groups(splits: dict[str, ImageSet]) -> list[list[tuple[str, int]]]:
    """Groups of two or more identical images as (split, position), the first in split order kept first."""
    by_hash: dict[bytes, list[tuple[str, int]]] = {}
    for name, part in splits.items():
        for pos, h in enumerate(row_hashes(part)):
            by_hash.setdefault(h, []).append((name, pos))
    return [group for group in by_hash.values() if len(group) > 1]


@dataclass
class Descriptors:
    """What the near-duplicate search keeps of each image of one split."""

    spectrum: torch.Tensor  # N x D, unit length: candidates are found by cosine on this
    central: torch.Tensor  # N x V x E, unit-length centred views (V = 9 shifts, or 1 unshifted)
    spread: torch.Tensor  # N x V, the RMS deviation of each view from its mean, in gray levels

    def unshifted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The view without a shift and its spread: what a split is compared by when it is the base."""
        i = SHIFTS.index((0, 0)) if self.central.shape[1] == len(SHIFTS) else 0
        return self.central[:, i], self.spread[:, i]


def _small(x: torch.Tensor) -> torch.Tensor:
    side = min(SIDE, x.shape[-2], x.shape[-1])
    return F.interpolate(x, size=(side, side), mode="area") if x.shape[-2:] != (side, side) else x


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    gray = x.mean(1)
    side = gray.shape[-1]
    gray = gray - gray.mean((1, 2), keepdim=True)
    window = torch.hann_window(side + 2, periodic=False)[1:-1]  # fades the border, where a shift adds or loses content
    mag = torch.fft.rfft2(gray * (window[:, None] * window[None])).abs()
    k = min(FREQUENCIES, side // 2)
    low = torch.cat([mag[:, :k, :k].flatten(1), mag[:, side - k + 1 :, 1:k].flatten(1)], 1)
    return F.normalize(low.sqrt(), dim=1)  # sqrt: the few strongest frequencies must not decide alone


def _views(x: torch.Tensor, shifted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    side = x.shape[-1]
    inner = side - 2
    offsets = SHIFTS if shifted else [(0, 0)]
    views = torch.stack([x[..., 1 + dy : 1 + dy + inner, 1 + dx : 1 + dx + inner] for dy, dx in offsets], 1)
    n, v = views.shape[:2]
    flat = F.adaptive_avg_pool2d(views.flatten(0, 1), min(POOLED, inner)).flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    spread = flat.norm(dim=1) / flat.shape[1] ** 0.5
    return F.normalize(flat, dim=1).view(n, v, -1), spread.view(n, v)


def describe(images: ImageSet, shifted: bool) -> Descriptors:
    """Descriptors of a split; shifted=True for the side that is searched with shifts (the queries)."""
    spectra, centrals, spreads = [], [], []
    for a in range(0, len(images), CHUNK):
        block = torch.from_numpy(np.ascontiguousarray(images.take(np.arange(a, min(len(images), a + CHUNK)))))
        x = _small(block.float())
        spectra.append(_spectrum(x))
        central, spread = _views(x, shifted)
        centrals.append(central)
        spreads.append(spread)
    return Descriptors(torch.cat(spectra), torch.cat(centrals), torch.cat(spreads))


def near_pairs(
    queries: Descriptors, base: Descriptors, skip: set[tuple[int, int]] | None = None, threshold: float = NEAR_THRESHOLD
) -> list[tuple[int, int, float]]:
    """(query, base, distance) for each query image whose closest base image is within threshold.

    skip: (query, base) pairs not to report (exact copies, already reported as such)."""
    found: list[tuple[int, int, float]] = []
    k = min(CANDIDATES, len(base.spectrum))
    if not len(queries.spectrum) or not k:
        return found
    base_central, base_spread = base.unshifted()
    for a in range(0, len(queries.spectrum), 1024):
        q = slice(a, a + 1024)
        cand = (queries.spectrum[q] @ base.spectrum.T).topk(k, dim=1).indices  # n x k
        cos = torch.einsum("nve,nke->nvk", queries.central[q], base_central[cand])
        scale = torch.maximum(queries.spread[q][:, :, None], base_spread[cand][:, None, :])
        dist = (scale * (1 - cos.clamp(-1, 1) ** 2).clamp_min(0).sqrt()).amin(1)  # n x k: the best shift
        for i in torch.nonzero(dist.amin(1) <= threshold).flatten().tolist():
            for j in torch.argsort(dist[i]).tolist():  # the closest that is not an exact copy
                qi, bi, d = a + i, int(cand[i, j]), float(dist[i, j])
                if d > threshold:
                    break
                if skip is None or (qi, bi) not in skip:
                    found.append((qi, bi, round(d, 2)))
                    break
    return found
