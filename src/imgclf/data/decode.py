"""Turning one image (a file, or its bytes as uploaded) into a uint8 C x H x W array of the dataset's size
and channels.

Files and uploads go through the same checks (accepted formats, decompression bombs, empty, truncated
and corrupt images), so a server is exactly as hard to break with bytes as training is with a folder.
This module imports only Pillow, numpy and the standard library: it runs in the decoding worker processes.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.data.noise import NoiseCatcher

if TYPE_CHECKING:
    from PIL import ImageFile

GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_EXIF_ORIENTATION = 0x0112


# Pillow's names for the formats of walk.IMAGE_EXTENSIONS (JPEG also opens a phone's MPO, a JPEG with a
# second frame; PPM also reads PGM and PBM). Only these parsers ever see a file's bytes.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

Source = str | bytes  # a path, or an image's encoded bytes


class BadImage(Exception):
    """An input that cannot be used as an image; the message is the reason shown to the user, and kind
    what sort of reason it is, for a server's status code: "empty", "format" (a real image in a format
    that is not accepted), "too_large" (more pixels than allowed), "unreadable" (the file system said
    no) or "corrupt" (everything else: not an image, truncated, broken)."""

    def __init__(self, reason: str, kind: str = "corrupt"):
        super().__init__(reason)
        self.kind = kind


def _format_name(data) -> str | None:
    """The format of an image Pillow can read but we do not accept, for the error; None if not an image.
    Only the header is parsed (Image.open reads no pixels), so no extra decoder runs on the data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(data) as img:
                return img.format
    except Exception:
        return None


def _open(source: Source, max_pixels: int | None = None) -> Image.Image:
    """The opened image (header read, no pixels), or BadImage with why not."""
    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    if in_memory and not len(source):
        raise BadImage("empty file (0 bytes)", "empty")
    data = io.BytesIO(cast(bytes, source)) if in_memory else source  # in_memory: bytes, bytearray or memoryview
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; a bomb is a bomb either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(data, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"decompression bomb: more pixels than Pillow's limit of {Image.MAX_IMAGE_PIXELS}", "too_large") from None
    except UnidentifiedImageError:
        # The size is asked only now: one stat call fewer per good file.
        if not in_memory and os.path.getsize(source) == 0:
            raise BadImage("empty file (0 bytes)", "empty") from None
        if in_memory:
            cast(io.BytesIO, data).seek(0)
        other = _format_name(data)
        if other:
            raise BadImage(
                f"a {other} image, which is not accepted; convert it to PNG or JPEG (accepted: {', '.join(FORMATS)})", "format"
            ) from None
        raise BadImage("not an image, or corrupt beyond recognition") from None
    except PermissionError:
        raise BadImage("unreadable: permission denied", "unreadable") from None
    except OSError as err:
        if err.errno is None:  # raised by a Pillow decoder, not by the file system
            raise BadImage(f"corrupt image: {err}") from None
        raise BadImage(f"unreadable: {err.strerror or err}", "unreadable") from None
    if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
        w, h = img.size
        img.close()
        raise BadImage(f"{w}x{h} pixels, more than the {max_pixels:,} allowed; send a smaller image", "too_large")
    return img


def _palette_is_gray(img: Image.Image) -> bool:
    palette = getattr(img, "palette", None)
    raw = getattr(palette, "palette", None)
    mode = cast(str, getattr(palette, "rawmode", None) or getattr(palette, "mode", ""))
    if not isinstance(raw, (bytes, bytearray)) or not mode.startswith("RGB"):
        return False
    stride = len(mode)
    colors = np.frombuffer(bytes(raw[: len(raw) // stride * stride]), np.uint8).reshape(-1, stride)[:, :3]
    return bool(len(colors)) and bool((colors == colors[:, :1]).all())


def probe(source: Source) -> tuple[int, int, bool, str]:
    """Height, width (after EXIF rotation), whether it has colour, and its mode, from the header alone."""
    with _open(source) as img:
        w, h = img.size
        try:
            # Pillow gives a TIFF's upright size at open (it rotates TIFFs itself when loading).
            if img.format != "TIFF" and img.getexif().get(_EXIF_ORIENTATION) in _SWAPS_SIDES:
                w, h = h, w
        except Exception:  # a broken EXIF block must not cost the image; the orientation is then unknown
            pass
        if img.mode in GRAY_MODES:
            color = False
        elif img.mode in ("P", "PA"):
            color = not _palette_is_gray(img)
        else:
            color = True
        return h, w, color, img.mode


# Formats whose orientation Pillow reads only from these info keys once the image is loaded (EXIF,
# ImageMagick's text chunk, XMP): without any of them there is no orientation, and asking getexif()
# would cost as much as decoding a small PNG. TIFF keeps it in its own tags, so it is always asked.
_EXIF_IN_INFO = {"JPEG", "MPO", "PNG", "WEBP"}
_ORIENTATION_KEYS = {"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"}


def _has_orientation(img: Image.Image) -> bool:
    """Whether EXIF asks for a rotation or flip (exif_transpose copies every image, so ask first).

    Call it after load(): a PNG may keep its EXIF chunk after the pixels."""
    if img.format in _EXIF_IN_INFO and _ORIENTATION_KEYS.isdisjoint(img.info):
        return False
    try:
        return img.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
    except Exception:  # a broken EXIF block: treated as no orientation, as exif_transpose would
        return False


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images on white, the background a person sees them on."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if not has_alpha:
        return img
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_uint8(img: Image.Image) -> Image.Image:
    """8-bit L or RGB from any mode; 16-bit and float images are rescaled, not clipped."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        elif img.mode != "F":
            a = a / 257.0  # 16-bit range onto 8-bit
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    img = _flatten_alpha(img)
    if img.mode in ("L", "RGB"):
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "P":
        return img.convert("RGB")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV


# Pillow's filters, antialiased when shrinking (Image.Resampling: the values of Image.BILINEAR and Image.BICUBIC)
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def fit(
    img: Image.Image, size: tuple[int, int] | None, resize: str, interpolation: str = "bilinear", crop_fraction: float = 1.0
) -> Image.Image:
    """Resize keeping the aspect ratio, then centre-crop (resize='crop') or pad with black ('pad').

    crop_fraction < 1 (crop only) resizes to size / crop_fraction first, so the crop keeps that share of
    the side: timm's crop_pct (224 out of 256 for 0.875), how most ImageNet weights were evaluated."""
    if size is None:
        return img
    th, tw = size
    w, h = img.size
    if (h, w) == (th, tw) and crop_fraction == 1.0:
        return img
    grow = max if resize == "crop" else min
    scale = grow(tw / w, th / h) / (crop_fraction if resize == "crop" else 1.0)
    nw, nh = max(tw if resize == "crop" else 1, round(w * scale)), max(th if resize == "crop" else 1, round(h * scale))
    img = img.resize((nw, nh), INTERPOLATIONS[interpolation])
    if resize == "crop":
        left, top = (nw - tw) // 2, (nh - th) // 2
        return img.crop((left, top, left + tw, top + th))
    canvas = Image.new(img.mode, (tw, th), 0)
    canvas.paste(img, ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def decode(
    source: Source,
    channels: int,
    size: tuple[int, int] | None,
    resize: str = "crop",
    max_pixels: int | None = None,
    interpolation: str = "bilinear",
    crop_fraction: float = 1.0,
) -> np.ndarray:
    """One image (a path or its bytes) as a uint8 C x H x W array; raises BadImage with the reason when
    it cannot be used. max_pixels bounds width x height below Pillow's own bomb limit."""
    return prepare(_open(source, max_pixels), channels, size, resize, interpolation, crop_fraction)


def read(
    source: Source,
    channels: int,
    size: tuple[int, int] | None,
    resize: str = "crop",
    max_pixels: int | None = None,
    interpolation: str = "bilinear",
    crop_fraction: float = 1.0,
) -> np.ndarray | BadImage:
    """decode() that never raises: the pixels, or the BadImage saying why not. Hostile bytes can make
    Pillow raise anything; whatever it is becomes a "corrupt" reason, so one input never ends a run or
    a server."""
    try:
        return decode(source, channels, size, resize, max_pixels, interpolation, crop_fraction)
    except BadImage as bad:
        return bad
    except Exception as err:
        return BadImage(f"corrupt image: {type(err).__name__}: {err}"[:300])


def prepare(
    original: Image.Image,
    channels: int,
    size: tuple[int, int] | None,
    resize: str = "crop",
    interpolation: str = "bilinear",
    crop_fraction: float = 1.0,
) -> np.ndarray:
    """An opened image (closed afterwards) as uint8 C x H x W: orientation, mode, channels, size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if original.format == "TIFF":
                # Pillow 13 memory-maps a one-strip uncompressed TIFF at its upright size, which scrambles
                # orientations 5-8 (it rotates TIFFs itself in load()); without a file name it reads the
                # strip at the stored size and then rotates it correctly.
                cast("ImageFile.ImageFile", original).filename = ""  # a TIFF: opened from a file, an ImageFile
            original.load()
            oriented = ImageOps.exif_transpose(original) if _has_orientation(original) else original
            img = _to_uint8(oriented)
            target = "L" if channels == 1 else "RGB"
            img = fit(img if img.mode == target else img.convert(target), size, resize, interpolation, crop_fraction)
            a = np.asarray(img, dtype=np.uint8)
    except BadImage:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadImage(f"decompression bomb: more pixels than Pillow's limit of {Image.MAX_IMAGE_PIXELS}", "too_large") from None
    except (OSError, SyntaxError, ValueError) as err:
        text = str(err)
        reason = "truncated image" if "truncated" in text else f"corrupt image: {text or type(err).__name__}"
        raise BadImage(reason) from None
    finally:
        original.close()
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def fit_array(
    image: np.ndarray, size: tuple[int, int] | None, resize: str = "crop", interpolation: str = "bilinear", crop_fraction: float = 1.0
) -> np.ndarray:
    """fit() for a uint8 C x H x W array with any number of channels."""
    if size is None or (image.shape[1:] == tuple(size) and crop_fraction == 1.0):
        return image
    how = (size, resize, interpolation, crop_fraction)
    if image.shape[0] == 3:
        return np.asarray(fit(Image.fromarray(image.transpose(1, 2, 0)), *how)).transpose(2, 0, 1)
    return np.stack([np.asarray(fit(Image.fromarray(plane), *how)) for plane in image])


def _over_chunk(paths: list[str], one) -> tuple[list, dict[str, str]]:
    """one(i, path) for a chunk of files in a worker: its result, or for a bad file its reason string;
    and what the image libraries said, by path (caught, so that the terminal shows imgclf's lines only)."""
    out, noise = [], {}
    with NoiseCatcher() as catcher:
        for i, path in enumerate(paths):
            try:
                result = one(i, path)
            except BadImage as bad:
                result = str(bad)
            except Exception as err:  # Pillow parsing hostile bytes can raise anything; one file must not end the run
                result = f"corrupt image: {type(err).__name__}: {err}"[:300]
            said = catcher.take()
            if said:
                noise[path] = said
                if isinstance(result, str):  # the library's words are the best clue to why it failed
                    result = f"{result} (the decoder said: {said[:200]})"
            out.append(result)
    return out, noise


def probe_many(paths: list[str]) -> tuple[list[tuple[int, int, bool, str] | str], dict[str, str]]:
    """probe() over a chunk in a worker; a bad file gives its reason string instead of a tuple."""
    return _over_chunk(paths, lambda _, path: probe(path))


def decode_into(
    paths: list[str],
    start: int,
    out_file: str,
    channels: int,
    size: tuple[int, int],
    resize: str,
    interpolation: str = "bilinear",
    crop_fraction: float = 1.0,
) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """decode() a chunk straight into rows start.. of the cache's .npy, so no pixels cross processes;
    returns the (row, reason) of each file that failed, and what the libraries said."""
    rows = np.load(out_file, mmap_mode="r+")

    def write(i: int, path: str) -> None:
        rows[start + i] = decode(path, channels, size, resize, None, interpolation, crop_fraction)

    results, noise = _over_chunk(paths, write)
    rows.flush()  # the map closes when the function returns, before the chunk's result goes back
    return [(start + i, r) for i, r in enumerate(results) if isinstance(r, str)], noise


def decode_many(
    paths: list[str], channels: int, size: tuple[int, int], resize: str, interpolation: str = "bilinear", crop_fraction: float = 1.0
) -> tuple[list[np.ndarray | str], dict[str, str]]:
    """decode() over a chunk in a worker, returning arrays (prediction has no cache to write into)."""
    return _over_chunk(paths, lambda _, path: decode(path, channels, size, resize, None, interpolation, crop_fraction))
