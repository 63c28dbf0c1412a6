"""The in-memory form every image dataset reader returns.

Contract: ``images[i]`` is a uint8 image (``[H, W]`` grayscale or ``[H, W, 3]``
RGB) whose class is ``labels[i]``, an index into ``classes`` (a unique name such
as ``"Greek/character01"``). ``groups[c]`` names the group of class ``c`` (the
alphabet for Omniglot), used for held-out-alphabet splits and within-alphabet
episodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np


@dataclass
class ImageClassDataset:
    images: np.ndarray
    labels: np.ndarray
    classes: List[str]
    groups: List[str] = field(default_factory=list)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        if not self.groups:
            self.groups = [c.split("/")[0] for c in self.classes]
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(len(self.classes) + 1))
        self._by_class = [order[bounds[c]: bounds[c + 1]] for c in range(len(self.classes))]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def indices_of(self, class_id: int) -> np.ndarray:
        """Image indices of class ``class_id`` in file order."""
        return self._by_class[class_id]

    def classes_by_group(self) -> Dict[str, List[int]]:
        out: Dict[str, List[int]] = {}
        for c, g in enumerate(self.groups):
            out.setdefault(g, []).append(c)
        return out

    def subset(self, class_ids: Sequence[int]) -> "ImageClassDataset":
        """A dataset holding only ``class_ids`` (relabelled 0..len-1 in the given order)."""
        class_ids = list(class_ids)
        remap = {c: i for i, c in enumerate(class_ids)}
        keep = np.concatenate([self._by_class[c] for c in class_ids]) if class_ids else np.zeros(0, np.int64)
        return ImageClassDataset(
            images=self.images[keep],
            labels=np.array([remap[int(l)] for l in self.labels[keep]], dtype=np.int64),
            classes=[self.classes[c] for c in class_ids],
            groups=[self.groups[c] for c in class_ids],
        )

    def select_groups(self, include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None) -> "ImageClassDataset":
        known = set(self.groups)
        for name in list(include or []) + list(exclude or []):
            if name not in known:
                raise ValueError(f"unknown alphabet/group {name!r}; available: {', '.join(sorted(known))}")
        ids = [c for c, g in enumerate(self.groups)
               if (include is None or g in include) and (exclude is None or g not in exclude)]
        return self.subset(ids)

    @staticmethod
    def concat(parts: Sequence["ImageClassDataset"]) -> "ImageClassDataset":
        images, labels, classes, groups, offset = [], [], [], [], 0
        for p in parts:
            images.append(p.images)
            labels.append(p.labels + offset)
            classes += p.classes
            groups += p.groups
            offset += p.num_classes
        return ImageClassDataset(np.concatenate(images), np.concatenate(labels), classes, groups)
