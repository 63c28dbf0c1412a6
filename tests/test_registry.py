"""Registries: a config can name a user's own dataset, task distribution,
backbone or algorithm; unknown names fail with the registered ones listed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import distmeta
import distmeta.builtin  # noqa: F401  (registers the built-in components)
from distmeta.algorithms.base import Algorithm, forward, score_metrics
from distmeta.config import ConfigError, from_dict
from distmeta.data.base import ImageClassDataset
from distmeta.registry import ALGORITHMS, DATASETS, MODELS, TASKS, Registry


def test_builtin_names():
    assert {"maml", "fomaml", "reptile", "protonet", "siamese"} <= set(ALGORITHMS.names())
    assert {"mlp", "conv4"} <= set(MODELS.names())
    assert {"sinusoid", "classification"} <= set(TASKS.names())
    assert {"omniglot", "parquet", "miniimagenet", "none"} <= set(DATASETS.names())


def test_register_get_names_contains():
    reg = Registry("widget")
    obj = object()
    assert reg.register("a", obj) is obj
    assert reg.get("a") is obj and "a" in reg and "b" not in reg

    @reg.register("b")
    def factory():
        return 1

    assert reg.get("b") is factory and reg.names() == ["a", "b"]
    reg.register("a", obj)  # the same object again is fine
    with pytest.raises(KeyError, match="widget 'a' is already registered"):
        reg.register("a", object())
    other = object()
    reg.register("a", other, overwrite=True)
    assert reg.get("a") is other


def test_unknown_name_lists_registered():
    reg = Registry("widget")
    reg.register("alpha", 1)
    reg.register("beta", 2)
    with pytest.raises(KeyError) as info:
        reg.get("gamma")
    msg = info.value.args[0]
    assert "\n" not in msg and "unknown widget 'gamma'" in msg and "alpha, beta" in msg
    with pytest.raises(KeyError, match=r"\(none\)"):
        Registry("empty").get("x")


@pytest.mark.parametrize("field, section, key", [
    ("algorithm.name", "algorithm", "name"), ("model.name", "model", "name"),
    ("task.kind", "task", "kind"), ("data.dataset", "data", "dataset")])
def test_config_rejects_unregistered_names(field, section, key):
    with pytest.raises(ConfigError) as info:
        from_dict({section: {key: "not_registered_anywhere"}})
    msg = str(info.value)
    assert msg.startswith(f"{field}: 'not_registered_anywhere' is not one of") and "\n" not in msg


# --------------------------------------------------------------------------- user components end to end
class Pretrain(Algorithm):
    """A user's algorithm: plain supervised training on the query set, no adaptation."""
    name = "test_pretrain"
    vmappable = True

    def task_gradient(self, model, params, buffers, task):
        def loss(p):
            m = score_metrics(self.kind, forward(model, p, buffers, task["query_x"]), task["query_y"])
            return m["loss"], {k: v.detach() for k, v in m.items()}

        return torch.func.grad(loss, has_aux=True)(params)

    def adapt(self, model, params, buffers, support_x, support_y, steps=None):
        return params

    def predict(self, model, params, buffers, state, query_x):
        return forward(model, state, buffers, query_x)


def synthetic_glyphs(data_cfg):
    """A user's dataset: 12 classes of 8x8 images, each class a fixed pattern plus noise."""
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, size=(12, 8, 8))
    labels = np.repeat(np.arange(12), 6)
    images = np.clip(protos[labels] + rng.normal(0, 20, size=(72, 8, 8)), 0, 255).astype(np.uint8)
    full = ImageClassDataset(images, labels, [f"glyphs/c{i:02d}" for i in range(12)])
    return {"train": full.subset(range(8)), "val": full.subset(range(8, 12)), "test": full.subset(range(8, 12))}


class Flatten(nn.Module):
    """A user's backbone: flatten + linear."""

    def __init__(self, n, width):
        super().__init__()
        self.fc = nn.Linear(n, width)
        self.out_features = width

    def forward(self, x):
        return self.fc(x.flatten(1))


ALGORITHMS.register("test_pretrain", Pretrain, overwrite=True)
DATASETS.register("test_glyphs", synthetic_glyphs, overwrite=True)
MODELS.register("test_flatten", lambda cfg, shape: Flatten(int(np.prod(shape)), cfg.hidden[0]), overwrite=True)


def test_user_algorithm_trains(tmp_path):
    cfg = {"name": "user_algo", "data": {"dataset": "none"}, "task": {"kind": "sinusoid", "shots": 5},
           "model": {"name": "mlp", "hidden": [16]}, "algorithm": {"name": "test_pretrain"},
           "optim": {"meta_batch": 4, "steps": 5}, "eval": {"every": 5, "episodes": 2, "final_episodes": 2}}
    result = distmeta.train(cfg, out=tmp_path / "run", progress=False)
    assert result.step == 5 and np.isfinite(result.metrics["mse"])
    model = distmeta.load(result.path)
    assert isinstance(model.algorithm, Pretrain)


def test_user_dataset_and_backbone_train_protonet(tmp_path):
    cfg = {"name": "user_data", "data": {"dataset": "test_glyphs"},
           "task": {"kind": "classification", "ways": 3, "shots": 1, "queries": 2},
           "model": {"name": "test_flatten", "hidden": [16]}, "algorithm": {"name": "protonet"},
           "optim": {"lr": 0.01, "meta_batch": 2, "steps": 30},
           "eval": {"every": 30, "episodes": 20, "final_episodes": 50}, "log_every": 1}
    result = distmeta.train(cfg, out=tmp_path / "run", progress=False)
    assert result.metrics["accuracy"] > 0.6  # chance 1/3; the classes are easy
    with pytest.raises(ConfigError, match=r"task.ways: 5 exceeds the 4 classes of split '(val|test)'"):
        distmeta.train({**cfg, "task": {**cfg["task"], "ways": 5}}, out=tmp_path / "bad", progress=False)
