"""User-facing errors: one sentence naming the thing and the fix, printed without a traceback."""


class ImgclfError(Exception):
    """An error caused by the user's input or environment, not by a bug in imgclf."""


class DataError(ImgclfError):
    """A dataset, file or array that cannot be used as given."""
