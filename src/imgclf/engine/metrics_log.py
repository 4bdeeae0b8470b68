"""metrics.csv: one row per epoch, appended and flushed as it is produced."""

from __future__ import annotations

import csv
import os
from pathlib import Path

COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def rewrite(path: Path, rows: list[dict]) -> None:
    """metrics.csv as the checkpoint knows it: rows of epochs lost to a kill are dropped on resume."""
    if path.exists():
        path.unlink()
    for row in rows:
        append_row(path, row)
