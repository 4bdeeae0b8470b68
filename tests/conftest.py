"""Real-data fixtures: Fashion-MNIST and scikit-learn digits written out in the layouts users have."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

def _find_fashion_mnist() -> Path | None:
    """Where 'make data' put Fashion-MNIST: Debian's package, or imgclf's own download (no apt, no root)."""
    from imgclf.config import DataConfig
    from imgclf.data.builtin import locate

    try:
        return locate("fashion-mnist", DataConfig(), download=False)
    except Exception:
        return None


FMNIST_DIR = _find_fashion_mnist()
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FOLDER_NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _read_idx(folder: Path, stem: str) -> np.ndarray:
    """An independent IDX reader, so the tests do not check imgclf against itself."""
    gz = folder / f"{stem}.gz"
    data = gzip.open(gz, "rb").read() if gz.exists() else (folder / stem).read_bytes()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache, and built-ins are never looked up in a user's home."""
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("IMGCLF_DATA", raising=False)
    if FMNIST_DIR is not None and not str(FMNIST_DIR).startswith("/usr/share/datasets"):
        monkeypatch.setenv("IMGCLF_DATA", str(FMNIST_DIR.parent))  # found in the user's cache, which tests hide


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST training set: (images N x 28 x 28 uint8, labels)."""
    if FMNIST_DIR is None:
        pytest.fail("Fashion-MNIST is missing: run 'make data' (Debian package dataset-fashion-mnist, or imgclf's download).")
    return _read_idx(FMNIST_DIR, "train-images-idx3-ubyte"), _read_idx(FMNIST_DIR, "train-labels-idx1-ubyte").astype(np.int64)


@pytest.fixture(scope="session")
def fmnist_small(fmnist):
    """30 images per class, the first ones of each class in file order."""
    images, labels = fmnist
    rows = np.sort(np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(10)]))
    return images[rows], labels[rows]


def write_class_tree(root: Path, images: np.ndarray, labels: np.ndarray, ext: str = "png") -> Path:
    for i, (im, lab) in enumerate(zip(images, labels)):
        folder = root / FOLDER_NAMES[lab]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im, "L").save(folder / f"img{i:05d}.{ext}")
    return root


@pytest.fixture(scope="session")
def class_tree(tmp_path_factory, fmnist_small):
    """root/<class>/imgNNNNN.png from real Fashion-MNIST images."""
    return write_class_tree(tmp_path_factory.mktemp("tree") / "clothes", *fmnist_small)


@pytest.fixture(scope="session")
def split_tree(tmp_path_factory, fmnist):
    """root/train|valid|test/<class>/*.png: 20, 5 and 5 images per class from distinct rows."""
    images, labels = fmnist
    root = tmp_path_factory.mktemp("splits") / "data"
    for split, (a, b) in {"train": (0, 20), "valid": (20, 25), "test": (25, 30)}.items():
        rows = np.sort(np.concatenate([np.flatnonzero(labels == c)[a:b] for c in range(10)]))
        write_class_tree(root / split, images[rows], labels[rows])
    return root


@pytest.fixture(scope="session")
def csv_layout(tmp_path_factory, fmnist):
    """The "Identify the Apparels" layout: train.csv (id,label) + train/<id>.png, test.csv + test/, sample_submission.csv."""
    images, labels = fmnist
    root = tmp_path_factory.mktemp("apparel") / "apparel"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        for i in range(200):
            Image.fromarray(images[i], "L").save(root / "train" / f"{i + 1}.png")
            w.writerow([i + 1, int(labels[i])])
    with open(root / "test.csv", "w", newline="") as f, open(root / "sample_submission.csv", "w", newline="") as s:
        w, ws = csv.writer(f), csv.writer(s)
        w.writerow(["id"])
        ws.writerow(["id", "label"])
        for i in range(200, 250):
            Image.fromarray(images[i], "L").save(root / "test" / f"{i + 1}.png")
            w.writerow([i + 1])
            ws.writerow([i + 1, 0])
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, fmnist_small):
    """A run directory of a model trained one epoch on 300 Fashion-MNIST images: enough to predict with."""
    import imgclf

    images, labels = fmnist_small
    return imgclf.train((images, labels), epochs=1, batch_size=64, device="cpu", out=str(tmp_path_factory.mktemp("tiny-run"))).run_dir


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * 255 / 16).astype(np.uint8), d.target.astype(np.int64)


def make_bomb_png(path: Path, side: int = 100_000) -> None:
    """A tiny PNG whose header claims side x side pixels: what a decompression bomb looks like to Pillow."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def add_bad_files(folder: Path, good_image: np.ndarray) -> dict[str, str]:
    """One of every kind of bad file, into folder; returns file name -> the reason word expected."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(good_image, "L").save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "whole.png").unlink()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (folder / "notes.png").write_text("this is a text file with an image name\n")
    make_bomb_png(folder / "bomb.png")
    os.symlink(folder / "does-not-exist.png", folder / "dangling.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._img00001.png").write_bytes(b"\0\5\26\7")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    return {"empty.png": "empty file", "truncated.png": "truncated", "corrupt.jpg": "not an image",
            "notes.png": "not an image", "bomb.png": "decompression bomb", "dangling.png": "unreadable",
            ".DS_Store": "hidden", "._img00001.png": "hidden", "Thumbs.db": "hidden"}


def write_format_corpus(folder: Path) -> list[Path]:
    """One small picture in every mode Pillow has, saved in every format and compression that Pillow can
    write it in (combinations it refuses are left out); returns the files written."""
    import warnings

    modes = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"]
    formats = {"png": [{}], "jpg": [{"quality": 90}, {"progressive": True}], "bmp": [{}], "gif": [{}],
               "webp": [{"lossless": True}, {"quality": 80}], "ppm": [{}], "pgm": [{}],
               "tif": [{}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate"}, {"compression": "packbits"},
                       {"compression": "jpeg"}, {"compression": "group3"}, {"compression": "group4"}]}
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for mode in modes:
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[4:20, 6:26] = rng.integers(40, 255, (16, 20, 3))
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        img = {"1": Image.fromarray(gray > 128), "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
               "I": Image.fromarray(gray.astype(np.int32) * 100), "F": Image.fromarray(gray.astype(np.float32) / 255),
               "PA": Image.fromarray(rgb).convert("P").convert("PA")}.get(mode) or Image.fromarray(rgb).convert(mode)
        for ext, variants in formats.items():
            for k, options in enumerate(variants):
                path = folder / f"{mode.replace(';', '_')}-{ext}{k}.{ext}"
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        img.save(path, **options)
                    written.append(path)
                except Exception:  # a combination Pillow cannot write
                    path.unlink(missing_ok=True)
    return written


def write_odd_files(folder: Path, image: np.ndarray) -> dict[str, str]:
    """Real files that decode but make the libraries talk, and broken ones that make them fail: file name ->
    what it is. Each is what users' folders hold: a camera's malformed MPO, a damaged fax TIFF, a TIFF with a
    private tag, a palette PNG with byte transparency, a corrupt EXIF block, damaged LZW data."""
    import io
    import struct
    import warnings

    from PIL import TiffImagePlugin

    folder.mkdir(parents=True, exist_ok=True)
    gray = Image.fromarray(image, "L")
    jpeg = io.BytesIO()
    gray.save(jpeg, "JPEG")
    mpf = b"MPF\0II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0xB002, 7, 32, 100) + b"\0" * 4
    data = jpeg.getvalue()
    (folder / "malformed-mpo.jpg").write_bytes(data[:2] + b"\xff\xe2" + struct.pack(">H", len(mpf) + 2) + mpf + data[2:])
    noisy = np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Image.fromarray(noisy).convert("1").save(folder / "fax.tif", compression="group4")
        Image.fromarray(noisy).save(folder / "lzw.tif", compression="tiff_lzw")
    fax = bytearray((folder / "fax.tif").read_bytes())
    for i in range(20, 200, 5):
        fax[i] ^= 0x33
    (folder / "damaged-fax.tif").write_bytes(bytes(fax))
    lzw = bytearray((folder / "lzw.tif").read_bytes())
    for i in range(200, 600, 7):
        lzw[i] ^= 0x55
    (folder / "damaged-lzw.tif").write_bytes(bytes(lzw))
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[65000] = "private"
    tags.tagtype[65000] = 2
    gray.save(folder / "private-tag.tif", compression="tiff_lzw", tiffinfo=tags)
    gray.convert("P").save(folder / "palette-transparency.png", transparency=bytes([0] * 5))
    return {"malformed-mpo.jpg": "decodes, Pillow warns", "fax.tif": "decodes", "lzw.tif": "decodes",
            "damaged-fax.tif": "decodes, libtiff complains", "damaged-lzw.tif": "fails, libtiff complains",
            "private-tag.tif": "decodes", "palette-transparency.png": "decodes"}


def write_broken_copies(folder: Path, good: list[Path]) -> None:
    """Of each format among good: a truncated copy, an empty file, a damaged header, and the file under
    another format's extension (which Pillow still reads); plus a decompression bomb."""
    seen = set()
    for path in good:
        ext = path.suffix
        if ext in seen:
            continue
        seen.add(ext)
        data = path.read_bytes()
        stem = f"broken-{ext[1:]}"
        (folder / f"{stem}-truncated{ext}").write_bytes(data[: len(data) // 2])
        (folder / f"{stem}-empty{ext}").write_bytes(b"")
        (folder / f"{stem}-header{ext}").write_bytes(b"\0" * 16 + data[16:])
        (folder / f"{stem}-renamed{'.png' if ext != '.png' else '.jpg'}").write_bytes(data)
    make_bomb_png(folder / "broken-bomb.png")


@pytest.fixture(scope="session")
def colour_tree_64(tmp_path_factory, fmnist):
    """Photos as users have them: 64 px colour JPEGs in class folders (train/ 800, test/ 200), made from
    real Fashion-MNIST items enlarged and tinted with a random colour each."""
    images, labels = fmnist
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("colour") / "photos"
    for split, rows in (("train", range(0, 800)), ("test", range(800, 1000))):
        for i in rows:
            gray = np.asarray(Image.fromarray(images[i]).resize((64, 64), Image.BILINEAR), dtype=np.float32)
            rgb = np.clip(gray[:, :, None] * rng.uniform(0.3, 1.0, 3), 0, 255).astype(np.uint8)
            folder = root / split / FOLDER_NAMES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(folder / f"{i:04d}.jpg", quality=90)
    return root
