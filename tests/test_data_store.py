"""Parquet store: zip -> store round trip, URIs and filesystem objects, factory, CLI."""
from __future__ import annotations

import argparse

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from data_fixtures import OMNIGLOT_DIR, omniglot_zip
from distmeta.config import DataConfig, SplitSpec
from distmeta.data import DataError
from distmeta.data.cli import register
from distmeta.data.omniglot import load_set, omniglot_splits
from distmeta.data.store import parquet_splits, prepare_omniglot, read_store, store_info
from distmeta.registry import DATASETS

ROWS = 2720 + 3120


def minimal_cfg(**kw) -> DataConfig:
    omniglot_zip("background_small1")
    return DataConfig(dataset="omniglot", root=str(OMNIGLOT_DIR), preset="minimal", download=False, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "omniglot"
    info = prepare_omniglot(minimal_cfg(), str(out))
    return out, info


def assert_same(a, b):
    assert a.classes == b.classes and a.groups == b.groups
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.images, b.images)
    assert a.images.dtype == b.images.dtype == np.uint8


def episode(ds, seed, ways=5, shots=1, queries=3):
    """A plain seeded N-way K-shot episode, to compare two datasets' draws."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(ds.num_classes, ways, replace=False)
    picks = [rng.choice(ds.indices_of(c), shots + queries, replace=False) for c in classes]
    return np.stack([ds.images[p] for p in picks]), [ds.classes[c] for c in classes]


def test_schema_and_info(store):
    out, info = store
    table = pq.read_table(out / "part-0.parquet")
    assert table.column_names == ["label", "alphabet", "character", "drawer", "file", "source_set", "split",
                                  "height", "width", "channels", "image"]
    assert table.num_rows == ROWS == info["rows"]
    assert table.column("drawer")[0].as_py() == "01" and table.column("file")[0].as_py() == "0108_01.png"
    assert info["classes"] == 242 and info["image_shapes"] == [[28, 28, 1]] and info["bytes"] > 0
    assert info["splits"] == {"train": {"rows": 2720, "classes": 136}, "val": {"rows": 340, "classes": 17},
                              "test": {"rows": 1780, "classes": 89}}
    assert info["source_sets"] == {"background_small1": 2720, "background_small2": 3120}
    assert info["metadata"]["preset"] == "minimal" and info["metadata"]["image_size"] == 28


def test_store_equals_zip_per_set_and_episodes_match(store):
    out, _ = store
    for name in ("background_small1", "background_small2"):
        from_zip = load_set(name, OMNIGLOT_DIR, download=False)
        from_store = read_store(str(out), source_set=name)
        assert_same(from_zip, from_store)
        for seed in range(3):
            x_zip, c_zip = episode(from_zip, seed)
            x_store, c_store = episode(from_store, seed)
            assert c_zip == c_store and np.array_equal(x_zip, x_store)


def test_parquet_factory_matches_zip_factory(store):
    out, _ = store
    assert DATASETS.get("parquet") is parquet_splits
    want = omniglot_splits(minimal_cfg())
    by_split_column = parquet_splits(DataConfig(dataset="parquet", store=str(out)))
    by_preset = parquet_splits(DataConfig(dataset="parquet", store=f"file://{out}", preset="minimal"))
    specs = parquet_splits(DataConfig(dataset="parquet", store=str(out),
                                      train=SplitSpec(sets=["background_small2"], alphabets=["Sanskrit"])))
    for got in (by_split_column, by_preset):
        assert set(got) == {"train", "val", "test"}
        for name in got:
            assert_same(want[name], got[name])
    assert list(specs) == ["train"] and set(specs["train"].groups) == {"Sanskrit"}


def test_read_through_uri_and_filesystem_objects(store, tmp_path):
    out, _ = store
    whole = read_store(str(out))
    assert whole.num_classes == 242 and len(whole.labels) == 136 * 20 + 106 * 20  # shared files kept once
    assert_same(read_store(f"file://{out}", split="val"), read_store(str(out), split="val"))
    subtree = pafs.SubTreeFileSystem(str(out.parent), pafs.LocalFileSystem())
    assert_same(read_store(out.name, split="train", filesystem=subtree), read_store(str(out), split="train"))

    mock = pafs._MockFileSystem()
    info = prepare_omniglot(minimal_cfg(), "bucket/omniglot", filesystem=mock)
    assert info["rows"] == ROWS
    assert_same(read_store("bucket/omniglot", split="test", filesystem=mock), read_store(str(out), split="test"))
    single = tmp_path / "one.parquet"
    prepare_omniglot(None, str(single), root=str(OMNIGLOT_DIR), sets=["background_small1"])
    assert_same(read_store(str(single)), load_set("background_small1", OMNIGLOT_DIR))


def test_store_errors(store, tmp_path):
    out, _ = store
    with pytest.raises(DataError, match="image_size"):
        parquet_splits(DataConfig(dataset="parquet", store=str(out), image_size=84))
    with pytest.raises(DataError, match="no Parquet store"):
        read_store(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="not empty"):
        prepare_omniglot(minimal_cfg(), str(out))
    with pytest.raises(DataError, match="data.store"):
        parquet_splits(DataConfig(dataset="parquet"))
    with pytest.raises(DataError, match="background"):
        parquet_splits(DataConfig(dataset="parquet", store=str(out), preset="official"))
    plain = tmp_path / "plain"
    prepare_omniglot(None, str(plain), root=str(OMNIGLOT_DIR), sets=["background_small2"])
    with pytest.raises(DataError, match="no rows carry a split"):
        parquet_splits(DataConfig(dataset="parquet", store=str(plain)))
    with pytest.raises(DataError, match="needs the sets"):
        prepare_omniglot(minimal_cfg(), str(tmp_path / "x"), sets=["background_small1"])


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="distmeta")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prepare_and_info(tmp_path, capsys):
    out = tmp_path / "cli_store"
    assert run_cli(["data", "prepare", "omniglot", "--out", str(out), "--data-root", str(OMNIGLOT_DIR),
                    "--preset", "minimal", "--no-download"]) == 0
    assert run_cli(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"rows         {ROWS}" in text and "train: 136 classes" in text and "28x28x1" in text
    with pytest.raises(DataError):  # existing store, no --overwrite
        run_cli(["data", "prepare", "omniglot", "--out", str(out), "--data-root", str(OMNIGLOT_DIR),
                 "--sets", "background_small1", "--no-download"])
    assert run_cli(["data", "prepare", "omniglot", "--out", str(out), "--data-root", str(OMNIGLOT_DIR),
                    "--sets", "background_small1", "--no-download", "--overwrite"]) == 0
    assert store_info(str(out))["rows"] == 2720
    with pytest.raises(DataError, match="no Omniglot zips"):
        run_cli(["data", "prepare", "omniglot", "--out", str(tmp_path / "y"), "--data-root", str(tmp_path)])
    assert run_cli(["data"]) == 2
