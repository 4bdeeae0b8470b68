"""User-facing errors: one sentence naming the thing and the fix, printed without a traceback."""

import re

_COLOURS = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes some libraries put in their messages


def one_line(text: str) -> str:
    """Text as one line of plain words: newlines folded, terminal colour codes removed."""
    return _COLOURS.sub("", " ".join(str(text).split()))


class ImgclfError(Exception):
    """An error caused by the user's input or environment, not by a bug in imgclf."""


class DataError(ImgclfError):
    """A dataset, file or array that cannot be used as given."""
