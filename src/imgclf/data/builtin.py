"""Built-in datasets by name, read from their original files without unpickling anything.

Looked up in order: --data-root / IMGCLF_DATA, the user cache directory, /usr/share/datasets/<name>
(Debian's packages); then downloaded with torchvision when a network is there.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from imgclf.config import DataConfig
from imgclf.errors import DataError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SYSTEM_ROOT = Path("/usr/share/datasets")


@dataclass
class Builtin:
    """What a built-in dataset is: how to find it, read it, get it, and whether flips keep its meaning."""

    name: str
    hflip: bool
    folder_names: tuple[str, ...]  # folders to look for under each root, torchvision's included
    debian_package: str | None
    files_hint: str


BUILTINS = {
    "fashion-mnist": Builtin(
        "fashion-mnist",
        True,
        ("fashion-mnist", "FashionMNIST/raw"),
        "dataset-fashion-mnist",
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
    ),
    "mnist": Builtin(
        "mnist",
        False,
        ("mnist", "MNIST/raw"),
        None,
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
    ),
    "cifar10": Builtin(
        "cifar10",
        True,
        ("cifar10", "cifar-10-batches-bin"),
        None,
        "the contents of cifar-10-binary.tar.gz (data_batch_1.bin ... test_batch.bin, batches.meta.txt)",
    ),
    "cifar100": Builtin(
        "cifar100",
        True,
        ("cifar100", "cifar-100-binary"),
        None,
        "the contents of cifar-100-binary.tar.gz (train.bin, test.bin, fine_label_names.txt)",
    ),
    "digits": Builtin("digits", False, (), None, "nothing: scikit-learn ships it"),
}
CIFAR_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary"),
}


@dataclass
class BuiltinArrays:
    train: tuple[np.ndarray, np.ndarray]  # N x C x H x W uint8, int64
    test: tuple[np.ndarray, np.ndarray] | None
    classes: list[str]
    location: str


def is_builtin(source: str) -> bool:
    return source.lower() in BUILTINS


def search_roots(config: DataConfig) -> list[Path]:
    from imgclf.data.cache import cache_root

    roots = []
    if config.data_root:
        roots.append(Path(config.data_root))
    if os.environ.get("IMGCLF_DATA"):
        roots.append(Path(os.environ["IMGCLF_DATA"]))
    roots += [cache_root(config) / "datasets", SYSTEM_ROOT]
    return roots


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read it ({err}); delete it so that it is fetched again.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path}: not an unsigned-byte IDX file; replace it with the original download.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: holds {body.size} values where its header says {shape}; the file is truncated, fetch it again.")
    return body.reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_folder(spec: Builtin, roots: list[Path], required: list[str]) -> Path | None:
    for root in roots:
        for sub in spec.folder_names:
            folder = root / sub
            if all(_idx_file(folder, f) or (folder / f).is_file() for f in required):
                return folder
    return None


def _load_idx_set(folder: Path) -> tuple[tuple, tuple]:
    arrays = [read_idx(cast(Path, _idx_file(folder, stem))) for stem in IDX_FILES]  # locate() found each in folder
    return (arrays[0][:, None], arrays[1].astype(np.int64)), (arrays[2][:, None], arrays[3].astype(np.int64))


def _read_cifar_bin(paths: list[Path], label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: records of label byte(s) then 3x32x32 pixels (no pickle involved)."""
    record = label_bytes + 3 * 32 * 32
    raw = np.concatenate([np.fromfile(p, dtype=np.uint8) for p in paths])
    if raw.size % record:
        raise DataError(f"{paths[0].parent}: CIFAR files of the wrong size; fetch the binary version again.")
    raw = raw.reshape(-1, record)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), raw[:, label_bytes - 1].astype(np.int64)


def _cifar(name: str, folder: Path) -> BuiltinArrays:
    if name == "cifar10":
        classes = (folder / "batches.meta.txt").read_text().split()
        train = _read_cifar_bin([folder / f"data_batch_{i}.bin" for i in range(1, 6)], 1)
        test = _read_cifar_bin([folder / "test_batch.bin"], 1)
    else:
        classes = (folder / "fine_label_names.txt").read_text().split()
        train = _read_cifar_bin([folder / "train.bin"], 2)
        test = _read_cifar_bin([folder / "test.bin"], 2)
    return BuiltinArrays(train, test, classes, str(folder))


def _required(name: str) -> list[str]:
    if name == "cifar10":
        return ["batches.meta.txt", "test_batch.bin"] + [f"data_batch_{i}.bin" for i in range(1, 6)]
    if name == "cifar100":
        return ["fine_label_names.txt", "train.bin", "test.bin"]
    return list(IDX_FILES)


def _download(name: str, dest: Path) -> None:
    """Fetch with torchvision into dest; the files land where _find_folder looks for them."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    dest.mkdir(parents=True, exist_ok=True)
    if name == "fashion-mnist":
        datasets.FashionMNIST(str(dest), download=True)
    elif name == "mnist":
        datasets.MNIST(str(dest), download=True)
    else:
        url, md5, _ = CIFAR_ARCHIVES[name]
        download_and_extract_archive(url, str(dest), md5=md5, remove_finished=True)


def locate(name: str, config: DataConfig, download: bool = True) -> Path:
    """The folder holding a built-in dataset's files, downloading it into the user cache if needed."""
    spec = BUILTINS[name]
    roots = search_roots(config)
    folder = _find_folder(spec, roots, _required(name))
    if folder is not None:
        return folder
    target = roots[-2]  # the user cache's datasets folder
    if download:
        try:
            _download(name, target)
        except Exception as err:  # any network or archive failure means the same thing to the user
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise DataError(_missing_message(spec, roots, f"the download failed ({reason})")) from None
        folder = _find_folder(spec, [target], _required(name))
        if folder is not None:
            return folder
    raise DataError(_missing_message(spec, roots, "it is not on this machine"))


def _missing_message(spec: Builtin, roots: list[Path], why: str) -> str:
    where = roots[0] / spec.folder_names[0]
    fix = f"install Debian's package {spec.debian_package}, or put " if spec.debian_package else "put "
    return f"{spec.name}: {why}; {fix}{spec.files_hint} in {where} (or pass --data-root DIR)."


def load_builtin(name: str, config: DataConfig) -> BuiltinArrays:
    name = name.lower()
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        return BuiltinArrays((images, digits.target.astype(np.int64)), None, [str(i) for i in range(10)], "scikit-learn's bundled digits")
    folder = locate(name, config)
    if name.startswith("cifar"):
        return _cifar(name, folder)
    train, test = _load_idx_set(folder)
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return BuiltinArrays(train, test, classes, str(folder))
