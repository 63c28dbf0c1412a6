"""Lake et al. one-shot runs: generate in the official layout from small2, read back, score."""
from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest

from data_fixtures import omniglot_zip
from distmeta.data import DataError
from distmeta.data.omniglot import list_entries, load_set
from distmeta.data.oneshot_runs import evaluate_runs, generate_runs, read_runs

ALPHABETS = ["Japanese_(katakana)", "Sanskrit"]
LINE = re.compile(r"^(run\d\d)/test/item(\d\d)\.png \1/training/class(\d\d)\.png$")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    generate_runs(omniglot_zip("background_small2"), out, ALPHABETS, n_runs=20, seed=0)
    return out


@pytest.fixture(scope="module")
def runs(runs_dir):
    return read_runs(runs_dir)


def test_official_layout_from_original_pngs(runs_dir):
    with zipfile.ZipFile(omniglot_zip("background_small2")) as zf:
        by_bytes = {zf.read(e.member): e for e in list_entries(zf)}
    assert sorted(p.name for p in runs_dir.iterdir()) == [f"run{i:02d}" for i in range(1, 21)]
    used_alphabets = set()
    for run in sorted(runs_dir.iterdir()):
        assert sorted(p.name for p in (run / "training").iterdir()) == [f"class{i:02d}.png" for i in range(1, 21)]
        assert sorted(p.name for p in (run / "test").iterdir()) == [f"item{i:02d}.png" for i in range(1, 21)]
        lines = (run / "class_labels.txt").read_text().splitlines()
        assert len(lines) == 20 and all(LINE.match(l) and l.startswith(run.name) for l in lines)
        assert sorted(LINE.match(l).group(3) for l in lines) == [f"{i:02d}" for i in range(1, 21)]
        alphabets = set()
        for line in lines:
            test_file, train_file = (runs_dir / p for p in line.split())
            test, train = by_bytes[test_file.read_bytes()], by_bytes[train_file.read_bytes()]  # copied verbatim
            assert test.class_name == train.class_name and test.drawer != train.drawer
            alphabets.add(train.alphabet)
        assert len(alphabets) == 1  # within-alphabet
        used_alphabets |= alphabets
    assert used_alphabets == set(ALPHABETS)


def test_read_runs_and_scores(runs):
    assert len(runs) == 20 and runs[0].name == "run01"
    for run in runs:
        assert run.support_x.shape == run.query_x.shape == (20, 28, 28) and run.support_x.dtype == np.uint8
        assert sorted(run.query_y.tolist()) == list(range(20))
        assert np.median(run.support_x) == 0 and run.support_x.max() > 200  # inverted like the zip reader
    perfect = {id(r.query_x): r.query_y for r in runs}
    result = evaluate_runs(runs, lambda s, q: perfect[id(q)])
    assert result["accuracy"] == 1.0 and result["error"] == 0.0 and result["trials"] == 400
    assert len(result["per_run"]) == 20 and result["per_run"][0]["run"] == "run01"
    constant = evaluate_runs(runs, lambda s, q: np.zeros(len(q), dtype=np.int64))
    assert constant["accuracy"] == pytest.approx(0.05) and constant["trials"] == 400
    scores = evaluate_runs(runs, lambda s, q: np.eye(20)[perfect[id(q)]])  # score-matrix form
    assert scores["accuracy"] == 1.0
    with pytest.raises(DataError, match="shape"):
        evaluate_runs(runs[:1], lambda s, q: np.zeros((3, 3)))


def test_deterministic_in_seed(tmp_path, runs_dir):
    generate_runs(omniglot_zip("background_small2"), tmp_path / "a", ALPHABETS, n_runs=2, seed=0)
    generate_runs(omniglot_zip("background_small2"), tmp_path / "b", ALPHABETS, n_runs=2, seed=1)
    same = (tmp_path / "a/run01/class_labels.txt").read_bytes() == (runs_dir / "run01/class_labels.txt").read_bytes()
    assert same and (tmp_path / "a/run01/training/class01.png").read_bytes() == \
        (runs_dir / "run01/training/class01.png").read_bytes()
    assert (tmp_path / "b/run01/training/class01.png").read_bytes() != \
        (tmp_path / "a/run01/training/class01.png").read_bytes()


def test_from_dataset_round_trips_pixels(tmp_path):
    ds = load_set("background_small2", omniglot_zip("background_small2").parent).select_groups(["Sanskrit"])
    generate_runs(ds, tmp_path, ["Sanskrit"], n_runs=1, seed=3)
    (run,) = read_runs(tmp_path)
    flat = {img.tobytes() for img in ds.images}
    assert all(img.tobytes() in flat for img in np.concatenate([run.support_x, run.query_x]))


def test_generate_errors(tmp_path):
    with pytest.raises(DataError, match="Klingon"):
        generate_runs(omniglot_zip("background_small2"), tmp_path, ["Klingon"])
    with pytest.raises(DataError, match="20 characters"):
        generate_runs(omniglot_zip("background_small2"), tmp_path, ["Tagalog"])  # 17 characters
    with pytest.raises(DataError, match="run01"):
        read_runs(tmp_path)
