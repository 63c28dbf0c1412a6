"""Omniglot zip reader, presets and split specs, on the official minimal sets shipped with distmeta."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import OMNIGLOT_DIR, omniglot_zip, rezip
from distmeta.config import DataConfig, SplitSpec
from distmeta.data import DataError
from distmeta.data.omniglot import (load_set, list_entries, omniglot_splits, preprocess, read_zip,
                                    resolve_root)
from distmeta.data.splits import MAML_SIZES, MINIMAL_EVAL_ALPHABETS, build_splits, split_classes
from distmeta.errors import DistmetaError
from distmeta.registry import DATASETS

SMALL1_ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]


@pytest.fixture(scope="module")
def small1():
    return load_set("background_small1", omniglot_zip("background_small1").parent, download=False)


@pytest.fixture(scope="module")
def small2():
    return load_set("background_small2", omniglot_zip("background_small2").parent, download=False)


def cfg(**kw) -> DataConfig:
    return DataConfig(dataset="omniglot", root=str(OMNIGLOT_DIR), download=False, **kw)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def assert_disjoint(splits):
    names = [set(ds.classes) for ds in splits]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert not names[i] & names[j]


def test_small1_counts_and_format(small1):
    assert small1.num_classes == 136 and len(small1.images) == 2720
    assert sorted(set(small1.groups)) == SMALL1_ALPHABETS
    assert small1.images.shape == (2720, 28, 28) and small1.images.dtype == np.uint8
    assert small1.classes[0] == "Balinese/character01" and small1.classes == sorted(small1.classes)
    assert all(len(small1.indices_of(c)) == 20 for c in range(small1.num_classes))
    # inverted: background 0, strokes bright
    assert np.median(small1.images) == 0 and small1.images.max() == 255


def test_small2_counts(small2):
    assert small2.num_classes == 156 and len(small2.images) == 3120
    assert sorted(set(small2.groups)) == ["Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"]


def test_cached_within_process(small1):
    again = read_zip(omniglot_zip("background_small1"), 28)
    assert again.images is small1.images and again.classes == small1.classes


def test_preprocess_sizes_and_polarity():
    with zipfile.ZipFile(omniglot_zip("background_small1")) as zf:
        entry = list_entries(zf)[0]
        png = zf.read(entry.member)
    assert (entry.alphabet, entry.character, entry.file, entry.drawer) == (
        "Balinese", "character01", "0108_01.png", "01")
    native = preprocess(png, 105)
    assert native.shape == (105, 105) and set(np.unique(native)) == {0, 255}
    assert (native == 255).mean() < 0.2  # ink is the minority
    assert preprocess(png, 14).shape == (14, 14)


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTMETA_DATA_DIR", str(tmp_path))
    assert resolve_root() == tmp_path
    assert resolve_root("/explicit") == Path("/explicit")
    monkeypatch.delenv("DISTMETA_DATA_DIR")
    assert resolve_root() == Path("~/.cache/distmeta/omniglot").expanduser()


def test_registered_and_error_types():
    assert DATASETS.get("omniglot") is omniglot_splits
    assert "parquet" in DATASETS and "miniimagenet" in DATASETS
    assert issubclass(DataError, DistmetaError) and issubclass(DataError, ValueError)


def test_minimal_preset(small1):
    splits = omniglot_splits(cfg(preset="minimal"))
    assert set(splits) == {"train", "val", "test"}
    assert splits["train"].classes == small1.classes
    assert sorted(set(splits["val"].groups)) == ["Tagalog"]
    assert sorted(set(splits["test"].groups)) == ["Japanese_(katakana)", "Sanskrit"]
    assert splits["val"].num_classes == 17 and splits["test"].num_classes == 89
    assert set(splits["val"].groups) | set(splits["test"].groups) == set(MINIMAL_EVAL_ALPHABETS)
    assert_disjoint([splits["train"], splits["val"], splits["test"]])   # selection never sees a test character


def test_split_specs_select_and_exclude():
    splits = omniglot_splits(cfg(
        train=SplitSpec(sets=["background_small1"], exclude_alphabets=["Greek"]),
        val=SplitSpec(sets=["background_small1"], alphabets=["Greek"]),
        test=SplitSpec(sets=["background_small2"], alphabets=["Sanskrit", "Tagalog"])))
    assert "Greek" not in splits["train"].groups and set(splits["val"].groups) == {"Greek"}
    assert set(splits["test"].groups) == {"Sanskrit", "Tagalog"}
    assert splits["train"].num_classes + splits["val"].num_classes == 136
    assert_disjoint(splits.values())


def test_sets_concatenate_without_duplicate_classes():
    splits = omniglot_splits(cfg(train=SplitSpec(sets=["background_small1", "background_small2"])))
    assert set(splits) == {"train"}  # empty specs are left out
    train = splits["train"]
    assert train.num_classes == 136 + 156 - 50  # Greek (24) and Latin (26) appear in both
    assert len(set(train.classes)) == train.num_classes and len(train.images) == 20 * train.num_classes


def test_unknown_alphabet_set_and_preset():
    with pytest.raises(DataError) as exc:
        omniglot_splits(cfg(train=SplitSpec(sets=["background_small1"], alphabets=["Klingon"])))
    assert "Klingon" in one_line(exc) and "Balinese" in str(exc.value) and "data.train" in str(exc.value)
    with pytest.raises(DataError) as exc:
        omniglot_splits(cfg(train=SplitSpec(sets=["background_tiny"])))
    assert "background_small1" in one_line(exc)
    with pytest.raises(DataError) as exc:
        omniglot_splits(cfg(val=SplitSpec(alphabets=["Greek"])))
    assert "data.val.sets" in one_line(exc)
    with pytest.raises(DataError):
        omniglot_splits(cfg())  # nothing selected


def test_split_classes_is_seeded_and_disjoint():
    a = split_classes(50, (30, 5, 15), seed=3)
    assert [len(x) for x in a] == [30, 5, 15]
    assert sorted(np.concatenate(a).tolist()) == list(range(50))
    assert all(np.array_equal(x, y) for x, y in zip(a, split_classes(50, (30, 5, 15), seed=3)))
    assert not np.array_equal(a[0], split_classes(50, (30, 5, 15), seed=4)[0])
    with pytest.raises(DataError):
        split_classes(10, (8, 1, 2), seed=0)


@pytest.fixture(scope="module")
def fake_full_root(tmp_path_factory):
    """Official background/evaluation names over the minimal sets: background = small1 +
    small2's Japanese (6 alphabets, 183 characters), evaluation = Sanskrit + Tagalog (59)."""
    root = tmp_path_factory.mktemp("omniglot_full")
    rezip(root, "images_background", [(omniglot_zip("background_small1"), None),
                                      (omniglot_zip("background_small2"), ["Japanese_(katakana)"])])
    rezip(root, "images_evaluation", [(omniglot_zip("background_small2"), ["Sanskrit", "Tagalog"])])
    return root


def test_maml_preset_on_rezipped_sets(fake_full_root):
    data = DataConfig(root=str(fake_full_root), preset="maml", download=False, seed=7, verify_md5=False)
    total = 183 + 59
    sizes = [round(total * s / sum(MAML_SIZES)) for s in MAML_SIZES[:2]]
    sizes.append(total - sum(sizes))  # 164 / 15 / 63 of 242: the 1100:100:423 proportion

    def load(name):
        return load_set(name, fake_full_root, download=False, verify=False)

    splits = build_splits(data, load, maml_sizes=sizes)
    assert [splits[s].num_classes for s in ("train", "val", "test")] == sizes
    assert_disjoint(splits.values())
    union = set().union(*(ds.classes for ds in splits.values()))
    assert len(union) == total and any(c.startswith("Sanskrit/") for c in union)
    same = build_splits(data, load, maml_sizes=sizes)
    assert all(splits[s].classes == same[s].classes for s in splits)
    other = build_splits(DataConfig(root=str(fake_full_root), preset="maml", seed=8), load, maml_sizes=sizes)
    assert other["train"].classes != splits["train"].classes
    with pytest.raises(DataError) as exc:  # the real preset needs the full 1623 characters
        omniglot_splits(data)
    assert "1623" in one_line(exc) and "242" in str(exc.value)


def test_official_preset_holds_out_last_background_alphabets(fake_full_root):
    splits = omniglot_splits(DataConfig(root=str(fake_full_root), preset="official", download=False, verify_md5=False))
    assert set(splits["train"].groups) == {"Balinese"}
    assert sorted(set(splits["val"].groups)) == ["Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin"]
    assert sorted(set(splits["test"].groups)) == ["Sanskrit", "Tagalog"]
    assert_disjoint(splits.values())


def test_corrupt_zip_is_one_line_error(tmp_path):
    bad = tmp_path / "images_background_small1.zip"
    bad.write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(DataError) as exc:
        load_set("background_small1", tmp_path, download=False)
    assert str(bad) in one_line(exc)


def test_missing_zip_without_download_names_file_and_folder(tmp_path):
    with pytest.raises(DataError) as exc:   # the full sets do not ship with distmeta
        omniglot_splits(DataConfig(root=str(tmp_path), preset="official", download=False))
    text = one_line(exc)
    assert "images_background.zip" in text and str(tmp_path) in text


def test_minimal_sets_ship_with_distmeta(tmp_path):
    """With no copy in the data folder, the minimal preset reads the sets inside the package."""
    from distmeta.data.omniglot import SHIPPED

    splits = omniglot_splits(DataConfig(root=str(tmp_path), preset="minimal", download=False))
    assert splits["train"].num_classes == 136 and (SHIPPED / "LICENSE").read_text().startswith("The MIT License")
