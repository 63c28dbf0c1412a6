"""Imports the built-in components so that they register themselves."""
from distmeta.registry import DATASETS

import distmeta.algorithms.maml  # noqa: F401
import distmeta.algorithms.protonet  # noqa: F401
import distmeta.algorithms.reptile  # noqa: F401
import distmeta.algorithms.siamese  # noqa: F401
import distmeta.models.backbones  # noqa: F401
import distmeta.tasks.episodes  # noqa: F401
import distmeta.tasks.sinusoid  # noqa: F401

import distmeta.data.omniglot  # noqa: F401  (the data readers register omniglot, parquet, miniimagenet)
import distmeta.data.store  # noqa: F401
import distmeta.data.miniimagenet  # noqa: F401

DATASETS.register("none", lambda data_cfg: {})
