"""Run-level bad input, found by probing as a new user would: each gets one clear line (exit 2),
never a traceback, and never destroys a run or a checkpoint."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

import distmeta
from distmeta import cli
from distmeta.engine.run_dir import RunDir, load_checkpoint

SIN = {"name": "bad", "data": {"dataset": "none"}, "task": {"kind": "sinusoid", "shots": 5, "queries": 5},
       "model": {"name": "mlp", "hidden": [8]}, "algorithm": {"name": "maml", "inner_lr": 0.01},
       "optim": {"meta_batch": 2, "steps": 4}, "eval": {"every": 2, "episodes": 2, "final_episodes": 2},
       "checkpoint": {"every": 2, "keep_last": 3}, "log_every": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "run"
    distmeta.train(SIN, out=path, progress=False)
    return path


def one_line(capsys, argv, *needles):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("distmeta: error:"), (code, err)
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "--steps: must be > 0"),
    (["--steps", "-5"], "--steps: must be > 0"),
])
def test_train_flags(tmp_path, capsys, argv, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SIN))
    one_line(capsys, ["train", cfg, "--out", tmp_path / "r", *argv], needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--episodes", "0"], "--episodes: must be > 0"), (["--episodes", "-1"], "--episodes: must be > 0"),
    (["--shots", "0"], "--shots: must be > 0"), (["--ways", "0"], "--ways: must be > 0"),
    (["--inner-steps", "-1"], "--inner-steps: must be >= 0"),
])
def test_eval_flags(run, capsys, argv, needle):
    one_line(capsys, ["eval", run, *argv], needle)


def test_existing_run_is_never_overwritten(run, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SIN))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    one_line(capsys, ["train", cfg, "--out", run], "a run folder already exists there", "--resume")
    one_line(capsys, ["train", "--resume", run, "--out", tmp_path / "other"], "continues that run in place")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_corrupt_config_on_resume_is_one_line(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "config.yaml").write_text("a: [\n")
    one_line(capsys, ["train", "--resume", copy], "config.yaml: not valid YAML")


def test_checkpoint_that_does_not_fit_its_model(run, tmp_path, capsys):
    state = load_checkpoint(run)
    state["state"]["model"]["head.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    one_line(capsys, ["eval", tmp_path / "shape.pt"], "do not fit the model", "size mismatch")
    del state["state"]["model"]["head.bias"]
    torch.save(state, tmp_path / "missing.pt")
    one_line(capsys, ["eval", tmp_path / "missing.pt"], "do not fit the model")


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    paths = RunDir(copy).checkpoint_paths()
    paths[-1].write_bytes(b"truncated")
    (copy / "checkpoints" / ".step_0000004.pt.tmp123").write_bytes(b"left by a kill")
    with pytest.warns(UserWarning, match="skipping an unreadable checkpoint"):
        assert load_checkpoint(copy)["step"] == int(paths[-2].name[5:12])
    result = distmeta.train(None, resume=copy, progress=False)   # resumes from the older one
    assert result.step == 4 and not list(copy.rglob(".*.tmp*"))


def test_parquet_file_that_is_not_a_store(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SIN, "data": {"dataset": "parquet", "store": str(tmp_path / "other.parquet")},
                                   "task": {"kind": "classification"}, "model": {"name": "conv4"}}))
    one_line(capsys, ["train", cfg, "--out", tmp_path / "r"], "not a distmeta store")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(run, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SIN, "engine": {"device": "cuda"}}))
    one_line(capsys, ["train", cfg, "--out", tmp_path / "r"], "engine.device", "CUDA is not available")
    with pytest.raises(distmeta.engine.run_dir.CheckpointError, match="CUDA is not available"):
        distmeta.load(run, device="cuda")


def test_explosion_with_finite_loss_never_writes_nan_json(tmp_path):
    """lr 1e30: the loss of step 1 is finite, the parameters explode: the run stops as a
    non-finite run at its validation and writes no results.json (JSON has no NaN)."""
    with pytest.raises(distmeta.errors.NonFiniteError):
        distmeta.train({**SIN, "optim": {**SIN["optim"], "lr": 1e30}}, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "results.json").exists()


def test_omniglot_zip_checked_once(tmp_path):
    from distmeta.data.omniglot import ensure_zip
    from distmeta.errors import DataError

    (tmp_path / "images_background_small1.zip").write_bytes(b"not the official file")
    with pytest.raises(DataError, match="MD5 .* differs from the official"):
        ensure_zip("background_small1", tmp_path)


@pytest.mark.parametrize("algorithm", ["maml_rl", "rl2"])
def test_too_few_tasks_for_the_splits_is_one_line_before_ray(tmp_path, capsys, monkeypatch, algorithm):
    """Meta-World ML1 has 50 training goals: 45 training tasks leave 5 for 10 validation tasks.
    The run says so in one line before Ray starts, and writes no run folder."""
    pytest.importorskip("metaworld")
    import distmeta.address

    def no_ray(*args, **kwargs):
        raise AssertionError("connect_ray was called before the task splits were checked")

    monkeypatch.setattr(distmeta.address, "connect_ray", no_ray)
    cfg = {"name": "few", "rl": {"algorithm": algorithm, "env": "metaworld_ml1", "train_tasks": 45,
                                 "env_config": {"env_name": "reach-v3", "horizon": 10}},
           "eval": {"every": 1, "episodes": 10, "final_episodes": 2}}
    path = tmp_path / "few.yaml"
    path.write_text(yaml.safe_dump(cfg))
    one_line(capsys, ["train", path, "--out", tmp_path / "r"], "found only 5 of the 10 validation tasks")
    assert not (tmp_path / "r").exists()
