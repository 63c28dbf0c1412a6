"""Dataset readers and stores.

Contract: the readers register the dataset factories ``omniglot`` (official zips),
``parquet`` (a store written by ``distmeta data prepare``) and ``miniimagenet``
(Ravi-Larochelle layout) in ``distmeta.registry.DATASETS`` (``distmeta.builtin``
imports them). Each factory takes a ``DataConfig`` and returns
``{"train"|"val"|"test": ImageClassDataset}`` (a split that selects no classes is
left out). Every data problem a user can fix raises :class:`DataError` with a
one-line message.
"""
from distmeta.data.base import ImageClassDataset
from distmeta.errors import DataError

__all__ = ["DataError", "ImageClassDataset"]
