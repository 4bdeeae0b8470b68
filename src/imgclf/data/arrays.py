"""In-memory arrays as a source: any common layout and value range, detected or stated."""

from __future__ import annotations

import numpy as np

from imgclf.errors import DataError

LAYOUTS = ("NCHW", "NHWC", "NHW")


def _channel_axis(shape: tuple[int, ...]) -> int | None:
    """1 for N x C x H x W, 3 for N x H x W x C, None when the shape cannot tell."""
    _, a, b, c = shape
    small_a, small_c = a <= 4, c <= 4
    if small_a != small_c:
        return 1 if small_a else 3
    if not small_a and not small_c:  # many channels (multispectral): the axis smaller than both others
        if a < b and a < c:
            return 1
        if c < a and c < b:
            return 3
    return None


def to_nchw_uint8(images, layout: str | None = None) -> tuple[np.ndarray, str]:
    """A numpy array or torch tensor of images as uint8 N x C x H x W, and the layout it had."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if layout is not None and layout.upper() not in LAYOUTS:
        raise DataError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}.")
    layout = layout.upper() if layout else None
    if x.ndim == 3:
        if layout not in (None, "NHW"):
            raise DataError(f"layout={layout} does not fit a 3-dimensional array of shape {x.shape}; use layout='NHW'.")
        x, layout = x[:, None], "NHW"
    elif x.ndim == 4:
        axis = {"NCHW": 1, "NHWC": 3}.get(layout or "", None) if layout else _channel_axis(x.shape)
        if axis is None:
            raise DataError(
                f"cannot tell whether images of shape {x.shape} are N x C x H x W or N x H x W x C; pass layout='NCHW' or layout='NHWC'."
            )
        layout = "NCHW" if axis == 1 else "NHWC"
        if axis == 3:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"images must be N x H x W, N x H x W x C or N x C x H x W; got shape {x.shape}.")
    return np.ascontiguousarray(_to_uint8(x)), layout


def _to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = float(x.min()), float(x.max())
    if np.issubdtype(x.dtype, np.floating):
        if lo < 0 or hi > 255 or not np.isfinite(hi):
            raise DataError(f"float images must lie in [0, 1] or [0, 255]; these range over [{lo:g}, {hi:g}]: rescale them first.")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.dtype == np.bool_:
            return x.astype(np.uint8) * 255
        if lo < 0 or hi > 255:
            raise DataError(f"integer images must lie in [0, 255]; these range over [{lo:g}, {hi:g}]: convert them to uint8 first.")
        return x.astype(np.uint8)
    raise DataError(f"images of dtype {x.dtype} are not supported; pass uint8, or floats in [0, 1] or [0, 255].")


def labels_and_classes(labels, classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Integer labels indexing the class names; names sorted (numerically for integers) when not given."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be one-dimensional (one per image); got shape {y.shape}.")
    if classes is not None:
        classes = [str(c) for c in classes]
        if not np.issubdtype(y.dtype, np.integer):
            index: dict[str | int, int] = {c: i for i, c in enumerate(classes)}
            unknown = sorted({str(v) for v in y} - set(index))
            if unknown:
                raise DataError(f"labels {unknown[:5]} are not among classes={classes}; add them to classes.")
            return np.array([index[str(v)] for v in y], dtype=np.int64), classes
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"integer labels must lie in 0..{len(classes) - 1} for {len(classes)} classes; got {y.min()}..{y.max()}.")
        return y.astype(np.int64), classes
    if np.issubdtype(y.dtype, np.integer):
        values = sorted(int(v) for v in np.unique(y))
        if values == list(range(len(values))):
            return y.astype(np.int64), [str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}
        return np.array([index[int(v)] for v in y], dtype=np.int64), [str(v) for v in values]
    names = sorted({str(v) for v in y})
    index = {c: i for i, c in enumerate(names)}
    return np.array([index[str(v)] for v in y], dtype=np.int64), names
