"""Image datasets as a Parquet store, on local disk or any pyarrow filesystem.

Contract: ``prepare_omniglot`` / ``prepare_miniimagenet`` write one Parquet file
(``<out>/part-0.parquet``, or ``out`` itself when it ends in ``.parquet``) with one row
per image and the columns

  label, alphabet, character, drawer, file, source_set, split : string
        (label = the reader's class name, e.g. "Greek/character01"; alphabet = its group)
  height, width : int16;  channels : int8
  image : fixed_size_binary[height*width*channels] -- the preprocessed uint8 array, row major
          (Omniglot: resized and inverted, 255 = ink), exactly what the zip reader returns

``split`` is ``""`` or comma-joined split names (``"val,test"`` for the minimal preset);
a class repeated in a later source set carries its split only on its first set's rows.
Rows are written set by set in reader order, and a dataset read back keeps that order
(classes by first appearance, images in row order; a repeated (class, file) is kept
once), so it equals the one read from the source. ``read_store`` reads a local path,
a ``file://``/``s3://``/``gs://`` URI (``pyarrow.fs.FileSystem.from_uri``) or a path on
a given ``filesystem``. The registered factory ``parquet`` reads ``data.store``: with a
preset or SplitSpecs it selects by ``source_set`` like the zip reader, else by ``split``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from distmeta.schema import DataConfig
from distmeta.errors import DataError
from distmeta.data.base import ImageClassDataset
from distmeta.data.splits import PRESET_SETS, SPLITS, build_splits, sets_used
from distmeta.registry import DATASETS

STORE_FILE = "part-0.parquet"
META_KEY = b"distmeta"
TEXT_COLUMNS = ["label", "alphabet", "character", "drawer", "file", "source_set", "split"]


def resolve_filesystem(uri: str, filesystem=None) -> Tuple[Any, str]:
    """(filesystem, path) for a local path, a URI, or a path on ``filesystem``."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if filesystem is not None:
        return filesystem, uri
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"{uri}: unsupported or unreachable store URI ({str(exc).splitlines()[0]})") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _table(ds: ImageClassDataset, files: Sequence[str], drawers: Sequence[str], source_set: str,
           split_of_class: Sequence[str]):
    import pyarrow as pa

    n = len(ds.labels)
    height, width = ds.images.shape[1:3]
    channels = ds.images.shape[3] if ds.images.ndim == 4 else 1
    alphabet = [ds.groups[c] for c in ds.labels]
    character = [ds.classes[c].split("/", 1)[-1] for c in ds.labels]
    image = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(height * width * channels), n, [None, pa.py_buffer(np.ascontiguousarray(ds.images).tobytes())])
    return pa.table({
        "label": pa.array([ds.classes[c] for c in ds.labels], pa.string()),
        "alphabet": pa.array(alphabet, pa.string()),
        "character": pa.array(character, pa.string()),
        "drawer": pa.array(list(drawers), pa.string()),
        "file": pa.array(list(files), pa.string()),
        "source_set": pa.array([source_set] * n, pa.string()),
        "split": pa.array([split_of_class[c] for c in ds.labels], pa.string()),
        "height": pa.array(np.full(n, height, np.int16)),
        "width": pa.array(np.full(n, width, np.int16)),
        "channels": pa.array(np.full(n, channels, np.int8)),
        "image": image,
    })


def _write(tables: List[Any], out: str, meta: Dict[str, Any], filesystem, overwrite: bool) -> Tuple[Any, str]:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = resolve_filesystem(out, filesystem)
    target = path if path.endswith(".parquet") else f"{path.rstrip('/')}/{STORE_FILE}"
    if not path.endswith(".parquet"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            raise DataError(f"{out}: is a file; give a folder or a path ending in .parquet")
        if info.type == pafs.FileType.Directory:
            present = fs.get_file_info(pafs.FileSelector(path))
            if present and not overwrite:
                raise DataError(f"{out}: folder is not empty; pass --overwrite (overwrite=True) to replace the store")
            others = [p.base_name for p in present if not p.base_name.endswith(".parquet")]
            if others:
                raise DataError(f"{out}: holds files that are not Parquet ({others[0]}); choose an empty folder")
            for p in present:
                fs.delete_file(p.path)
        fs.create_dir(path, recursive=True)
    elif fs.get_file_info(path).type != pafs.FileType.NotFound and not overwrite:
        raise DataError(f"{out}: exists; pass --overwrite (overwrite=True) to replace it")
    table = pa.concat_tables(tables).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    pq.write_table(table, target, filesystem=fs, compression="zstd")
    return fs, path


def prepare_omniglot(data_cfg: Optional[DataConfig], out: str, *, root: Optional[str] = None,
                     sets: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
                     preset: Optional[str] = None, filesystem=None, overwrite: bool = False) -> Dict[str, Any]:
    """Write the Omniglot ``sets`` (default: those the config's preset/SplitSpecs use) as a
    store at ``out``; keyword arguments override ``data_cfg`` fields. Returns ``store_info``."""
    from distmeta.data.omniglot import ensure_zip, list_entries, open_zip, read_zip, zip_stem

    changes = {k: v for k, v in dict(root=root, image_size=image_size, preset=preset).items() if v is not None}
    cfg = (data_cfg or DataConfig()).model_copy(update={"dataset": "omniglot", **changes})
    sets = list(sets or sets_used(cfg))
    if not sets:
        raise DataError("prepare omniglot: name the sets (--sets background_small1 ...) or a --preset")
    for name in sets + PRESET_SETS.get(cfg.preset or "", []):
        zip_stem(name)  # validates the name
    missing = [s for s in PRESET_SETS.get(cfg.preset or "", []) if s not in sets]
    if missing:
        raise DataError(f"prepare omniglot: preset {cfg.preset!r} needs the sets {', '.join(missing)} too")

    loaded: Dict[str, Tuple[ImageClassDataset, list]] = {}
    for name in sets:
        path = ensure_zip(name, cfg.root, download=cfg.download, base_url=cfg.base_url, verify=cfg.verify_md5)
        with open_zip(path) as zf:
            entries = list_entries(zf)
        loaded[name] = (read_zip(path, cfg.image_size), entries)

    def load(name: str) -> ImageClassDataset:
        if name not in loaded:
            raise DataError(f"prepare omniglot: the splits need set {name!r}; add it to --sets")
        return loaded[name][0]

    split_classes: Dict[str, set] = {}
    if cfg.preset or any(getattr(cfg, s).sets for s in SPLITS):
        split_classes = {s: set(ds.classes) for s, ds in build_splits(cfg, load).items()}
    tables, seen = [], set()
    for name, (ds, entries) in loaded.items():
        labels = [",".join(s for s in SPLITS if c not in seen and c in split_classes.get(s, ()))
                  for c in ds.classes]
        seen.update(ds.classes)
        tables.append(_table(ds, [e.file for e in entries], [e.drawer for e in entries], name, labels))
    meta = {"dataset": "omniglot", "image_size": cfg.image_size, "sets": sets, "preset": cfg.preset,
            "seed": cfg.seed, "format": 1}
    fs, path = _write(tables, out, meta, filesystem, overwrite)
    return store_info(path, filesystem=fs)


def prepare_miniimagenet(root: str, out: str, *, image_size: int = 84, filesystem=None,
                         overwrite: bool = False) -> Dict[str, Any]:
    """Write the train/val/test CSV splits of a mini-ImageNet folder as a store at ``out``."""
    from distmeta.data.miniimagenet import load_split, read_csv, resolve_root

    folder = resolve_root(root)
    tables = []
    for split in SPLITS:
        ds = load_split(folder, split, image_size)
        files = [f for f, _ in read_csv(folder / f"{split}.csv")]
        tables.append(_table(ds, files, [""] * len(files), split, [split] * ds.num_classes))
    meta = {"dataset": "miniimagenet", "image_size": image_size, "sets": list(SPLITS), "format": 1}
    fs, path = _write(tables, out, meta, filesystem, overwrite)
    return store_info(path, filesystem=fs)


STORE_COLUMNS = TEXT_COLUMNS + ["height", "width", "channels", "image"]


def read_table(uri: str, filesystem=None, columns: Optional[List[str]] = None):
    """The store's rows as a ``pyarrow.Table`` (schema metadata kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = resolve_filesystem(uri, filesystem)
    try:
        table = pq.read_table(path, filesystem=fs, columns=columns)
    except FileNotFoundError:
        raise DataError(f"{uri}: no Parquet store there (write one with `distmeta data prepare`)") from None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{uri}: not a readable Parquet store ({str(exc).splitlines()[0]})") from None
    missing = [c for c in (columns or STORE_COLUMNS) if c not in table.column_names]
    if missing:
        raise DataError(f"{uri}: a Parquet file but not a distmeta store (no column {', '.join(missing)}); "
                        f"write one with `distmeta data prepare`")
    return table


def store_metadata(table) -> Dict[str, Any]:
    raw = (table.schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def _rows_in(table, column: str, value: str) -> Any:
    if column == "split":
        mask = [value in s.split(",") for s in table.column("split").to_pylist()]
    else:
        mask = [s == value for s in table.column(column).to_pylist()]
    return table.filter(np.array(mask, dtype=bool))


def table_to_dataset(table) -> ImageClassDataset:
    """Rows -> dataset: classes in first-appearance order, a repeated (class, file) kept once."""
    import pyarrow as pa

    for col in ("height", "width", "channels"):
        if len(set(table.column(col).to_pylist())) > 1:
            raise DataError(f"store mixes image shapes (column {col}); read one source set at a time")
    names = table.column("label").to_pylist()
    keep, seen = [], set()
    for i, key in enumerate(zip(names, table.column("file").to_pylist())):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if len(keep) < len(names):
        table, names = table.take(pa.array(keep)), [names[i] for i in keep]
    classes, groups, index = [], [], {}
    for name, group in zip(names, table.column("alphabet").to_pylist()):
        if name not in index:
            index[name] = len(classes)
            classes.append(name)
            groups.append(group)
    labels = np.array([index[n] for n in names], dtype=np.int64)
    if not names:
        return ImageClassDataset(np.zeros((0, 1, 1), np.uint8), labels, [], [])
    h, w, ch = (int(table.column(c)[0].as_py()) for c in ("height", "width", "channels"))
    column = table.column("image").combine_chunks()
    size = h * w * ch
    flat = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * size:(column.offset + len(column)) * size]
    images = flat.reshape((len(column), h, w) + ((ch,) if ch > 1 else ())).copy()
    return ImageClassDataset(images, labels, classes, groups)


def read_store(uri: str, split: Optional[str] = None, *, source_set: Optional[str] = None,
               filesystem=None) -> ImageClassDataset:
    """The store's images, optionally only a ``split`` (``split`` column) or a ``source_set``."""
    table = read_table(uri, filesystem)
    if split is not None:
        table = _rows_in(table, "split", split)
    if source_set is not None:
        table = _rows_in(table, "source_set", source_set)
    return table_to_dataset(table)


@DATASETS.register("parquet")
def parquet_splits(data_cfg: DataConfig, filesystem=None) -> Dict[str, ImageClassDataset]:
    """train/val/test from ``data.store``: by source set when a preset or SplitSpecs are
    given (same rules as the zip reader), else by the stored ``split`` column."""
    if not data_cfg.store:
        raise DataError("data.store: give the Parquet store path or URI (write one with `distmeta data prepare`)")
    table = read_table(data_cfg.store, filesystem)
    heights = set(table.column("height").to_pylist())
    if heights and heights != {data_cfg.image_size}:
        raise DataError(f"data.image_size: {data_cfg.image_size}, but {data_cfg.store} holds "
                        f"{'/'.join(map(str, sorted(heights)))}-pixel images; set data.image_size to match")
    if data_cfg.preset or any(getattr(data_cfg, s).sets for s in SPLITS):
        stored = sorted(set(table.column("source_set").to_pylist()))

        def load(name: str) -> ImageClassDataset:
            if name not in stored:
                raise DataError(f"{data_cfg.store}: has no source set {name!r}; stored: {', '.join(stored)}")
            return table_to_dataset(_rows_in(table, "source_set", name))

        return build_splits(data_cfg, load)
    out = {s: table_to_dataset(_rows_in(table, "split", s)) for s in SPLITS}
    out = {s: ds for s, ds in out.items() if ds.num_classes}
    if not out:
        raise DataError(f"{data_cfg.store}: no rows carry a split; set data.preset or data.train.sets")
    return out


def store_info(uri: str, filesystem=None) -> Dict[str, Any]:
    """Summary of a store: rows, classes, alphabets, per-split classes/rows, image shape, bytes."""
    import pyarrow.fs as pafs

    table = read_table(uri, filesystem, columns=TEXT_COLUMNS + ["height", "width", "channels"])
    fs, path = resolve_filesystem(uri, filesystem)
    info = fs.get_file_info(path)
    files = ([f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File]
             if info.type == pafs.FileType.Directory else [info])
    cols = {c: table.column(c).to_pylist() for c in ("label", "alphabet", "source_set", "split")}
    names = cols["label"]
    splits = {}
    for s in SPLITS:
        rows = [n for n, tag in zip(names, cols["split"]) if s in tag.split(",")]
        if rows:
            splits[s] = {"rows": len(rows), "classes": len(set(rows))}
    shapes = sorted({(h, w, c) for h, w, c in zip(*(table.column(k).to_pylist() for k in ("height", "width", "channels")))})
    return {
        "path": uri,
        "rows": table.num_rows,
        "classes": len(set(names)),
        "alphabets": sorted(set(cols["alphabet"])),
        "source_sets": {s: cols["source_set"].count(s) for s in dict.fromkeys(cols["source_set"])},
        "splits": splits,
        "image_shapes": [list(s) for s in shapes],
        "bytes": sum(f.size or 0 for f in files),
        "metadata": store_metadata(table),
    }
