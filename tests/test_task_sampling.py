"""Batched task sampling (the sinusoid's ``sample_batch``: one Philox stream per
(run seed, split, step), index-addressed) and ``engine.workers: auto``.

Task i of step t must not depend on which other tasks were sampled with it (any
shard of any worker count gets the same task), and must stay in the sinusoid's
distribution. ``auto`` is tested with its measured cost monkeypatched: timings
never go in tests."""
import math

import numpy as np
import pytest
import torch

from distmeta.config import from_dict
from distmeta.engine import supervised
from distmeta.engine.core import MetaCore, meta_batch_gradient
from distmeta.schema import ConfigError, EngineConfig, parse
from distmeta.tasks.base import TaskBatch, stack_tasks, task_draws

FIELDS = ("support_x", "support_y", "query_x", "query_y", "seed")


def sinusoid(**over):
    d = {"name": "sampling", "seed": 3, "data": {"dataset": "none"},
         "task": {"kind": "sinusoid", "shots": 10, "queries": 10},
         "model": {"name": "mlp", "hidden": [16, 16]}, "algorithm": {"name": "maml", "inner_lr": 0.01},
         "optim": {"meta_batch": 25, "steps": 10}}
    for key, value in over.items():
        d[key] = {**d.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(d)


def assert_same_task(a, b):
    assert set(a) == set(b) == set(FIELDS)
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_task_is_a_function_of_its_index_alone():
    core = MetaCore(sinusoid())
    whole = core.make_tasks("train", 7, range(25))
    assert isinstance(whole, TaskBatch) and len(whole) == 25
    for shard in ([0], range(3, 11), range(11, 25), [24, 2, 9], [5, 6, 20, 21, 22]):   # any split, any order
        part = core.make_tasks("train", 7, shard)
        assert len(part) == len(shard)
        for j, i in enumerate(shard):
            assert_same_task(part[j], whole[i])


def test_task_distributions_are_built_once_per_split_and_setting():
    core = MetaCore(sinusoid())
    train = core.task_distribution("train")
    assert core.task_distribution("train") is train and core.task_distribution("val") is not train
    assert core.task_distribution("train", shots=10) is core.task_distribution("train", shots=10)
    assert len(core.tasks) == 3


def test_tasks_differ_across_index_step_split_and_seed():
    core, other = MetaCore(sinusoid()), MetaCore(sinusoid(seed=4))
    a = core.make_tasks("train", 0, range(4)).tensors["support_y"]
    assert len({tuple(row.flatten().tolist()) for row in a}) == 4                    # across index
    assert not torch.equal(a, core.make_tasks("train", 1, range(4)).tensors["support_y"])   # step
    assert not torch.equal(a, other.make_tasks("train", 0, range(4)).tensors["support_y"])  # run seed
    val = core.make_tasks("val", 0, range(4)).tensors["support_y"]
    assert not torch.equal(a, val)                                                   # split


def test_sinusoid_tasks_stay_in_distribution():
    dist = MetaCore(sinusoid()).task_distribution("val")    # val/test: a dense query grid
    batch = dist.sample_batch(0, "val", 0, range(2000)).tensors
    xs, ys, xq, yq = (batch[k].double() for k in ("support_x", "support_y", "query_x", "query_y"))
    assert xs.shape == (2000, 10, 1) and xq.shape == (2000, 100, 1)
    assert xs.min() >= -5 and xs.max() <= 5 and 0.5 < xs.std() / (10 / math.sqrt(12)) < 1.05
    assert torch.equal(xq[0], xq[-1]) and xq[0, 0, 0] == -5 and xq[0, -1, 0] == 5
    amp = yq.abs().amax(dim=(1, 2))          # the grid samples each curve densely: ~ its amplitude
    assert amp.min() >= 0.09 and amp.max() <= 5.0 and abs(amp.mean() - 2.55) < 0.15   # U[0.1, 5]
    # y = A sin(x - phi) with phi in [0, pi): recover A, phi from the grid and check the support points
    x = xq[:, :, 0]
    design = torch.stack([torch.sin(x), torch.cos(x)], -1)      # A sin(x - phi) = a sin x + b cos x
    coef = torch.linalg.lstsq(design, yq).solution[..., 0]       # a = A cos(phi), b = -A sin(phi)
    phi = torch.atan2(-coef[:, 1], coef[:, 0])
    assert phi.min() >= -1e-3 and phi.max() <= math.pi + 1e-3
    fit = coef[:, None, 0:1] * torch.sin(xs) + coef[:, None, 1:2] * torch.cos(xs)
    assert torch.allclose(fit, ys, atol=1e-4)


def test_a_task_is_the_same_curve_for_any_shots():
    """``distmeta eval --shots K`` scores every K on the same held-out curves."""
    core = MetaCore(sinusoid())
    tens = core.make_tasks("test", 0, range(8)).tensors
    fives = core.make_tasks("test", 0, range(8), shots=5).tensors
    assert fives["support_x"].shape == (8, 5, 1)
    assert torch.equal(tens["query_y"], fives["query_y"]) and torch.equal(tens["seed"], fives["seed"])


def test_sample_many_and_sample_batch_agree():
    dist = MetaCore(sinusoid()).task_distribution("train")
    many = dist.sample_many(3, "train", 5, [4, 0, 9])
    batch = dist.sample_batch(3, "train", 5, [4, 0, 9])
    for a, b in zip(many, batch):
        assert isinstance(a["support_x"], np.ndarray) and a["support_x"].dtype == np.float32
        assert_same_task(a, b)
    single = dist.sample(123)
    assert set(single) == set(FIELDS) and single["support_x"].shape == (10, 1)


def test_task_draws_contract():
    a = task_draws(0, "train", 1, range(6), 8)
    assert a.shape == (6, 8) and a.dtype == np.uint64
    assert np.array_equal(task_draws(0, "train", 1, [5, 1], 8), a[[5, 1]])
    with pytest.raises(ValueError, match="multiple of 4"):
        task_draws(0, "train", 1, [0], 6)
    with pytest.raises(ValueError, match="< 0"):
        task_draws(0, "train", 1, [-1], 8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_executors_take_a_task_batch_and_a_list_alike(dtype):
    core = MetaCore(sinusoid(engine={"dtype": dtype, "device": "cpu"}))
    params = core.params_from_flat(core.initial_flat_params())
    batch = core.make_tasks("train", 0, range(6))
    assert batch.tensors["support_x"].dtype == getattr(torch, dtype) and batch.tensors["seed"].dtype == torch.int64
    assert stack_tasks(batch) is batch.tensors
    results = [meta_batch_gradient(core.algorithm, core.model, params, core.buffers, tasks, executor)
               for tasks in (batch, list(batch)) for executor in ("vmap", "loop")]
    tol = 1e-10 if dtype == "float64" else 1e-5
    for grads, metrics in results[1:]:
        for k, g in grads.items():
            assert torch.allclose(g, results[0][0][k], rtol=tol, atol=tol), k
        assert torch.allclose(metrics["loss"], results[0][1]["loss"], rtol=tol)


# -- engine.workers: auto --------------------------------------------------------------------
def test_workers_field_accepts_counts_and_auto():
    assert parse(EngineConfig, {"workers": "auto"}).workers == "auto"
    assert parse(EngineConfig, {"workers": 2}).workers == 2
    assert parse(EngineConfig, {}).workers == 0                  # the default is unchanged
    for bad, needle in ((True, "integer >= 0 or auto"), (-1, ">= 0"), (1.5, "integer"), ("many", "or auto")):
        with pytest.raises(ConfigError, match="engine.workers"):
            parse(EngineConfig, {"workers": bad}, "engine")
        with pytest.raises(ConfigError, match=needle):
            parse(EngineConfig, {"workers": bad}, "engine")


class FakeRayEngine:
    def __init__(self, cfg, core):
        self.workers, self.started_ray = cfg.engine.workers, False


@pytest.fixture
def auto(monkeypatch):
    """make_engine with the step cost and the CPUs it would measure set by the test."""
    import distmeta.engine.ray_engine as ray_engine

    state = {"step_ms": None, "fit": 2, "measured": 0}

    def measure(core, meta_batch, threshold_ms):
        state["measured"] += 1
        return state["step_ms"]

    monkeypatch.setattr(supervised, "measure_step_ms", measure)
    monkeypatch.setattr(supervised, "workers_that_fit",
                        lambda e: (state["fit"], f"this machine has {state['fit']} CPUs"))
    monkeypatch.setattr(supervised, "_in_placement_group", lambda: False)
    monkeypatch.setattr(ray_engine, "RayEngine", FakeRayEngine)
    return state


def test_auto_runs_the_sinusoid_in_process(auto, capsys):
    from distmeta.engine.local import LocalEngine

    auto["step_ms"] = 3.4       # the sinusoid's in-process meta-step (benchmarks/README.md)
    cfg = sinusoid(engine={"workers": "auto"})
    engine = supervised.make_engine(cfg, MetaCore(cfg))
    assert isinstance(engine, LocalEngine) and auto["measured"] == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("distmeta: engine.workers auto -> 0:") and "3.4 ms" in line and "auto_step_ms" in line
    assert cfg.engine.workers == "auto"    # the run's config keeps what the user wrote


def test_auto_shards_an_expensive_step_over_the_cpus(auto, capsys):
    auto["step_ms"], auto["fit"] = 900.0, 4    # a conv4 Omniglot meta-step
    cfg = sinusoid(engine={"workers": "auto"})
    engine = supervised.make_engine(cfg, MetaCore(cfg))
    assert isinstance(engine, FakeRayEngine) and engine.workers == 4
    assert "engine.workers auto -> 4: an in-process meta-step of 25 tasks takes 900.0 ms" in capsys.readouterr().err


def test_auto_threshold_is_the_config_field(auto):
    auto["step_ms"] = 30.0
    cfg = sinusoid(engine={"workers": "auto"})
    assert isinstance(supervised.make_engine(cfg, MetaCore(cfg)), FakeRayEngine)       # 30 >= 25 (default)
    cfg = sinusoid(engine={"workers": "auto", "auto_step_ms": 50})
    assert not isinstance(supervised.make_engine(cfg, MetaCore(cfg)), FakeRayEngine)   # 30 < 50


def test_auto_never_picks_one_worker(auto, capsys):
    auto["step_ms"], auto["fit"] = 900.0, 1
    cfg = sinusoid(engine={"workers": "auto"})
    assert not isinstance(supervised.make_engine(cfg, MetaCore(cfg)), FakeRayEngine)
    assert auto["measured"] == 0          # nothing to measure when one worker is all that fits
    assert "one worker is never faster than in-process" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_an_explicit_count_is_always_honoured(auto, workers, capsys):
    auto["step_ms"] = 3.4 if workers else 900.0   # auto would choose the other way: never asked
    cfg = sinusoid(engine={"workers": workers})
    engine = supervised.make_engine(cfg, MetaCore(cfg))
    assert auto["measured"] == 0 and "auto" not in capsys.readouterr().err
    assert (engine.workers if isinstance(engine, FakeRayEngine) else 0) == workers


def test_measuring_leaves_the_torch_rng_alone():
    cfg = sinusoid()
    core = MetaCore(cfg)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    ms = supervised.measure_step_ms(core, 3, threshold_ms=1e9)
    assert ms > 0 and torch.equal(before, torch.get_rng_state())


def test_tune_trials_reserve_no_workers_for_auto():
    cfg = sinusoid(engine={"workers": "auto", "learner_num_cpus": 1})
    bundles = supervised.SupervisedMethod.resources(cfg).bundles
    assert bundles == [{"CPU": 1.0}]


def test_auto_on_ray_workers_gives_the_in_process_parameters(ray_session, tmp_path, capsys):
    """End to end with real workers: an ``auto_step_ms`` no step can be under makes auto shard
    (a threshold, not a timing); the sinusoid's tasks on 2 workers (prefetched, sampled in bulk
    by shard) give the in-process parameters."""
    from distmeta.engine.run_dir import load_checkpoint
    from distmeta.engine.trainer import train

    base = {"optim": {"meta_batch": 7, "steps": 4, "lr": 0.003}, "eval": {"every": 1000, "episodes": 2,
            "final_episodes": 2}, "checkpoint": {"every": 1000}}
    cpus = ray_session.cluster_resources()["CPU"]
    local = train(sinusoid(engine={"dtype": "float64"}, **base), out=tmp_path / "local", progress=False)
    capsys.readouterr()
    auto_cfg = sinusoid(engine={"dtype": "float64", "workers": "auto", "auto_step_ms": 1e-6,
                                "num_cpus": cpus / 2, "shard_timeout_s": 60}, **base)
    remote = train(auto_cfg, out=tmp_path / "auto", progress=False)
    assert "distmeta: engine.workers auto -> 2: an in-process meta-step" in capsys.readouterr().err
    a, b = (load_checkpoint(r.path)["state"]["model"] for r in (local, remote))
    va, vb = (torch.cat([p[k].reshape(-1) for k in a]) for p in (a, b))
    assert float((va - vb).norm() / va.norm()) <= 1e-9
    initial = torch.cat([p.detach().reshape(-1) for p in MetaCore(auto_cfg).model.parameters()]).double()
    assert float((va - initial).norm() / initial.norm()) > 1e-3     # the runs learned something
