"""Dataset readers and stores.

Contract: importing ``distmeta.data`` registers the dataset factories ``omniglot``
(official zips), ``parquet`` (a store written by ``distmeta data prepare``) and
``miniimagenet`` (Ravi-Larochelle layout) in ``distmeta.registry.DATASETS``. Each
factory takes a ``DataConfig`` and returns ``{"train"|"val"|"test": ImageClassDataset}``
(a split that selects no classes is left out). Every data problem a user can fix
raises :class:`DataError` with a one-line message.
"""
from distmeta.errors import DistmetaError


class DataError(DistmetaError, ValueError):
    """Data missing, corrupt or wrongly selected; the message names the file or field."""


from distmeta.data.base import ImageClassDataset  # noqa: E402
from distmeta.data import miniimagenet, omniglot, store  # noqa: E402,F401  (register factories)

__all__ = ["DataError", "ImageClassDataset"]
