"""Run directories: never overwrite what a user has, unless told to."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from imgclf.errors import ImgclfError


def run_source(run_dir: Path) -> str | None:
    """The source a run was trained on (None for in-memory arrays), as train() recorded it in run.json."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()).get("source") if path.is_file() else None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "run"


def check_out(out: str) -> None:
    """Refuse, before any work, a folder of run directories that cannot be one."""
    root = Path(out)
    blocker = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ImgclfError(f"--out {out}: {blocker} is a file; pass a folder to hold run directories (default: runs).")


def choose_run_dir(out: str, name: str | None, default_name: str, force: bool) -> Path:
    """out/name for a new run, checked now and made only when its first checkpoint is written (make_run_dir):
    a run that fails before then leaves nothing behind. An automatic name gets -2, -3, ... when taken; a
    given one that holds a run needs force."""
    check_out(out)
    root = Path(out)
    if name:
        path = root / slug(name)
        if _holds_something(path) and not force:
            raise ImgclfError(
                f"{path} already holds a run; choose another --name, resume it with --resume {path}, or pass --force to replace it."
            )
        return path
    base = slug(default_name)
    for i in range(1, 10_000):
        path = root / (base if i == 1 else f"{base}-{i}")
        if not path.exists():
            return path
    raise ImgclfError(f"{root}: too many runs named {base}; pass --name.")


def _holds_something(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def make_run_dir(path: Path, replace: bool) -> Path:
    """Make the run directory chosen by choose_run_dir, now that there is a checkpoint to put in it.

    replace (--force): what stood there goes only now, when the new run has an epoch to show for itself.
    An automatic name taken in the meantime by another run moves on to the next free number."""
    if replace and _holds_something(path):
        shutil.rmtree(path)
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            if not _holds_something(path):
                return path
            stem, _, number = path.name.rpartition("-")
            path = path.with_name(f"{stem}-{int(number) + 1}" if number.isdigit() and stem else f"{path.name}-2")
