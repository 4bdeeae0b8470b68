"""Finding the image files of a dataset on disk and their labels, before any pixel is read.

Two layouts: a class-per-folder tree (torchvision ImageFolder's mapping: sorted folder names), and a
CSV of id,label beside an image folder (the "Identify the Apparels" layout).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from imgclf.data.skips import SkipLog
from imgclf.data.walk import Walker, is_hidden, is_image_name, is_system_folder
from imgclf.errors import DataError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
ID_COLUMNS = ("id", "filename", "file", "image", "path")
LABEL_COLUMNS = ("label", "class", "target")
UNLABELED = -1


@dataclass
class FileListing:
    """Every usable file with its label and split; labels index `classes`, UNLABELED where none is known."""

    layout: str
    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]  # split name -> [(path, label)]
    extra_files: list[str] = field(default_factory=list)  # CSVs and the like: part of the cache key
    submission_template: str | None = None


def _split_words(splits: dict) -> str:
    return "/".join(s for s in ("train", "val", "test") if s in splits)


def _class_folders(root: Path, skips: SkipLog) -> tuple[list[Path], list[str]]:
    """The folders directly under root, sorted by name (hidden and system folders reported, not used), and
    the files beside them."""
    found, loose = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir():
            loose.append(entry.path)
        elif is_system_folder(entry.name):
            skips.add(entry.path, "hidden or system folder: not searched", error=False)
        else:
            found.append(Path(entry.path))
    return found, loose


def _report_loose(paths: list[str], skips: SkipLog) -> None:
    """Files beside the class folders belong to no class: said, so that an image there is not lost silently."""
    for path in paths:
        name = os.path.basename(path)
        if is_hidden(name):
            skips.add(path, "hidden or system file", error=False)
        elif is_image_name(name):
            skips.add(path, "image outside the class folders: it has no label; move it into its class's folder", error=False)
        else:
            skips.add(path, "not an image file name (extension)", error=False)


def _split_folders(root: Path) -> dict[str, Path]:
    """train/, val/ (valid/, validation/) and test/ folders; without train/, the root holds the training
    classes beside them."""
    splits = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        split = SPLIT_NAMES.get(entry.name.lower())
        if entry.is_dir() and split and split not in splits:
            splits[split] = Path(entry.path)
    return {"train": root, **splits}


def list_folders(root: Path, skips: SkipLog) -> FileListing:
    """A class-per-folder tree, or train/ val/ test/ folders each holding one (or the training classes
    at the top beside val/ and test/ folders)."""
    split_dirs = _split_folders(root)
    train_dir = split_dirs["train"]
    found = {split: _class_folders(folder, skips) for split, folder in split_dirs.items()}
    if train_dir == root:  # the split folders beside the classes are not classes
        found["train"] = ([d for d in found["train"][0] if d not in split_dirs.values()], found["train"][1])
    subdirs = {split: dirs for split, (dirs, _) in found.items()}
    # An unlabeled test folder of bare images is labeled by nothing; its folder is fenced whole.
    bare = {split for split, dirs in subdirs.items() if split != "train" and not dirs}
    for split, (_, loose) in found.items():
        if split not in bare:
            _report_loose(loose, skips)
    walker = Walker(skips, fence=[d for split, dirs in subdirs.items() for d in dirs] + [split_dirs[s] for s in bare])
    train_files = {d.name: walker.images(d) for d in subdirs["train"]}
    classes = [name for name, paths in train_files.items() if paths]
    for d in subdirs["train"]:
        if not train_files[d.name] and str(d) not in walker.refused:
            skips.add(str(d), "empty class folder: no images in it", fix="add images or remove the folder")
    if not classes:
        raise DataError(f"{train_dir}: no class folders with images; expected {train_dir}/<class>/<image>.png.")
    index = {name: i for i, name in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {"train": [(p, index[n]) for n, paths in train_files.items() for p in paths]}
    for split, folder in split_dirs.items():
        if split in bare:
            files[split] = [(p, UNLABELED) for p in walker.images(folder)]
        elif split != "train":
            files[split] = _labeled_files(walker, subdirs[split], index, skips)
    layout = f"class folders with {_split_words(split_dirs)} splits" if len(split_dirs) > 1 else "class folders"
    return FileListing(layout, root, classes, files)


def _labeled_files(walker: Walker, folders: list[Path], index: dict[str, int], skips: SkipLog) -> list[tuple[str, int]]:
    """(path, label) for a val or test split's class folders, labeled by the training classes."""
    pairs: list[tuple[str, int]] = []
    for folder in folders:
        paths = walker.images(folder)
        if folder.name not in index:
            for p in paths:
                skips.add(p, f"label outside the known set: class folder '{folder.name}' is not in the training classes")
            continue
        pairs.extend((p, index[folder.name]) for p in paths)
    return pairs


def _pick_column(header: list[str], wanted: str | None, defaults: tuple[str, ...], csv_path: Path, what: str, flag: str) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    if wanted:
        if wanted in header:
            return wanted
        if wanted.lower() in lowered:
            return lowered[wanted.lower()]
        raise DataError(f"{csv_path}: no column '{wanted}' (columns: {', '.join(header)}); pass the right name with {flag}.")
    for name in defaults:
        if name in lowered:
            return lowered[name]
    if what == "id":
        raise DataError(f"{csv_path}: no image id column among {', '.join(header)}; name it with {flag}.")
    return None


class FolderIndex:
    """Resolves CSV ids (with or without extension) to files in one folder with one directory scan."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.by_name: dict[str, str] = {}
        self.by_stem: dict[str, str] = {}
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.is_file() and is_image_name(entry.name):
                    self.by_name[entry.name] = entry.path
                    self.by_stem.setdefault(os.path.splitext(entry.name)[0], entry.path)

    def find(self, image_id: str) -> str | None:
        if "/" in image_id or os.sep in image_id:  # a relative path: taken as given under the folder
            path = self.folder / image_id
            return str(path) if path.is_file() else None
        return self.by_name.get(image_id) or self.by_stem.get(image_id)


def image_folder_for(csv_path: Path, split: str, first_ids: list[str]) -> FolderIndex:
    """The folder holding a CSV's images: <split>/, images/, beside the CSV, or any folder beside it."""
    base = csv_path.parent
    candidates = [base / split, base / "images", base / split / "images", base / csv_path.stem, base]
    candidates += [Path(p) for p in sorted(e.path for e in os.scandir(base) if e.is_dir() and not is_system_folder(e.name))]
    indexes = [FolderIndex(c) for c in candidates if c.is_dir()]
    for idx in indexes:
        if any(idx.find(i) for i in first_ids):
            return idx
    tried = ", ".join(str(c) for c in candidates[:5])
    raise DataError(
        f"{csv_path}: none of its first ids ({', '.join(first_ids[:3])}) is an image in {tried}; put the images in {base / split}."
    )


def read_csv_rows(csv_path: Path, id_column: str | None, label_column: str | None) -> tuple[list[dict], str, str | None]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h for h in (reader.fieldnames or []) if h is not None]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{csv_path}: cannot read it as CSV ({err}); save it as UTF-8 comma-separated text.") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows; it needs a header line and one row per image.")
    id_col = cast(str, _pick_column(header, id_column, ID_COLUMNS, csv_path, "id", "--id-column"))  # "id": a column, or DataError
    label_col = _pick_column(header, label_column, LABEL_COLUMNS, csv_path, "label", "--label-column")
    return rows, id_col, label_col


def _classes_from(labels: list[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer (so '10' follows '9')."""
    unique = set(labels)
    if all(lab.lstrip("-").isdigit() for lab in unique):
        return [str(v) for v in sorted(int(lab) for lab in unique)]
    return sorted(unique)


def _normal_label(label: str) -> str:
    label = label.strip()
    return str(int(label)) if label.lstrip("-").isdigit() else label


def find_csv(root: Path, split: str) -> Path | None:
    for name in [n for n, s in SPLIT_NAMES.items() if s == split]:
        for candidate in (root / f"{name}.csv", root / name / f"{name}.csv"):
            if candidate.is_file():
                return candidate
    return None


def list_csv(
    root: Path, skips: SkipLog, id_column: str | None = None, label_column: str | None = None, train_csv: Path | None = None
) -> FileListing:
    """train.csv (+ val.csv, test.csv) of id,label rows naming images in a folder beside them."""
    csvs = {"train": cast(Path, train_csv or find_csv(root, "train"))}  # the caller found a train.csv
    for split in ("val", "test"):
        found = find_csv(root, split)
        if found:
            csvs[split] = found
    classes: list[str] = []
    files: dict[str, list[tuple[str, int]]] = {}
    for split, csv_path in csvs.items():
        rows, id_col, label_col = read_csv_rows(csv_path, id_column, label_column)
        if split == "train" and label_col is None:
            raise DataError(f"{csv_path}: no label column among {', '.join(rows[0])}; name it with --label-column.")
        if split == "train":
            classes = _classes_from([_normal_label(r[label_col] or "") for r in rows if (r[label_col] or "").strip()])
        index = {name: i for i, name in enumerate(classes)}
        folder = image_folder_for(csv_path, split, [r[id_col].strip() for r in rows[:20] if r[id_col]])
        files[split] = _resolve_rows(rows, id_col, label_col, index, folder, csv_path, skips)
    template = next((str(p) for p in (root / "sample_submission.csv",) if p.is_file()), None)
    layout = f"CSV of ids and labels with {_split_words(csvs)} splits"
    extra = [str(p) for p in csvs.values()]
    return FileListing(layout, root, classes, files, extra_files=extra, submission_template=template)


def _resolve_rows(rows, id_col, label_col, index, folder: FolderIndex, csv_path: Path, skips: SkipLog) -> list[tuple[str, int]]:
    """Rows to (path, label), skipping missing files, unknown labels and duplicate ids with the reason."""
    seen: dict[str, int] = {}
    out: list[tuple[str, int] | None] = []
    for line, row in enumerate(rows, start=2):
        image_id = (row.get(id_col) or "").strip()
        where = f"{csv_path} line {line}"
        raw_label = (row.get(label_col) or "").strip() if label_col else ""
        if not image_id:
            skips.add(where, "row without an image id")
            out.append(None)
            continue
        path = folder.find(image_id)
        if path is None:
            skips.add(where, f"missing file: id '{image_id}' has no image in {folder.folder}", fix="add the image or remove the row")
            out.append(None)
            continue
        if label_col is None:
            label = UNLABELED
        elif not raw_label:
            skips.add(where, f"missing label for id '{image_id}'", fix="fill in the label or remove the row")
            out.append(None)
            continue
        elif _normal_label(raw_label) not in index:
            skips.add(where, f"label outside the known set: '{raw_label}' is not a training class", fix="correct the label")
            out.append(None)
            continue
        else:
            label = index[_normal_label(raw_label)]
        if image_id in seen:
            first = seen[image_id]
            if out[first] is not None and cast("tuple[str, int]", out[first])[1] != label:
                skips.add(where, f"duplicate id '{image_id}' with a conflicting label; both rows skipped", fix="keep one row per image")
                skips.add(
                    f"{csv_path} line {first + 2}",
                    f"duplicate id '{image_id}' with a conflicting label; both rows skipped",
                    fix="keep one row per image",
                )
                out[first] = None
            else:
                skips.add(where, f"duplicate id '{image_id}': the row repeats an earlier one", fix="keep one row per image")
            out.append(None)
            continue
        seen[image_id] = len(out)
        out.append((path, label))
    return [pair for pair in out if pair is not None]
