"""The one walk over folders of images: training, `data inspect` and `predict` list the same files.

Users' folders hold more than images: Jupyter's .ipynb_checkpoints copies, macOS's __MACOSX and ._
files, NAS thumbnail folders, links that tie datasets together and sometimes loop. Hidden and system
folders are never entered; hidden files and non-image names are reported, not errors. Links are
followed, but no real folder is entered twice and no real file is listed twice, so a loop or a second
path to the same pictures can neither multiply a class nor give its images a second label.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.data.skips import SkipLog

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
HIDDEN_FILES = {"thumbs.db", "desktop.ini"}
# Folders that operating systems, NAS boxes and tools create beside people's files; compared lower-case.
SYSTEM_FOLDERS = {"__macosx", "@eadir", "$recycle.bin", "system volume information", "__pycache__"}


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in HIDDEN_FILES


def is_system_folder(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FOLDERS


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Walker:
    """Lists image files under folders, remembering across calls which real folders and files it listed.

    fence: folders whose images carry a label of their own (the class folders of every split). A link
    from one of them into another, or to a folder holding one, is refused: its images would be listed
    under two labels, or a test image would leak into training.
    """

    def __init__(self, skips: SkipLog | None = None, fence: list[Path] | None = None):
        self.skips = skips if skips is not None else SkipLog()
        self.fence = {os.path.realpath(p): str(p) for p in fence or []}
        self.entered: dict[str, str] = {}  # real folder -> the path it was entered by
        self.listed: dict[str, str] = {}  # real file -> the path it was listed by
        self.refused: set[str] = set()  # top folders given to images() that were already listed

    def images(self, top: str | Path) -> list[str]:
        """Image files under top in torchvision ImageFolder's order: by folder path, then by name."""
        top = str(top)
        top_real = os.path.realpath(top)
        if top_real in self.entered:
            self.skips.add(top, f"a link to a folder already listed as {self.entered[top_real]}", error=False)
            self.refused.add(top)
            return []
        self.entered[top_real] = top
        folders: list[tuple[str, list[str]]] = []
        stack = [(top, top_real)]
        while stack:
            path, real = stack.pop()
            files, subfolders = self._scan(path, real, top_real)
            folders.append((path, files))
            stack.extend(reversed(subfolders))  # the first name is entered first
        folders.sort(key=lambda f: f[0])
        return [f for _, files in folders for f in files]

    def _scan(self, path: str, real: str, top_real: str) -> tuple[list[str], list[tuple[str, str]]]:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as err:
            self.skips.add(path, f"unreadable folder: {err.strerror or err}", fix="check its permissions")
            return [], []
        files, subfolders = [], []
        for entry in entries:
            if entry.is_dir():
                child = self._folder(entry, real, top_real)
                if child:
                    subfolders.append((entry.path, child))
            else:
                found = self._file(entry, real, top_real)
                if found:
                    files.append(found)
        return files, subfolders

    def _folder(self, entry: os.DirEntry, parent_real: str, top_real: str) -> str | None:
        """The real path of a folder to enter, or None when it is skipped (and why is recorded)."""
        if is_system_folder(entry.name):
            self.skips.add(entry.path, "hidden or system folder: not searched", error=False)
            return None
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if _inside(parent_real, real):
                self.skips.add(entry.path, f"link loop: the link leads back to {real}, which holds it; not followed", error=False)
                return None
            if self._crosses_fence(real, top_real, entry.path):
                return None
        else:
            real = os.path.join(parent_real, entry.name)
        if real in self.entered:
            self.skips.add(entry.path, f"the same folder as {self.entered[real]}, already listed; not searched again", error=False)
            return None
        self.entered[real] = entry.path
        return real

    def _file(self, entry: os.DirEntry, parent_real: str, top_real: str) -> str | None:
        """The path of an image file to list, or None when it is skipped (and why is recorded)."""
        if is_hidden(entry.name):
            self.skips.add(entry.path, "hidden or system file", error=False)
            return None
        if not is_image_name(entry.name):
            self.skips.add(entry.path, "not an image file name (extension)", error=False)
            return None
        link = entry.is_symlink()
        if not entry.is_file():
            if link:
                self.skips.add(entry.path, f"unreadable: a link to a missing file ({os.readlink(entry.path)})", fix="restore its target or remove the link")
            else:
                self.skips.add(entry.path, "not a regular file (a device, pipe or socket)")
            return None
        real = os.path.realpath(entry.path) if link else os.path.join(parent_real, entry.name)
        if link and self._crosses_fence(real, top_real, entry.path):
            return None
        if real in self.listed:
            self.skips.add(entry.path, f"the same file as {self.listed[real]}, already listed", error=False)
            return None
        self.listed[real] = entry.path
        return entry.path

    def _crosses_fence(self, real: str, top_real: str, path: str) -> bool:
        """Whether a link from the folder being listed reaches into, or holds, another labeled folder."""
        if _inside(real, top_real):
            return False
        for fenced, name in self.fence.items():
            if fenced != top_real and (_inside(real, fenced) or _inside(fenced, real)):
                self.skips.add(path, f"a link into {name}, another class or split: its images would be listed twice "
                                     f"under two labels; not followed", error=False)
                return True
        return False


def image_files(folder: str | Path, skips: SkipLog | None = None) -> list[str]:
    """Image files under one folder, recursively, by the rules above (prediction's inputs)."""
    return Walker(skips).images(folder)
