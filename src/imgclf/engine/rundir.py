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


def new_run_dir(out: str, name: str | None, default_name: str, force: bool) -> Path:
    """out/name, created now; an automatic name gets -2, -3, ... when taken, a given one needs --force."""
    check_out(out)
    root = Path(out)
    if name:
        path = root / slug(name)
        if path.exists() and any(path.iterdir()):
            if not force:
                raise ImgclfError(f"{path} already holds a run; choose another --name, resume it with --resume {path}, or pass --force to replace it.")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = slug(default_name)
    for i in range(1, 10_000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ImgclfError(f"{root}: too many runs named {base}; pass --name.")
