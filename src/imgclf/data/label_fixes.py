"""A user's corrections to the labels: --relabel FILE (path,label) and --drop FILE (paths), applied to the
loaded splits in memory, so that the decode cache, keyed by the files' pixels, is never rebuilt for them.

Both files may be label_issues.csv as written by the label check (path, given, suggested, ...): relabel
takes its `label` column when the user added one, else `suggested`; drop takes `path`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from imgclf.data.imageset import ImageData, ImageSet
from imgclf.errors import DataError


def path_key(path: str) -> str:
    """A path as the origins hold it (absolute); a built-in dataset's id (fashion-mnist:train:12) as it is."""
    text = path.strip()
    if ":" in text and not Path(text).exists() and not os.path.isabs(text):
        return text
    return os.path.abspath(os.path.expanduser(text))


def _rows(path: str) -> tuple[list[str], list[list[str]]]:
    """The header (lower-cased; empty for a file without one) and the rows of a small CSV."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file; give a CSV of path,label (e.g. label_issues.csv from 'imgclf data labels').")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(v.strip() for v in r)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV ({err}).") from None
    if rows and "path" in [v.strip().lower() for v in rows[0]]:
        return [v.strip().lower() for v in rows[0]], rows[1:]
    return [], rows


def read_relabel(path: str, classes: list[str]) -> dict[str, int]:
    """path key -> class index from a relabel file; unknown classes are one line naming them."""
    header, rows = _rows(path)
    if header:
        column = "label" if "label" in header else "suggested" if "suggested" in header else None
        if column is None:
            raise DataError(f"{path}: a relabel file needs a 'label' (or 'suggested') column beside 'path'; it has {', '.join(header)}.")
        at, lab = header.index("path"), header.index(column)
    else:
        at, lab = 0, 1
    index = {c: i for i, c in enumerate(classes)}
    out, unknown = {}, []
    for r in rows:
        if len(r) <= max(at, lab):
            raise DataError(f"{path}: the row {','.join(r)!r} has no label; each row is path,label.")
        name = r[lab].strip()
        if name not in index:
            unknown.append(name)
            continue
        out[path_key(r[at])] = index[name]
    if unknown:
        names = ", ".join(sorted(set(unknown))[:5])
        raise DataError(
            f"{path}: {len(unknown)} row(s) name classes the data does not have ({names}); its classes: {', '.join(classes[:20])}."
        )
    return out


def read_drop(path: str) -> set[str]:
    header, rows = _rows(path)
    at = header.index("path") if header else 0
    return {path_key(r[at]) for r in rows if len(r) > at and r[at].strip()}


def apply_fixes(data: ImageData, relabel: str | None, drop: str | None) -> tuple[ImageData, dict]:
    """The data with the relabel file's labels and without the drop file's images, in every split that holds
    them, and what changed ({"relabeled": n, "dropped": n, ...}) for the log and run.json. A path that is
    in no split is an error naming it: a stale file must not pass for a fix."""
    if not relabel and not drop:
        return data, {}
    new_labels = read_relabel(relabel, data.classes) if relabel else {}
    gone = read_drop(drop) if drop else set()
    for what, wanted, named in (("relabel", relabel, set(new_labels)), ("drop", drop, gone)):
        missing = sorted(named - set(path_key(o) for o in _origins_in_splits(data)))
        if missing:
            raise DataError(
                f"{wanted}: {len(missing)} path(s) are not among the images of {data.source} (first: {missing[0]}); "
                f"remove those rows or check that --{what} names the file made for this data."
            )
    data, changed, removed = fixed(data, new_labels, gone, str(drop))
    info = {
        **({"relabel": str(relabel), "relabeled": changed} if relabel else {}),
        **({"drop": str(drop), "dropped": removed} if drop else {}),
    }
    return data, info


def _origins_in_splits(data: ImageData) -> list[str]:
    return [o for part in data.splits().values() for o in part.origins]


def fixed(data: ImageData, new_labels: dict[str, int], gone: set[str], what: str) -> tuple[ImageData, int, int]:
    """The data with labels replaced (path key -> class) and images left out (path keys), in every split;
    how many labels changed and how many images went. `what` names the drop's origin in an error."""
    changed, removed = 0, 0
    parts: dict[str, ImageSet] = {}
    for name, part in data.splits().items():
        here = [path_key(o) for o in part.origins]  # each split's own: a built-in test split has its own origins
        labels = part.labels.copy()
        for row, key in enumerate(here):
            if key in new_labels and labels[row] != new_labels[key]:
                labels[row] = new_labels[key]
                changed += 1
        keep = np.array([key not in gone for key in here], dtype=bool)
        removed += int((~keep).sum())
        parts[name] = ImageSet(part.images, part.index[keep], labels[keep], part.all_origins)
    if len(parts["train"]) == 0:
        raise DataError(f"{what}: it names every training image of {data.source}; nothing would be left to train on.")
    return dataclasses.replace(data, train=parts["train"], val=parts.get("val"), test=parts.get("test")), changed, removed
