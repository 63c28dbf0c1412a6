"""Helpers shared by the benchmark scripts (never run as tests).

- ``SYNTHETIC_OMNIGLOT``: a dataset registered under that name whose images have
  Omniglot's shape (28x28 uint8, 20 images per class, grouped in "alphabets"),
  made from a fixed seed, so every process that imports this module builds the
  same arrays. Used when the official zips are not found.
- ``omniglot_maml_config`` / ``sinusoid_maml_config``: the config dicts of the
  two benchmark workloads.
- ``timed``: median/mean of repeated timings.

Importing this module imports torch and distmeta's config/registry only (no Ray).
"""
from __future__ import annotations

import os

# Before torch loads (libgomp reads its environment once, at load): passive
# OpenMP waits, which a small shared machine needs (docs/architecture.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))

SYNTHETIC_OMNIGLOT = "synthetic_omniglot"
DEFAULT_OMNIGLOT_ROOT = REPO / "distmeta" / "data" / "omniglot_minimal"   # shipped with distmeta


def synthetic_images(classes: int = 136, per_class: int = 20, size: int = 28, seed: int = 0):
    """Omniglot-shaped data: sparse random strokes per class plus per-image noise."""
    from distmeta.data.base import ImageClassDataset

    rng = np.random.default_rng(seed)
    protos = (rng.random((classes, size, size)) < 0.15)
    images = np.empty((classes * per_class, size, size), dtype=np.uint8)
    for c in range(classes):
        flips = rng.random((per_class, size, size)) < 0.05
        images[c * per_class:(c + 1) * per_class] = (protos[c][None] ^ flips) * 255
    labels = np.repeat(np.arange(classes), per_class)
    names = [f"Alphabet{c // 20:02d}/character{c % 20 + 1:02d}" for c in range(classes)]
    return ImageClassDataset(images, labels, names)


def _synthetic_factory(data_cfg) -> Dict[str, Any]:
    train = synthetic_images(seed=data_cfg.seed)
    return {"train": train, "val": train, "test": train}


def register_synthetic() -> None:
    """Register ``synthetic_omniglot`` (idempotent); safe as a Ray worker setup hook."""
    import distmeta.builtin  # noqa: F401  (the built-ins first, as validate() does)
    from distmeta.registry import DATASETS

    if SYNTHETIC_OMNIGLOT not in DATASETS:
        DATASETS.register(SYNTHETIC_OMNIGLOT, _synthetic_factory)


register_synthetic()


def find_omniglot(root: Optional[str]) -> Optional[Path]:
    """The folder holding ``images_background_small1.zip``, or None."""
    for candidate in ([Path(root)] if root else []) + [DEFAULT_OMNIGLOT_ROOT]:
        if (candidate / "images_background_small1.zip").is_file():
            return candidate.resolve()
        if root:  # an explicit root that lacks the file: do not fall back silently
            return None
    return None


def omniglot_maml_config(root: Optional[Path], meta_batch: int = 32, queries: int = 1,
                         first_order: bool = False, executor: str = "loop", workers: int = 0,
                         inner_steps: int = 1) -> Dict[str, Any]:
    """conv4 MAML, Omniglot 5-way 1-shot (Finn et al. 2017: meta-batch 32, inner lr 0.4,
    1 inner step in training, K query images per class), second order by default."""
    data = ({"dataset": "omniglot", "preset": "minimal", "root": str(root), "image_size": 28, "download": False}
            if root is not None else {"dataset": SYNTHETIC_OMNIGLOT, "image_size": 28})
    return {
        "name": "bench-omniglot-maml", "seed": 0, "data": data,
        "task": {"kind": "classification", "ways": 5, "shots": 1, "queries": queries, "rotations": True},
        "model": {"name": "conv4", "channels": 64},
        "algorithm": {"name": "maml", "inner_steps": inner_steps, "inner_lr": 0.4,
                      "first_order": first_order, "executor": executor},
        "optim": {"meta_batch": meta_batch, "steps": 1000},
        "engine": {"workers": workers, "num_cpus": 1, "device": "cpu", "shard_timeout_s": 600},
    }


def sinusoid_maml_config(meta_batch: int = 25, workers: int = 0, executor: str = "auto") -> Dict[str, Any]:
    """experiments/sinusoid_maml.yaml's workload (MLP 40-40, 10 shots, 1 inner step)."""
    return {
        "name": "bench-sinusoid-maml", "seed": 0, "data": {"dataset": "none"},
        "task": {"kind": "sinusoid", "shots": 10, "queries": 10},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "algorithm": {"name": "maml", "inner_steps": 1, "inner_lr": 0.01, "executor": executor},
        "optim": {"meta_batch": meta_batch, "steps": 1000},
        "engine": {"workers": workers, "num_cpus": 1, "device": "cpu", "shard_timeout_s": 600},
    }


def summary(samples: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(samples), "median": statistics.median(samples),
            "min": min(samples), "max": max(samples)}


def quiet_threads() -> None:
    """Thread settings for a small shared machine (docs/architecture.md): passive OpenMP waits."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
