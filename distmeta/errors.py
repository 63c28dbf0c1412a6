"""User-facing errors: each carries a one-line message naming what is wrong."""


class DistmetaError(RuntimeError):
    """A run cannot start or continue; the message names the cause."""


class NonFiniteError(DistmetaError):
    """A loss, gradient or score stopped being finite: the run stops before applying it."""


class DataError(DistmetaError, ValueError):
    """Data missing, corrupt or wrongly selected; the message names the file or field."""
