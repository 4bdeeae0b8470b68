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

    Links are followed only after every real folder and file of a walk is listed, so that when a link
    and the real path lead to the same picture, the real path is the one kept.
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
            self.skips.add(top, f"same folder twice: already listed as {self.entered[top_real]}", error=False)
            self.refused.add(top)
            return []
        self.entered[top_real] = top
        folders: list[tuple[str, list[str]]] = []
        stack = [(top, top_real)]
        links: list[tuple[os.DirEntry, str, int]] = []  # (entry, real parent, index in folders), followed last
        while stack or links:
            if not stack:
                pending, links = links, []
                for entry, parent_real, where in pending:
                    if entry.is_dir():
                        real = self._folder_link(entry, parent_real, top_real)
                        if real:
                            stack.append((entry.path, real))
                    elif self._file_link(entry, top_real):
                        folders[where][1].append(entry.path)
                continue
            path, real = stack.pop()
            files, subfolders, found_links = self._scan(path, real)
            links += [(entry, real, len(folders)) for entry in found_links]
            folders.append((path, files))
            stack.extend(reversed(subfolders))  # the first name is entered first
        folders.sort(key=lambda f: f[0])
        return [f for _, files in folders for f in sorted(files)]

    def _scan(self, path: str, real: str) -> tuple[list[str], list[tuple[str, str]], list[os.DirEntry]]:
        """A folder's image files and subfolders to enter, and the links in it (image files or folders)."""
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as err:
            self.skips.add(path, f"unreadable folder: {err.strerror or err}", fix="check its permissions")
            return [], [], []
        files, subfolders, links = [], [], []
        for entry in entries:
            if entry.is_dir():
                if is_system_folder(entry.name):
                    self.skips.add(entry.path, "hidden or system folder: not searched", error=False)
                elif entry.is_symlink():
                    links.append(entry)
                elif (child := self._unseen_folder(os.path.join(real, entry.name), entry.path)) is not None:
                    subfolders.append((entry.path, child))
            elif self._image_name(entry):
                if entry.is_symlink():
                    links.append(entry)
                elif self._regular(entry) and self._unseen_file(os.path.join(real, entry.name), entry.path):
                    files.append(entry.path)
        return files, subfolders, links

    def _image_name(self, entry: os.DirEntry) -> bool:
        if is_hidden(entry.name):
            self.skips.add(entry.path, "hidden or system file", error=False)
            return False
        if not is_image_name(entry.name):
            self.skips.add(entry.path, "not an image file name (extension)", error=False)
            return False
        return True

    def _regular(self, entry: os.DirEntry) -> bool:
        if entry.is_file():
            return True
        if entry.is_symlink():
            self.skips.add(
                entry.path, f"unreadable: a link to a missing file ({os.readlink(entry.path)})", fix="restore its target or remove the link"
            )
        else:
            self.skips.add(entry.path, "not a regular file (a device, pipe or socket)")
        return False

    def _unseen_folder(self, real: str, path: str) -> str | None:
        if real in self.entered:
            self.skips.add(path, f"same folder twice: already listed as {self.entered[real]}; not searched again", error=False)
            return None
        self.entered[real] = path
        return real

    def _unseen_file(self, real: str, path: str) -> bool:
        if real in self.listed:
            self.skips.add(path, f"same file twice: already listed as {self.listed[real]}", error=False)
            return False
        self.listed[real] = path
        return True

    def _folder_link(self, entry: os.DirEntry, parent_real: str, top_real: str) -> str | None:
        """The real path of a linked folder to enter, or None when it is skipped (and why is recorded)."""
        real = os.path.realpath(entry.path)
        if _inside(parent_real, real):
            self.skips.add(entry.path, f"link loop: leads back to {real}, which holds the link; not followed", error=False)
            return None
        if self._crosses_fence(real, top_real, entry.path):
            return None
        return self._unseen_folder(real, entry.path)

    def _file_link(self, entry: os.DirEntry, top_real: str) -> bool:
        real = os.path.realpath(entry.path)
        return self._regular(entry) and not self._crosses_fence(real, top_real, entry.path) and self._unseen_file(real, entry.path)

    def _crosses_fence(self, real: str, top_real: str, path: str) -> bool:
        """Whether a link from the folder being listed reaches into, or holds, another labeled folder."""
        if _inside(real, top_real):
            return False
        for fenced, name in self.fence.items():
            if fenced != top_real and (_inside(real, fenced) or _inside(fenced, real)):
                self.skips.add(
                    path,
                    f"link into another class or split: {name}; its images would be listed twice under two labels, so it is not followed",
                    error=False,
                )
                return True
        return False


def image_files(folder: str | Path, skips: SkipLog | None = None) -> list[str]:
    """Image files under one folder, recursively, by the rules above (prediction's inputs)."""
    return Walker(skips).images(folder)
