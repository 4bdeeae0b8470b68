"""Bad inputs: skipped and reported (the default), or the first one an error under strict."""

from __future__ import annotations

import collections
import csv
import os
from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import DataError


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class SkipLog:
    """Collects skipped inputs; under strict, the first one that is an error raises instead."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.items: list[Skipped] = []

    def add(self, path: str, reason: str, *, fix: str = "fix or remove it", error: bool = True) -> None:
        """Record a skip; error=False for things ignored even under strict (hidden system files)."""
        if self.strict and error:
            raise DataError(f"{path}: {reason}; {fix}, or run without --strict to skip such files.")
        self.items.append(Skipped(str(path), reason))

    def extend(self, items: list[Skipped]) -> None:
        self.items.extend(items)

    def summary(self) -> str:
        """One line: how many files and folders were skipped and why, most common reason first.

        A reason is a kind before its first colon ("link loop: ..."), and the kind is what is counted."""
        kinds = collections.Counter(s.reason.split(":")[0] for s in self.items)
        parts = "; ".join(f"{kind} {n}" for kind, n in kinds.most_common(4))
        rest = sum(n for _, n in kinds.most_common()[4:])
        more = f"; {rest} of {len(kinds) - 4} other kind(s)" if rest else ""
        return f"skipped {len(self.items)} file(s) or folder(s) ({parts}{more})"


def _write_pairs(rows, header: tuple[str, str], path: Path) -> None:
    """A two-column CSV (\n line endings), replaced atomically so a reader never sees half of it."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        return [(row[0], row[1]) for row in reader if len(row) >= 2]


def write_skipped(items: list[Skipped], path: Path) -> None:
    """skipped.csv: one row per skipped file with its reason."""
    _write_pairs(((s.path, s.reason) for s in items), ("path", "reason"), path)


def read_skipped(path: Path) -> list[Skipped]:
    return [Skipped(p, r) for p, r in _read_pairs(path)]


def write_warnings(warnings: dict[str, str], path: Path, header: tuple[str, str] = ("path", "message")) -> None:
    """warnings.csv: what the image libraries said while decoding each file that made them speak (or, with
    another header, any other text per file)."""
    _write_pairs(warnings.items(), header, path)


def read_warnings(path: Path) -> dict[str, str]:
    return dict(_read_pairs(path))


def warnings_summary(warnings: dict[str, str], where: Path) -> str:
    """One line for the log: how many files made a library speak, and where each message is."""
    import logging

    verbose = logging.getLogger("imgclf").isEnabledFor(logging.DEBUG)
    return f"the image libraries warned about {len(warnings)} file(s); each message in {where}" + ("" if verbose else " (-v prints them)")
