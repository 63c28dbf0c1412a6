"""The Python API: ``distmeta.load(path).adapt(support_x, support_y).predict(query_x)``
for every algorithm, from a run folder or a checkpoint file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import distmeta
from distmeta.engine.core import load_datasets
from distmeta.engine.run_dir import CheckpointError, RunDir
from distmeta.registry import TASKS
from distmeta.tasks.base import to_torch


def omniglot_cfg(root, algorithm, **extra):
    cfg = {"name": f"api_{algorithm['name']}", "seed": 0,
           "data": {"dataset": "omniglot", "preset": "minimal", "root": str(root), "download": False,
                    "image_size": 28},
           "task": {"kind": "classification", "ways": 5, "shots": 1, "queries": 2, "rotations": True},
           "model": {"name": "conv4", "channels": 8}, "algorithm": algorithm,
           "optim": {"lr": 0.001, "meta_batch": 2, "steps": 3},
           "eval": {"every": 3, "episodes": 2, "final_episodes": 2}, "checkpoint": {"every": 1, "keep_last": 2},
           "engine": {"device": "cpu"}}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, omniglot_dir):
    """Tiny trained runs (3 steps each) of every method, in one folder per method."""
    root = tmp_path_factory.mktemp("api")
    out = {}
    for algo in ({"name": "protonet"}, {"name": "maml", "inner_lr": 0.4, "eval_inner_steps": 2},
                 {"name": "reptile", "inner_lr": 0.001, "inner_optimizer": "adam", "inner_steps": 2},
                 {"name": "siamese", "pairs": 8}):
        out[algo["name"]] = distmeta.train(omniglot_cfg(omniglot_dir, algo), out=root / algo["name"],
                                           progress=False).path
    out["sinusoid"] = distmeta.train(
        {"name": "api_sinusoid", "data": {"dataset": "none"}, "task": {"kind": "sinusoid", "shots": 5},
         "model": {"name": "mlp", "hidden": [16, 16]}, "algorithm": {"name": "maml", "eval_inner_steps": 4},
         "optim": {"meta_batch": 2, "steps": 3}, "eval": {"every": 3, "episodes": 2, "final_episodes": 2}},
        out=root / "sinusoid", progress=False).path
    return out


def episode(run_path, ways=5, index=0, shots=1, queries=2):
    model = distmeta.load(run_path)
    cfg = model.config
    task_cfg = type(cfg.task)(**{**cfg.task.__dict__, "ways": ways, "shots": shots, "queries": queries,
                                 "train_ways": None})
    dist = TASKS.get(cfg.task.kind)(task_cfg, load_datasets(cfg), "test")
    return model, to_torch(dist.sample_many(cfg.seed, "test", 0, [index])[0])


@pytest.mark.parametrize("method", ["protonet", "maml", "reptile", "siamese"])
def test_adapt_predict_classification(runs, method):
    model, task = episode(runs[method])
    pred = model.adapt(task["support_x"], task["support_y"]).predict(task["query_x"])
    assert isinstance(pred, torch.Tensor) and pred.shape == (10, 5) and torch.isfinite(pred).all()
    assert not pred.requires_grad


@pytest.mark.parametrize("method", ["protonet", "maml", "reptile", "siamese"])
def test_other_ways_and_shots_than_trained(runs, method):
    """20-way 2-shot from a 5-way 1-shot run (MAML/Reptile resize their head)."""
    model, task = episode(runs[method], ways=20, shots=2, queries=1)
    pred = model.adapt(task["support_x"], task["support_y"]).predict(task["query_x"])
    assert pred.shape == (20, 20)


def test_numpy_inputs_give_the_same_predictions(runs):
    model, task = episode(runs["protonet"])
    a = model.adapt(task["support_x"].numpy(), task["support_y"].numpy()).predict(task["query_x"].numpy())
    b = model.adapt(task["support_x"], task["support_y"]).predict(task["query_x"])
    assert torch.equal(a, b)


def test_run_folder_checkpoint_file_and_best_agree(runs):
    run = RunDir(runs["maml"])
    _, task = episode(run.path)
    preds = []
    for path in (run.path, run.latest_checkpoint(), run.checkpoints / "best.pt"):
        model = distmeta.load(path)
        preds.append(model.adapt(task["support_x"], task["support_y"]).predict(task["query_x"]))
    assert torch.equal(preds[0], preds[1])
    assert preds[2].shape == preds[0].shape


def test_adapt_steps_argument(runs):
    model, task = episode(runs["maml"])
    p0 = model.adapt(task["support_x"], task["support_y"], steps=0).predict(task["query_x"])
    p2 = model.adapt(task["support_x"], task["support_y"], steps=2).predict(task["query_x"])
    pd = model.adapt(task["support_x"], task["support_y"]).predict(task["query_x"])  # eval_inner_steps = 2
    assert torch.equal(p2, pd) and not torch.equal(p0, p2)


def test_predictor_is_reusable_and_does_not_change_the_model(runs):
    model, task = episode(runs["maml"])
    before = {k: v.clone() for k, v in model.params.items()}
    predictor = model.adapt(task["support_x"], task["support_y"])
    assert torch.equal(predictor.predict(task["query_x"]), predictor.predict(task["query_x"]))
    assert all(torch.equal(before[k], model.params[k]) for k in before)


def test_regression_adapt_predict(runs):
    model = distmeta.load(runs["sinusoid"])
    x = np.linspace(-5, 5, 7, dtype=np.float32)[:, None]
    y = 2.0 * np.sin(x - 0.5)
    pred = model.adapt(x[:5], y[:5]).predict(x)
    assert pred.shape == (7, 1) and pred.dtype == torch.float32
    unadapted = model.adapt(x[:5], y[:5], steps=0).predict(x)
    assert not torch.equal(pred, unadapted)
    assert model.config.task.kind == "sinusoid"


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError):
        distmeta.load(tmp_path / "nothing")
    with pytest.raises(CheckpointError):
        distmeta.load(tmp_path)
