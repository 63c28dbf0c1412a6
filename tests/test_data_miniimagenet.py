"""mini-ImageNet reader on a tiny generated Ravi-Larochelle folder."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distmeta.config import DataConfig
from distmeta.data import DataError
from distmeta.data.miniimagenet import load_split, miniimagenet_splits
from distmeta.data.store import parquet_splits, prepare_miniimagenet
from distmeta.registry import DATASETS

LABELS = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"],
          "test": ["n01930112", "n01981276"]}
PER_CLASS = 3


def make_root(root, interleave=True):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for split, labels in LABELS.items():
        rows = [(f"{label}{i:08d}.{'jpg' if i % 2 else 'png'}", label) for label in labels for i in range(PER_CLASS)]
        if interleave:  # CSV order need not group classes
            rows = rows[1::2] + rows[0::2]
        for name, _ in rows:
            pixels = rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / name)
        (root / f"{split}.csv").write_text("filename,label\n" + "".join(f"{n},{l}\n" for n, l in rows))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("miniimagenet"))


def test_reader_shapes_classes_groups(root):
    ds = load_split(root, "train")
    assert ds.images.shape == (9, 84, 84, 3) and ds.images.dtype == np.uint8
    assert sorted(ds.classes) == LABELS["train"] and ds.groups == ["train"] * 3
    assert all(len(ds.indices_of(c)) == PER_CLASS for c in range(3))
    rows = [line.split(",") for line in (root / "train.csv").read_text().splitlines()[1:]]
    assert ds.classes[ds.labels[0]] == rows[0][1]
    png = next(i for i, (name, _) in enumerate(rows) if name.endswith(".png"))  # lossless: exact pixels
    expected = np.asarray(Image.open(root / "images" / rows[png][0]).convert("RGB").resize((84, 84), Image.LANCZOS))
    assert np.array_equal(ds.images[png], expected)


def test_registered_factory(root):
    assert DATASETS.get("miniimagenet") is miniimagenet_splits
    splits = miniimagenet_splits(DataConfig(dataset="miniimagenet", root=str(root), image_size=84))
    assert {k: v.num_classes for k, v in splits.items()} == {"train": 3, "val": 2, "test": 2}
    assert set(splits["val"].groups) == {"val"}
    assert not set(splits["train"].classes) & set(splits["test"].classes)


def test_errors(tmp_path, root):
    with pytest.raises(DataError, match="train.csv not found"):
        load_split(tmp_path, "train")
    broken = make_root(tmp_path / "broken")
    (broken / "images" / (broken / "val.csv").read_text().splitlines()[1].split(",")[0]).unlink()
    with pytest.raises(DataError, match="not found in"):
        load_split(broken, "val")
    (broken / "test.csv").write_text("file,class\na.jpg,x\n")
    with pytest.raises(DataError, match="header"):
        load_split(broken, "test")
    with pytest.raises(DataError, match="unknown mini-ImageNet split"):
        load_split(root, "holdout")


def test_store_round_trip(root, tmp_path):
    info = prepare_miniimagenet(str(root), str(tmp_path / "store"))
    assert info["rows"] == 21 and info["image_shapes"] == [[84, 84, 3]]
    got = parquet_splits(DataConfig(dataset="parquet", store=str(tmp_path / "store"), image_size=84))
    want = miniimagenet_splits(DataConfig(dataset="miniimagenet", root=str(root), image_size=84))
    for split in want:
        assert got[split].classes == want[split].classes and got[split].groups == want[split].groups
        assert np.array_equal(got[split].labels, want[split].labels)
        assert np.array_equal(got[split].images, want[split].images)
