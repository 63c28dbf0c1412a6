"""End-to-end training on real data: accuracy, resume, SIGTERM, checkpoints,
run folder, NaN handling, load/eval parity and the extension points.

Budget: about 2.5 minutes on 2 CPU cores in total. Each method is trained ONCE
per session (session-scoped fixtures) and the trained run is reused by several
tests. Omniglot runs use the ``minimal`` preset: train on images_background_small1,
evaluate on the alphabets of small2 that small1 lacks (Japanese_(katakana),
Sanskrit, Tagalog); chance for 5-way is 20 %.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import distmeta
from distmeta import cli
from distmeta.config import from_dict
from distmeta.engine.core import load_datasets
from distmeta.engine.run_dir import CHECKPOINT_FORMAT, RunDir, load_checkpoint
from distmeta.errors import DistmetaError
from distmeta.registry import MODELS, TASKS
from distmeta.tasks.base import TaskDistribution, to_torch

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ["Japanese_(katakana)", "Sanskrit"]
ACCURACY_EPISODES = 200


# --------------------------------------------------------------------------- configs
def omniglot_config(root, **sections):
    """A minimal-preset Omniglot config; ``sections`` replace whole sections."""
    cfg = {
        "name": "test_omniglot", "seed": 0,
        "data": {"dataset": "omniglot", "preset": "minimal", "root": str(root), "download": False,
                 "image_size": 28},
        "task": {"kind": "classification", "ways": 5, "shots": 1, "queries": 5, "rotations": True},
        "model": {"name": "conv4", "channels": 32},
        "eval": {"every": 10_000, "episodes": 20, "final_episodes": ACCURACY_EPISODES},
        "checkpoint": {"every": 10_000, "keep_last": 2},
        "engine": {"device": "cpu"},  # the same numbers on a machine with a GPU
        "log_every": 50,
    }
    cfg.update(copy.deepcopy(sections))
    return cfg


def sinusoid_config(**over):
    cfg = {
        "name": "test_sinusoid", "seed": 0, "data": {"dataset": "none"},
        "task": {"kind": "sinusoid", "shots": 10, "queries": 10},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "algorithm": {"name": "maml", "inner_steps": 1, "inner_lr": 0.01, "eval_inner_steps": 10},
        "optim": {"optimizer": "adam", "lr": 0.003, "meta_batch": 10, "steps": 400},
        "eval": {"every": 100, "episodes": 20, "final_episodes": 100},
        "checkpoint": {"every": 50, "keep_last": 2},
        "engine": {"device": "cpu"},  # bit-exact resume comparisons need a deterministic device
        "log_every": 50,
    }
    for key, value in over.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


def final_params(run_path) -> dict:
    return load_checkpoint(run_path)["state"]["model"]


def assert_same_params(a: dict, b: dict, atol: float = 1e-6):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=atol), name


def run_cli(capsys, *argv) -> tuple:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- trained runs (once per session)
@pytest.fixture(scope="session")
def protonet_run(tmp_path_factory, omniglot_dir):
    """ProtoNet, 20-way 1-shot training episodes with rotations, 100 steps."""
    cfg = omniglot_config(
        omniglot_dir, name="test_protonet",
        task={"kind": "classification", "ways": 5, "train_ways": 20, "shots": 1, "queries": 5, "rotations": True},
        algorithm={"name": "protonet"},
        optim={"optimizer": "adam", "lr": 0.001, "meta_batch": 1, "steps": 100})
    return distmeta.train(cfg, out=tmp_path_factory.mktemp("runs") / "protonet", progress=False)


@pytest.fixture(scope="session")
def maml_run(tmp_path_factory, omniglot_dir):
    """Second-order MAML, 5-way 1-shot, inner lr 0.4, 1 inner step (3 at evaluation),
    meta-batch 4, Adam 3e-3, 140 steps (test accuracy 0.78; 0.75 at 100 steps)."""
    cfg = omniglot_config(
        omniglot_dir, name="test_maml",
        algorithm={"name": "maml", "inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3,
                   "first_order": False},
        optim={"optimizer": "adam", "lr": 0.003, "meta_batch": 4, "steps": 140})
    return distmeta.train(cfg, out=tmp_path_factory.mktemp("runs") / "maml", progress=False)


@pytest.fixture(scope="session")
def sinusoid_run(tmp_path_factory):
    return distmeta.train(sinusoid_config(), out=tmp_path_factory.mktemp("runs") / "sinusoid", progress=False)


@pytest.fixture(scope="session")
def omniglot_runs_dir(tmp_path_factory, omniglot_dir):
    from distmeta.data.oneshot_runs import generate_runs

    out = tmp_path_factory.mktemp("oneshot_runs")
    generate_runs(omniglot_dir / "images_background_small2.zip", out, HELD_OUT, n_runs=20, seed=0)
    return out


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("fixture", ["protonet_run", "maml_run"])
def test_held_out_5way_1shot_accuracy(fixture, request):
    result = request.getfixturevalue(fixture)
    final = json.loads((result.path / "results.json").read_text())
    assert final["episodes"] >= 200 and final["split"] == "test"
    # the test split of the minimal preset is small2's alphabets that small1 lacks
    assert final["accuracy"] >= 0.70, final
    assert final["ci95"] < 0.05


def test_sinusoid_maml_adaptation_helps(sinusoid_run):
    final = sinusoid_run.metrics
    assert final["episodes"] == 100
    assert final["mse"] < 0.5 * final["mse_before_adaptation"], final


# --------------------------------------------------------------------------- load / eval parity
def api_accuracy(run_path, episodes: int) -> float:
    """Accuracy of ``distmeta.load(run).adapt(...).predict(...)`` on the episodes
    ``distmeta eval`` draws (held-out split, task seeds of (run seed, split, 0, i))."""
    model = distmeta.load(run_path)
    cfg = model.config
    split = "test"
    dist = TASKS.get(cfg.task.kind)(cfg.task, load_datasets(cfg), split)
    scores = []
    for task in dist.sample_many(cfg.seed, split, 0, range(episodes)):
        task = to_torch(task)
        pred = model.adapt(task["support_x"], task["support_y"]).predict(task["query_x"])
        assert pred.shape == (len(task["query_y"]), cfg.task.ways)
        scores.append(float((pred.argmax(-1) == task["query_y"]).float().mean()))
    return float(np.mean(scores))


@pytest.mark.parametrize("fixture", ["protonet_run", "maml_run"])
def test_load_adapt_predict_matches_cli_eval(fixture, request, capsys):
    run = request.getfixturevalue(fixture).path
    code, out, _ = run_cli(capsys, "eval", run, "--json", "--episodes", ACCURACY_EPISODES)
    assert code == 0
    result = json.loads(out)  # exactly one JSON object on stdout
    assert isinstance(result, dict) and {"accuracy", "ci95"} <= result.keys()
    assert result["episodes"] == ACCURACY_EPISODES and result["ways"] == 5 and result["shots"] == 1
    final = json.loads((run / "results.json").read_text())
    assert result["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    assert api_accuracy(run, ACCURACY_EPISODES) == pytest.approx(result["accuracy"], abs=1e-9)


def test_eval_json_regression(sinusoid_run, capsys):
    code, out, _ = run_cli(capsys, "eval", sinusoid_run.path, "--json", "--episodes", 50)
    assert code == 0
    result = json.loads(out)
    assert {"mse", "ci95"} <= result.keys() and "accuracy" not in result
    assert result["episodes"] == 50 and math.isfinite(result["mse"]) and result["ci95"] > 0
    assert result["inner_steps"] == 10  # eval_inner_steps


def test_eval_table_output(protonet_run, capsys):
    """The table shows the same numbers as --json (evaluation is seeded), headline with its CI."""
    code, out, _ = run_cli(capsys, "eval", protonet_run.path, "--episodes", 20, "--ways", 20)
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.strip().splitlines()[1:])
    code, js, _ = run_cli(capsys, "eval", protonet_run.path, "--episodes", 20, "--ways", 20, "--json")
    result = json.loads(js)
    mean, ci = (float(x) for x in rows["accuracy"].split("±"))
    assert mean == pytest.approx(result["accuracy"], abs=1e-4) and ci == pytest.approx(result["ci95"], abs=1e-4)
    assert rows["ways"].strip() == "20" and rows["checkpoint"].strip() == "final" and rows["split"].strip() == "test"


@pytest.mark.parametrize("fixture", ["protonet_run", "maml_run"])
def test_eval_official_oneshot_runs(fixture, request, omniglot_runs_dir, capsys):
    """20-way within-alphabet one-shot (Lake et al. layout) on held-out alphabets;
    MAML resizes its 5-way head to 20 ways."""
    run = request.getfixturevalue(fixture).path
    capsys.readouterr()  # the fixture's training progress, when this test trains it
    code, out, _ = run_cli(capsys, "eval", run, "--omniglot-runs", omniglot_runs_dir, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["trials"] == 400 and len(result["per_run"]) == 20
    assert result["accuracy"] + result["error"] == pytest.approx(1.0)
    assert result["accuracy"] > 0.25  # chance is 5 %


def test_eval_test_time_augmentation(protonet_run, omniglot_runs_dir, sinusoid_run, capsys):
    """--tta N: seeded (the same number twice), says it in the JSON, changes the score; a
    regression run refuses it in one line."""
    run = protonet_run.path
    capsys.readouterr()  # the fixtures' training progress, when this test trains them
    args = ["eval", run, "--json", "--episodes", 30, "--ways", 20]
    plain = json.loads(run_cli(capsys, *args)[1])
    tta = [json.loads(run_cli(capsys, *args, "--tta", 3)[1]) for _ in range(2)]
    assert tta[0] == tta[1] and tta[0]["test_time_augment"] == 3 and "test_time_augment" not in plain
    assert tta[0]["accuracy"] != plain["accuracy"] and tta[0]["accuracy"] > 0.25
    runs = json.loads(run_cli(capsys, "eval", run, "--omniglot-runs", omniglot_runs_dir, "--json", "--tta", 2)[1])
    assert runs["test_time_augment"] == 2 and runs["trials"] == 400 and runs["accuracy"] > 0.25
    code = cli.main(["eval", str(sinusoid_run.path), "--tta", "2"])
    assert code == 2 and "--tta: test-time augmentation needs an image classification run" in capsys.readouterr().err


# --------------------------------------------------------------------------- run folder and checkpoints
def test_run_folder_contents(sinusoid_run):
    path = sinusoid_run.path
    for name in ("config.yaml", "provenance.json", "metrics.csv", "results.json", "learning_curves.png",
                 "sinusoid_fits.png"):
        assert (path / name).is_file() and (path / name).stat().st_size > 0, name
    prov = json.loads((path / "provenance.json").read_text())
    import ray

    assert prov["distmeta"] == distmeta.__version__ and prov["torch"] == torch.__version__
    assert prov["ray"] == ray.__version__ and prov["checkpoint_format"] == CHECKPOINT_FORMAT
    assert RunDir.open(path).config_dict()["name"] == "test_sinusoid"
    import csv

    with open(path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"step", "loss", "mse", "val_mse", "tasks_per_s"} <= set(rows[0])
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] == 400 and steps[0] == 50
    assert list((path / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoints_atomic_last_k_and_best(sinusoid_run):
    run = RunDir(sinusoid_run.path)
    assert [p.name for p in run.checkpoint_paths()] == ["step_0000350.pt", "step_0000400.pt"]
    assert (run.checkpoints / "best.pt").is_file()
    best = json.loads((run.checkpoints / "best.json").read_text())
    assert best["step"] in (100, 200, 300, 400) and math.isfinite(best["score"])
    assert load_checkpoint(run.checkpoints / "best.pt")["step"] == best["step"]
    leftovers = [p for p in sinusoid_run.path.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]
    assert leftovers == []
    state = load_checkpoint(sinusoid_run.path)
    assert state["step"] == state["state"]["learner_step"] == 400 and state["format"] == CHECKPOINT_FORMAT
    assert {"model", "optimizer", "torch_rng", "task_shape"} <= state["state"].keys() and "config" in state


def test_checkpoint_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no temporary file."""
    import distmeta.engine.run_dir as run_dir

    run = RunDir.create(tmp_path / "run", {"name": "x"})
    run.save_checkpoint({"model": {"w": torch.ones(3)}}, 1)
    before = sha256(run.checkpoints / "step_0000001.pt")
    real_save = torch.save

    def crash(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(run_dir.torch, "save", crash)
    with pytest.raises(OSError):
        run.save_checkpoint({"model": {"w": torch.zeros(3)}}, 2)
    monkeypatch.setattr(run_dir.torch, "save", real_save)
    assert [p.name for p in run.checkpoints.iterdir()] == ["step_0000001.pt"]
    assert sha256(run.checkpoints / "step_0000001.pt") == before
    assert load_checkpoint(run.path)["step"] == 1


# --------------------------------------------------------------------------- resume
RESUME_STEPS = 40


def test_resume_equals_uninterrupted(tmp_path):
    cfg = sinusoid_config(optim={"steps": RESUME_STEPS}, eval={"every": 15, "final_episodes": 10},
                          checkpoint={"every": 7, "keep_last": 2}, log_every=5)
    full = distmeta.train(cfg, out=tmp_path / "full", progress=False)
    part = distmeta.train(cfg, out=tmp_path / "part", steps=17, progress=False)
    assert part.step == 17 and load_checkpoint(part.path)["step"] == 17
    resumed = distmeta.train(None, resume=part.path, steps=RESUME_STEPS, progress=False)
    assert resumed.path == part.path and resumed.step == RESUME_STEPS and resumed.status == "finished"
    a, b = final_params(full.path), final_params(resumed.path)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted run"
    # the optimizer state continues too, and the metrics are not logged twice
    steps = [int(float(r.split(",")[0])) for r in (resumed.path / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps))
    assert resumed.metrics["mse"] == pytest.approx(full.metrics["mse"], rel=1e-5)


def test_sigterm_checkpoints_at_step_boundary_and_resumes(tmp_path, capsys):
    import yaml

    total = 400
    cfg = sinusoid_config(optim={"steps": total}, eval={"every": 1000, "final_episodes": 10},
                          checkpoint={"every": 1000, "keep_last": 3}, log_every=5)
    cfg_file = tmp_path / "sin.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "distmeta.cli", "train", str(cfg_file), "--out", str(run),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        seen = []
        for line in proc.stdout:  # wait until it has logged a few steps
            seen.append(line)
            if line.startswith("step 10/"):
                proc.send_signal(signal.SIGTERM)
                break
        else:
            pytest.fail("training ended before logging step 10: " + "".join(seen) + proc.stderr.read())
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "SIGTERM received" in err and "--resume" in err
    state = load_checkpoint(run)
    k = state["step"]
    assert 10 <= k < total and state["state"]["learner_step"] == k  # a step boundary, not the end
    assert not (run / "results.json").exists()
    # resume through the CLI, in-process
    code, _, _ = run_cli(capsys, "train", "--resume", run, "--no-progress")
    assert code == 0
    assert load_checkpoint(run)["step"] == total
    full = distmeta.train(cfg, out=tmp_path / "full", progress=False)
    assert_same_params(final_params(full.path), final_params(run))


# --------------------------------------------------------------------------- non-finite loss
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    """Adam with lr 1e30 takes the parameters to ~1e30 in one step; the next
    forward pass overflows. The run stops before applying that step and the
    checkpoint of the last good step stays as it was."""
    cfg = sinusoid_config(optim={"lr": 1e30, "steps": 1}, eval={"every": 1000, "final_episodes": 5},
                          checkpoint={"every": 1, "keep_last": 3}, log_every=1)
    with pytest.raises(DistmetaError, match="non-finite validation mse at iteration 1"):
        distmeta.train(cfg, out=tmp_path / "run", progress=False)   # finite loss, exploded parameters
    first = RunDir(tmp_path / "run")
    assert not (first.path / "results.json").exists()   # never a NaN result
    good = first.path / "checkpoints" / "step_0000001.pt"
    digest, mtime = sha256(good), good.stat().st_mtime_ns
    with pytest.raises(DistmetaError) as info:
        distmeta.train(None, resume=first.path, steps=5, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "non-finite loss at meta-step 1" in msg and "step_0000001.pt" in msg
    assert [p.name for p in RunDir(first.path).checkpoint_paths()] == ["step_0000001.pt"]
    assert sha256(good) == digest and good.stat().st_mtime_ns == mtime
    assert not [p for p in first.path.rglob("*") if ".tmp" in p.name]
    # the CLI turns it into one error line and exit code 2
    code, _, err = run_cli(capsys, "train", "--resume", first.path, "--steps", 5, "--no-progress")
    assert code == 2 and err.strip().count("\n") == 0 and "non-finite loss" in err


# --------------------------------------------------------------------------- extension points
class TinyBackbone(nn.Module):
    """A user's own backbone: one hidden layer with tanh."""

    def __init__(self, in_features: int, width: int):
        super().__init__()
        self.layer = nn.Linear(in_features, width)
        self.out_features = width

    def forward(self, x):
        return torch.tanh(self.layer(x.flatten(1)))


class LinearRegressionTasks(TaskDistribution):
    """A user's own task family: y = w . x + b, x in R^3, with w = (1, -2, 0.5) + N(0, 0.3^2 I)
    and b ~ U[-0.5, 0.5] per task (a shared structure that meta-training can find)."""
    kind = "regression"
    input_shape = (3,)
    output_dim = 1

    def __init__(self, shots: int, queries: int):
        self.shots, self.queries = shots, queries

    def sample(self, seed: int):
        rng = np.random.default_rng(seed)
        w, b = np.array([[1.0], [-2.0], [0.5]]) + 0.3 * rng.normal(size=(3, 1)), rng.uniform(-0.5, 0.5)
        xs, xq = rng.normal(size=(self.shots, 3)), rng.normal(size=(self.queries, 3))
        f = lambda x: (x @ w + b).astype(np.float32)
        return {"support_x": xs.astype(np.float32), "support_y": f(xs), "query_x": xq.astype(np.float32),
                "query_y": f(xq), "seed": np.int64(seed % (2 ** 62))}


MODELS.register("test_tiny_backbone", lambda model_cfg, input_shape: TinyBackbone(
    int(np.prod(input_shape)), model_cfg.hidden[0]), overwrite=True)
TASKS.register("test_linear_regression", lambda task_cfg, datasets, split: LinearRegressionTasks(
    task_cfg.shots, task_cfg.queries), overwrite=True)


def test_user_model_and_task_distribution_train(tmp_path):
    cfg = {"name": "user_parts", "data": {"dataset": "none"},
           "task": {"kind": "test_linear_regression", "shots": 10, "queries": 10},
           "model": {"name": "test_tiny_backbone", "hidden": [32]},
           "algorithm": {"name": "maml", "inner_lr": 0.1, "inner_steps": 1},
           "optim": {"lr": 0.01, "meta_batch": 8, "steps": 60},
           "eval": {"every": 1000, "episodes": 10, "final_episodes": 50},
           "checkpoint": {"every": 1000}, "log_every": 1}
    result = distmeta.train(cfg, out=tmp_path / "run", progress=False)
    import csv

    with open(result.path / "metrics.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
    assert result.metrics["mse"] < result.metrics["mse_before_adaptation"]
    model = distmeta.load(result.path)  # the registered names rebuild the model
    assert isinstance(model.network.backbone, TinyBackbone)
    task = to_torch(LinearRegressionTasks(10, 5).sample(123))
    assert model.adapt(task["support_x"], task["support_y"]).predict(task["query_x"]).shape == (5, 1)
