"""Prediction over files into a submission: inputs (files, folders, CSVs of ids) resolved to ids and
paths, the rows of the CSV (id, label, top-k, probabilities), a sample_submission.csv template filled
in its own order, and the reasons for bad files written beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imgclf.data.skips import SkipLog
from imgclf.data.walk import image_files
from imgclf.errors import ImgclfError
from imgclf.predict import ImageClassifier, ranked


def resolve_inputs(inputs: list[str], skips: SkipLog | None = None) -> tuple[list[str], list[str]]:
    """Command-line inputs as (ids, paths) in input order: files, folders (recursive, ids relative to the
    folder, or led by it when there are several inputs), or a CSV of ids (ids as written, images found
    beside it as for training data).
    Folders are walked as training data is; what the walk leaves out goes to skips."""
    from imgclf.data.listing import image_folder_for, read_csv_rows

    ids, paths = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            for f in image_files(path, skips):
                # One folder: ids relative to it, as a submission wants; several: the folder as given leads,
                # so that a/1.png in two folders stays two ids.
                ids.append(os.path.relpath(f, path) if len(inputs) == 1 else os.path.join(text, os.path.relpath(f, path)))
                paths.append(f)
        elif path.suffix.lower() == ".csv" and path.is_file():
            rows, id_col, _ = read_csv_rows(path, None, None)
            raw = [(r.get(id_col) or "").strip() for r in rows]
            folder = image_folder_for(path, path.stem, [i for i in raw[:20] if i])
            for image_id in raw:
                ids.append(image_id)
                paths.append((folder.find(image_id) or "") if image_id else "")
        else:  # a file, or a path that is not there: its row says so, as for a broken file
            ids.append(text)
            paths.append(text)
    return ids, paths


def prediction_rows(
    clf: ImageClassifier, ids: list[str], paths: list[str], top_k: int = 0, proba: bool = False
) -> tuple[list[str], list[dict]]:
    """The submission table's columns (id, label, optional top-k and probabilities) and one row per input;
    a row also carries its error (empty label) and the libraries' warning, which are not columns: a
    strict submission checker rejects an extra column, so they go to files of their own."""
    items, probs = clf.files_with_probabilities(paths, ids)
    columns = ["id", "label"]
    k = min(top_k, len(clf.classes_))
    columns += [f"top{i}_{what}" for i in range(1, k + 1) for what in ("label", "prob")]
    columns += [f"prob_{c}" for c in clf.classes_] if proba else []
    rows = []
    for item, path, p in zip(items, paths, probs):
        row = {"id": item.id, "label": None, "error": item.error, "warning": item.warning, "path": path}
        if item.error is None:
            order = ranked(p, max(k, 1))
            row["label"] = clf.classes_[order[0]]
            for i, j in enumerate(order[:k], start=1):
                row[f"top{i}_label"], row[f"top{i}_prob"] = clf.classes_[j], f"{p[j]:.6f}"
            if proba:
                row.update({f"prob_{c}": f"{v:.6f}" for c, v in zip(clf.classes_, p)})
        rows.append(row)
    return columns, rows


def template_beside(inputs: list[str]) -> Path | None:
    """The sample_submission.csv beside a CSV of ids (the dataset's test split), as data inspect notes it."""
    if len(inputs) == 1 and inputs[0].lower().endswith(".csv"):
        found = Path(inputs[0]).parent / "sample_submission.csv"
        return found if found.is_file() else None
    return None


def fill_template(template: Path, rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The template's columns and row order, its label column filled with the predictions by id."""
    from imgclf.data.listing import read_csv_rows

    t_rows, id_col, label_col = read_csv_rows(template, None, None)
    if label_col is None:
        raise ImgclfError(f"{template}: no label column (label, class or target) to fill; pass a sample submission with one.")
    by_id = {str(r["id"]): r for r in rows}
    for key in list(by_id):  # ids given with an extension match template ids without one
        by_id.setdefault(os.path.splitext(key)[0], by_id[key])
    missing = [r[id_col] for r in t_rows if str(r[id_col]).strip() not in by_id]
    if missing:
        raise ImgclfError(
            f"{template}: {len(missing)} id(s) were not among the inputs (e.g. {missing[0]}); predict on the images the template lists."
        )
    out = []
    for r in t_rows:
        pred = by_id[str(r[id_col]).strip()]
        out.append({**r, label_col: "" if pred["error"] else pred["label"]})
    return list(t_rows[0].keys()), out


@dataclass
class Written:
    """What write_predictions wrote: the CSV, how many rows got a label, and the side files beside it."""

    path: Path
    rows: int
    labelled: int
    template: Path | None = None
    errors: Path | None = None  # id,error of inputs that could not be read (no label)
    bad: int = 0
    skipped: Path | None = None  # what walking the folders left out, with reasons
    skipped_summary: str = ""
    warnings: Path | None = None  # what the image libraries said, per id
    warned: dict | None = None


def write_predictions(
    clf: ImageClassifier,
    inputs: list[str],
    out: str | Path = "predictions.csv",
    *,
    template: str | Path | None = None,
    find_template: bool = True,
    top_k: int = 0,
    proba: bool = False,
    resolved: tuple[list[str], list[str], SkipLog] | None = None,
) -> Written:
    """The submission CSV for inputs (files, folders, a CSV of ids), in the template's columns and row order
    when there is one (given, or the sample_submission.csv beside a CSV of ids unless top_k or proba asks
    for more columns), and beside it <out>.errors.csv, .skipped.csv and .warnings.csv when there is
    something to say. Bad inputs never stop it: each gets its row without a label and its reason.
    resolved: (ids, paths, skips) of resolve_inputs(inputs, skips), when the caller already walked them."""
    import csv

    from imgclf.data.skips import write_skipped, write_warnings

    out = Path(out)
    found = None if template or top_k or proba or not find_template else template_beside(inputs)
    template = Path(template) if template else found
    if resolved is None:
        skips = SkipLog()
        ids, paths = resolve_inputs(inputs, skips)
    else:
        ids, paths, skips = resolved
    columns, rows = prediction_rows(clf, ids, paths, top_k=top_k, proba=proba)
    bad = [r for r in rows if r["error"]]
    warned = {r["id"]: r["warning"] for r in rows if r["warning"]}
    if template:
        columns, rows = fill_template(template, rows)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    side = lambda kind: out.with_name(f"{out.stem}.{kind}.csv")  # noqa: E731
    written = Written(out, len(rows), len(rows) - len(bad), template=found, bad=len(bad), warned=warned or None)
    if bad:
        written.errors = side("errors")
        write_warnings({r["id"]: r["error"] for r in bad}, written.errors, header=("id", "error"))
    if skips.items:
        written.skipped, written.skipped_summary = side("skipped"), skips.summary()
        write_skipped(skips.items, written.skipped)
    if warned:
        written.warnings = side("warnings")
        write_warnings(warned, written.warnings)
    return written
