"""mini-ImageNet in the Ravi & Larochelle (2017) layout.

Contract: ``load_split(root, split, image_size)`` reads ``<root>/<split>.csv`` (header
``filename,label``) and the files it names under ``<root>/images/`` into an
``ImageClassDataset``: RGB uint8 ``[N, size, size, 3]`` (resized with Lanczos when not
already that size), images in CSV order, classes = label names in first-appearance
order, groups = the split name. Results are cached per process. ``root`` resolves as
given, else ``$DISTMETA_MINIIMAGENET_DIR``, else ``~/.cache/distmeta/miniimagenet``;
nothing is downloaded (the images come under ImageNet's terms). The registered factory
``miniimagenet`` returns the three CSV splits at ``data.image_size`` (set it to 84).
"""
from __future__ import annotations

import csv
import functools
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from distmeta.schema import DataConfig
from distmeta.errors import DataError
from distmeta.data.base import ImageClassDataset
from distmeta.registry import DATASETS

ROOT_ENV = "DISTMETA_MINIIMAGENET_DIR"
DEFAULT_ROOT = "~/.cache/distmeta/miniimagenet"
SPLITS = ("train", "val", "test")


def resolve_root(root: Optional[Union[str, Path]] = None) -> Path:
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def read_csv(path: Union[str, Path]) -> List[Tuple[str, str]]:
    """(filename, label) rows of a split CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path.name} not found in {path.parent}: expected the Ravi-Larochelle "
                        f"layout (train.csv, val.csv, test.csv and images/)")
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise DataError(f"{path}: expected the header 'filename,label', got {header}")
        rows = [(r[0].strip(), r[1].strip()) for r in reader if r]
    if not rows:
        raise DataError(f"{path}: lists no images")
    return rows


def load_split(root: Union[str, Path], split: str, image_size: int = 84) -> ImageClassDataset:
    if split not in SPLITS:
        raise DataError(f"unknown mini-ImageNet split {split!r}; available: {', '.join(SPLITS)}")
    csv_path = (resolve_root(root) / f"{split}.csv").resolve()
    if not csv_path.is_file():
        read_csv(csv_path)  # raises the explanatory error
    images, labels, classes = _load_cached(str(csv_path), int(image_size), csv_path.stat().st_mtime_ns)
    return ImageClassDataset(images, labels, list(classes), [split] * len(classes))


@functools.lru_cache(maxsize=4)
def _load_cached(csv_path: str, image_size: int, _mtime_ns: int):
    rows = read_csv(csv_path)
    folder = Path(csv_path).parent / "images"
    images = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)
    for i, (name, _) in enumerate(rows):
        try:
            with Image.open(folder / name) as im:
                im = im.convert("RGB")
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.LANCZOS)
                images[i] = np.asarray(im)
        except FileNotFoundError:
            raise DataError(f"{name} (listed in {Path(csv_path).name}) not found in {folder}") from None
        except Exception as exc:  # PIL raises several unrelated types for bad data
            raise DataError(f"{folder / name}: cannot decode image ({exc})") from None
    classes = list(dict.fromkeys(label for _, label in rows))
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[label] for _, label in rows], dtype=np.int64)
    return images, labels, tuple(classes)


@DATASETS.register("miniimagenet")
def miniimagenet_splits(data_cfg: DataConfig) -> Dict[str, ImageClassDataset]:
    """train/val/test from the CSVs under ``data.root``."""
    root = resolve_root(data_cfg.root)
    return {s: load_split(root, s, data_cfg.image_size) for s in SPLITS}
