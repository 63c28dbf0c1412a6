"""N-way K-shot classification episodes from any class-indexed image store.

An episode draws N classes (optionally all from one alphabet/group), then K
support and Q query images per class without replacement, and relabels the
classes 0..N-1 in random order. With ``rotations`` every class c and rotation
r in {0, 90, 180, 270} degrees is a distinct class (4x the classes), as in the
MAML and ProtoNets papers. Images become float [C, H, W] in [0, 1]; training
episodes may get per-image affine jitter (``task.augment``, tasks/augment.py).
"""
from __future__ import annotations

import numpy as np

from distmeta.schema import ConfigError
from distmeta.data.base import ImageClassDataset
from distmeta.registry import TASKS
from distmeta.tasks.augment import affine_jitter
from distmeta.tasks.base import TaskDistribution


class EpisodeSampler(TaskDistribution):
    kind = "classification"

    def __init__(self, dataset: ImageClassDataset, ways: int, shots: int, queries: int,
                 rotations: bool = False, within_group: bool = False, split: str = "train", augment=None,
                 shots_field: str = "task.shots"):
        self.data, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.augment = augment
        self.rotations, self.within_group = rotations, within_group
        img = dataset.images
        self.input_shape = (1, *img.shape[1:3]) if img.ndim == 3 else (img.shape[3], *img.shape[1:3])
        self.output_dim = ways
        n_rot = 4 if rotations else 1
        self.num_classes = dataset.num_classes * n_rot
        per_class = min((len(dataset.indices_of(c)) for c in range(dataset.num_classes)), default=0)
        if self.num_classes < ways:
            raise ConfigError(f"task.ways: {ways} exceeds the {self.num_classes} classes of split {split!r}")
        if shots + queries > per_class:
            raise ConfigError(f"{shots_field} + task.queries: {shots + queries} exceeds the {per_class} "
                              f"images per class of split {split!r}")
        self.groups = []
        if within_group:
            self.groups = [np.array([c * n_rot + r for c in cls for r in range(n_rot)])
                           for cls in dataset.classes_by_group().values() if len(cls) * n_rot >= ways]
            if not self.groups:
                raise ConfigError(f"task.within_group: no alphabet of split {split!r} has {ways} classes")

    def sample(self, seed: int):
        rng = np.random.default_rng(seed)
        if self.within_group:
            pool = self.groups[rng.integers(len(self.groups))]
            classes = rng.choice(pool, self.ways, replace=False)
        else:
            classes = rng.choice(self.num_classes, self.ways, replace=False)
        n_rot = 4 if self.rotations else 1
        xs, ys, xq, yq = [], [], [], []
        for label, virtual in enumerate(classes):
            cls, rot = divmod(int(virtual), n_rot)
            idx = rng.choice(self.data.indices_of(cls), self.shots + self.queries, replace=False)
            imgs = self.data.images[idx]
            if rot:
                imgs = np.rot90(imgs, rot, axes=(1, 2))
            xs.append(imgs[: self.shots]), xq.append(imgs[self.shots:])
            ys += [label] * self.shots
            yq += [label] * self.queries
        support_x, query_x = self._float(np.concatenate(xs)), self._float(np.concatenate(xq))
        if self.augment is not None:  # drawn last: the episode's classes and images do not change
            support_x, query_x = (affine_jitter(x, rng, self.augment) for x in (support_x, query_x))
        return {"support_x": support_x, "support_y": np.array(ys, np.int64),
                "query_x": query_x, "query_y": np.array(yq, np.int64),
                "seed": np.int64(seed % (2 ** 62))}

    @staticmethod
    def _float(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32) / 255.0
        return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@TASKS.register("classification")
def classification(task_cfg, datasets, split):
    if split not in datasets:
        raise ConfigError(f"data: the dataset has no {split!r} split (needed by task.kind=classification)")
    training = split == "train"
    ways = task_cfg.train_ways if (training and task_cfg.train_ways) else task_cfg.ways
    shots = task_cfg.train_shots if (training and task_cfg.train_shots) else task_cfg.shots
    return EpisodeSampler(datasets[split], ways, shots, task_cfg.queries,
                          task_cfg.rotations, task_cfg.within_group, split,
                          task_cfg.augment if split == "train" else None,
                          "task.train_shots" if shots != task_cfg.shots else "task.shots")


classification.kind, classification.inputs = "classification", "images"
