"""Omniglot read straight from the official zips.

Contract: ``load_set(name, root, image_size)`` returns one official set (``background``,
``evaluation``, ``background_small1``, ``background_small2``) from
``<root>/images_<name>.zip`` (layout ``<stem>/<Alphabet>/characterNN/<id>_<drawer>.png``)
as an ``ImageClassDataset``: images resized to ``image_size`` and inverted (uint8,
255 = ink), classes ``"Alphabet/characterNN"`` in sorted order, a class's images in
file-name order, groups = alphabets. Decoded zips are cached per process, keyed by
(path, size, mtime). ``root`` resolves as given, else ``$DISTMETA_DATA_DIR``, else
``~/.cache/distmeta/omniglot``. The registered factory ``omniglot`` turns a
``DataConfig`` into train/val/test datasets (see ``distmeta.data.splits``).
"""
from __future__ import annotations

import functools
import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
from PIL import Image

from distmeta.schema import DataConfig
from distmeta.errors import DataError
from distmeta.data.base import ImageClassDataset
from distmeta.data.download import fetch_omniglot, resolve_base_url
from distmeta.data.splits import build_splits
from distmeta.registry import DATASETS

SETS = {
    "background": "images_background",
    "evaluation": "images_evaluation",
    "background_small1": "images_background_small1",
    "background_small2": "images_background_small2",
}
ROOT_ENV = "DISTMETA_DATA_DIR"
SHIPPED = Path(__file__).resolve().parent / "omniglot_minimal"   # background_small1/2, MIT (LICENSE there)
DEFAULT_ROOT = "~/.cache/distmeta/omniglot"
NATIVE_SIZE = 105


@dataclass(frozen=True)
class ZipEntry:
    """One image file of an Omniglot zip."""
    member: str       # path inside the zip
    alphabet: str
    character: str    # "characterNN"
    file: str         # "0108_01.png"

    @property
    def class_name(self) -> str:
        return f"{self.alphabet}/{self.character}"

    @property
    def drawer(self) -> str:
        stem = self.file.rsplit(".", 1)[0]
        return stem.split("_", 1)[1] if "_" in stem else stem


def resolve_root(root: Optional[Union[str, Path]] = None) -> Path:
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def zip_stem(set_name: str) -> str:
    if set_name not in SETS:
        raise DataError(f"unknown Omniglot set {set_name!r}; available: {', '.join(SETS)}")
    return SETS[set_name]


def ensure_zip(set_name: str, root: Optional[Union[str, Path]] = None, *, download: bool = False,
               base_url: Optional[str] = None, verify: bool = True) -> Path:
    """Path of the set's zip, downloading it first when missing and ``download`` is true;
    an existing official zip is MD5-checked once (``verify``)."""
    stem, folder = zip_stem(set_name), resolve_root(root)
    path = folder / f"{stem}.zip"
    if not path.is_file() and (SHIPPED / f"{stem}.zip").is_file():
        path = SHIPPED / f"{stem}.zip"   # the minimal sets ship with distmeta
    if path.is_file():
        if verify:
            verify_once(path, stem)
        return path
    if not download:
        raise DataError(f"{stem}.zip not found in {folder}: put the official file there "
                        f"({resolve_base_url(base_url)}/{stem}.zip) or allow downloading (data.download: true)")
    return fetch_omniglot(stem, folder, base_url)


def verify_once(path: Path, stem: str) -> None:
    """MD5-check an existing official zip once; the verified (path, size, mtime) is remembered in
    the user's cache (``~/.cache/distmeta/verified``), so later runs do not hash it again and the
    data folder is never written to. A mismatch is one line."""
    from distmeta.data.download import OMNIGLOT_MD5, md5sum

    expected = OMNIGLOT_MD5.get(stem)
    if expected is None:
        return
    import hashlib

    stat = path.stat()
    stamp = f"{expected} {stat.st_size} {stat.st_mtime_ns}"
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]
    marker = Path(os.environ.get("DISTMETA_CACHE", Path.home() / ".cache" / "distmeta")) / "verified" / key
    try:
        if marker.read_text() == stamp:
            return
    except OSError:
        pass
    actual = md5sum(path)
    if actual != expected:
        raise DataError(f"{path}: MD5 {actual} differs from the official {expected}; delete the file and "
                        f"download it again")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(stamp)
    except OSError:  # a read-only cache: verified again next time
        pass


def open_zip(path: Union[str, Path]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip file ({exc}); delete it and download it again") from None


def list_entries(zf: zipfile.ZipFile) -> List[ZipEntry]:
    """The zip's PNGs sorted by (alphabet, character, file)."""
    entries = []
    for member in zf.namelist():
        parts = member.split("/")
        if len(parts) >= 3 and parts[-1].lower().endswith(".png") and not parts[-1].startswith("."):
            entries.append(ZipEntry(member, parts[-3], parts[-2], parts[-1]))
    if not entries:
        raise DataError(f"{zf.filename}: no <Alphabet>/<character>/*.png images inside; "
                        f"is it an Omniglot zip?")
    return sorted(entries, key=lambda e: (e.alphabet, e.character, e.file))


def preprocess(png: bytes, image_size: int = 28, where: str = "image") -> np.ndarray:
    """Decode an Omniglot PNG, resize it to ``image_size`` (Lanczos) and invert it (255 = ink)."""
    try:
        image = Image.open(io.BytesIO(png)).convert("L")
    except Exception as exc:  # PIL raises several unrelated types for bad data
        raise DataError(f"{where}: cannot decode image ({exc})") from None
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.LANCZOS)
    return 255 - np.asarray(image, dtype=np.uint8)


def read_zip(path: Union[str, Path], image_size: int = 28) -> ImageClassDataset:
    """Every image of one Omniglot zip (cached per process)."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        raise DataError(f"{path.name} not found in {path.parent}") from None
    images, labels, classes = _read_zip_cached(str(path), int(image_size), stat.st_mtime_ns, stat.st_size)
    return ImageClassDataset(images, labels, list(classes))


@functools.lru_cache(maxsize=8)
def _read_zip_cached(path: str, image_size: int, _mtime_ns: int, _size: int):
    with open_zip(path) as zf:
        entries = list_entries(zf)
        images = np.empty((len(entries), image_size, image_size), dtype=np.uint8)
        for i, e in enumerate(entries):
            try:
                data = zf.read(e.member)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise DataError(f"{path}: corrupt member {e.member} ({exc})") from None
            images[i] = preprocess(data, image_size, f"{path}:{e.member}")
    classes = sorted({e.class_name for e in entries})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[e.class_name] for e in entries], dtype=np.int64)
    return images, labels, tuple(classes)


def load_set(set_name: str, root: Optional[Union[str, Path]] = None, image_size: int = 28, *,
             download: bool = False, base_url: Optional[str] = None, verify: bool = True) -> ImageClassDataset:
    """One official set by config name, e.g. ``load_set("background_small1", root)``."""
    return read_zip(ensure_zip(set_name, root, download=download, base_url=base_url, verify=verify), image_size)


@DATASETS.register("omniglot")
def omniglot_splits(data_cfg: DataConfig) -> Dict[str, ImageClassDataset]:
    """train/val/test from the zips: ``data.preset`` if set, else the three SplitSpecs."""
    def load(name: str) -> ImageClassDataset:
        return load_set(name, data_cfg.root, data_cfg.image_size, download=data_cfg.download,
                        base_url=data_cfg.base_url, verify=data_cfg.verify_md5)

    return build_splits(data_cfg, load)
