"""imgclf's console messages: shown by default, left alone when the application configures logging."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("imgclf")


def ensure_console(verbose: bool = False) -> None:
    """Print imgclf's INFO messages to stderr unless the application has set up logging itself."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    if verbose:
        log.setLevel(logging.DEBUG)
    elif log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
