"""What image libraries say while decoding, caught file by file instead of flooding the terminal.

Pillow speaks through Python warnings (a malformed MPO, corrupt EXIF, odd palettes); libtiff and other
C decoders write straight to file descriptor 2, which no Python setting can silence. During a chunk of
files, warnings are recorded and descriptor 2 points at a temporary file; after each file, whatever
appeared is attributed to it. Only Python's standard library: this runs in the decoding workers.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings

MAX_TEXT = 500  # characters kept per file: a corrupt file can make a decoder repeat itself for pages


class NoiseCatcher:
    """Context manager for one chunk of files; `take()` after each file returns what it caused."""

    def __enter__(self) -> NoiseCatcher:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._sink = tempfile.TemporaryFile()
        os.dup2(self._sink.fileno(), 2)
        self._read = 0
        self._catcher = warnings.catch_warnings(record=True)
        self._log = self._catcher.__enter__()
        warnings.simplefilter("always")  # every warning of every file, not once per place in Pillow
        return self

    def take(self) -> str | None:
        """Everything said since the last call, as one line, or None when nothing was."""
        said = [f"{w.category.__name__}: {w.message}" for w in self._log]
        self._log.clear()
        end = os.fstat(self._sink.fileno()).st_size
        if end > self._read:
            text = os.pread(self._sink.fileno(), end - self._read, self._read).decode("utf-8", "replace")
            said += [line.strip() for line in text.splitlines() if line.strip()]
            self._read = end
        return "; ".join(dict.fromkeys(said))[:MAX_TEXT] if said else None

    def __exit__(self, *exc) -> None:
        self._catcher.__exit__(*exc)
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._sink.close()


def merged(*texts: str | None) -> str:
    """Several take() lines about one file as one, each message once."""
    return "; ".join(dict.fromkeys(part for text in texts if text for part in text.split("; ")))[:MAX_TEXT]
