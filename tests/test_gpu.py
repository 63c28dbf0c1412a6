"""CUDA correctness of the meta-gradient executors (run by benchmarks/gpu_check.sh).

On a GPU, ``algorithm.executor: auto`` picks ``vmap`` (distmeta.engine.core), so
the vmapped second-order MAML meta-gradient of conv4 (with the plain-op batch
norm) must equal the per-task loop there too, and the CUDA loop must equal the
CPU loop. Random tensors stand in for Omniglot (28x28, 5-way 1-shot).

Nothing here imports Ray, so this file runs on a machine with torch alone; a
missing pyyaml/numpy (needed by ``distmeta.config`` / ``distmeta.engine.core``)
falls back to an equivalent local executor and config, and the separate import
test says which module is missing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distmeta.algorithms.maml import MAML
from distmeta.models.backbones import Conv4
from distmeta.models.network import Network

REPO = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

try:  # the project's executors; they need pyyaml (config) and numpy (tasks)
    from distmeta.engine.core import meta_batch_gradient
    CORE_IMPORT_ERROR = None
except ModuleNotFoundError as exc:  # pragma: no cover - only on a bare torch machine
    CORE_IMPORT_ERROR = exc

    def meta_batch_gradient(algorithm, model, params, buffers, tasks, executor):
        """Same two executors as distmeta.engine.core.meta_batch_gradient."""
        if executor == "vmap":
            stacked = {k: torch.stack([t[k] for t in tasks]) for k in tasks[0]}
            fn = torch.func.vmap(lambda task: algorithm.task_gradient(model, params, buffers, task),
                                 randomness="same")
            grads, metrics = fn(stacked)
            return {k: g.sum(0) for k, g in grads.items()}, {k: m.sum(0) for k, m in metrics.items()}
        grad_sum, metric_sum = {}, {}
        for task in tasks:
            grads, metrics = algorithm.task_gradient(model, params, buffers, task)
            for k, g in grads.items():
                grad_sum[k] = grad_sum[k] + g if k in grad_sum else g
            for k, m in metrics.items():
                metric_sum[k] = metric_sum[k] + m if k in metric_sum else m
        return grad_sum, metric_sum


def maml_config(inner_steps: int, first_order: bool):
    fields = dict(name="maml", inner_steps=inner_steps, inner_lr=0.4, first_order=first_order,
                  anil=False, learn_inner_lr=False, eval_inner_steps=None)
    try:
        from distmeta.algorithms.maml import MAMLConfig
    except ModuleNotFoundError:  # pragma: no cover - pydantic absent
        return SimpleNamespace(**fields)
    return MAMLConfig(**fields)


def random_tasks(n_tasks, ways=5, shots=1, queries=3, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{
        "support_x": torch.rand(ways * shots, 1, size, size, generator=g, dtype=torch.float64),
        "support_y": torch.arange(ways).repeat_interleave(shots),
        "query_x": torch.rand(ways * queries, 1, size, size, generator=g, dtype=torch.float64),
        "query_y": torch.arange(ways).repeat_interleave(queries),
    } for _ in range(n_tasks)]


def setup(device, dtype, inner_steps=1, first_order=False, n_tasks=4, channels=64):
    torch.manual_seed(0)
    model = Network(Conv4(1, channels, 28, batch_norm=True), nn.Linear(channels, 5)).to(device, dtype)
    algo = MAML(maml_config(inner_steps, first_order), "classification")
    params = {n: p.detach() for n, p in model.named_parameters()}
    tasks = [{k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in t.items()}
             for t in random_tasks(n_tasks)]
    return model, algo, params, tasks


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def assert_grads_close(got, ref, tol, what):
    assert set(got) == set(ref)
    whole = rel_err(torch.cat([got[k].reshape(-1).cpu() for k in ref]),
                    torch.cat([ref[k].reshape(-1).cpu() for k in ref]))
    assert whole <= tol, f"{what}: relative error of the whole meta-gradient {whole:.3g} > {tol:g}"
    for k in ref:  # every parameter with a non-negligible gradient on its own too
        if ref[k].norm() > 1e-3 * max(float(r.norm()) for r in ref.values()):
            e = rel_err(got[k].cpu(), ref[k].cpu())
            assert e <= 10 * tol, f"{what}: {k} relative error {e:.3g}"


def unrolled_reference(model, params, task, steps, lr):
    """Independent second-order reference: plain autograd through the unrolled inner loop."""
    names = list(params)
    leaves = [params[n].clone().requires_grad_(True) for n in names]
    fast = list(leaves)
    for _ in range(steps):
        out = torch.func.functional_call(model, dict(zip(names, fast)), task["support_x"])
        grads = torch.autograd.grad(nn.functional.cross_entropy(out, task["support_y"]), fast, create_graph=True)
        fast = [p - lr * g for p, g in zip(fast, grads)]
    out = torch.func.functional_call(model, dict(zip(names, fast)), task["query_x"])
    return dict(zip(names, torch.autograd.grad(nn.functional.cross_entropy(out, task["query_y"]), leaves)))


def test_core_and_algorithms_import_without_ray():
    """Workers on a GPU box may have torch alone: the core must not import Ray at module level."""
    code = ("import sys\n"
            "import distmeta.algorithms.maml, distmeta.models.backbones, distmeta.models.network\n"
            "try:\n"
            "    import distmeta.engine.core, distmeta.engine.local, distmeta.engine.learner\n"
            "except ModuleNotFoundError as exc:\n"
            "    print('MISSING', exc.name)\n"
            "print('RAY' if 'ray' in sys.modules else 'NORAY')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "NORAY" in out.stdout, "importing the core imported ray"
    if "MISSING" in out.stdout:
        missing = out.stdout.split("MISSING", 1)[1].split()[0]
        assert missing != "ray", "distmeta.engine.core needs ray at import time"
        pytest.skip(f"distmeta.engine.core needs {missing!r}, which is not installed here")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_loop_and_vmap_agree_on_cuda_float64(inner_steps, first_order):
    model, algo, params, tasks = setup("cuda", torch.float64, inner_steps, first_order)
    g_loop, m_loop = meta_batch_gradient(algo, model, params, {}, tasks, "loop")
    g_vmap, m_vmap = meta_batch_gradient(algo, model, params, {}, tasks, "vmap")
    assert_grads_close(g_vmap, g_loop, 1e-9, "vmap vs loop (cuda, float64)")
    torch.testing.assert_close(m_vmap["loss"], m_loop["loss"], rtol=1e-10, atol=1e-12)
    assert all(torch.isfinite(g).all() for g in g_loop.values())


@pytest.mark.gpu
@cuda
def test_cuda_second_order_matches_unrolled_autograd_and_cpu():
    model, algo, params, tasks = setup("cuda", torch.float64, inner_steps=1, n_tasks=2)
    ref = unrolled_reference(model, params, tasks[0], 1, 0.4)
    got, _ = algo.task_gradient(model, params, {}, tasks[0])
    assert_grads_close(got, ref, 1e-9, "task_gradient vs unrolled autograd (cuda)")
    first_order, _ = MAML(maml_config(1, True), "classification").task_gradient(model, params, {}, tasks[0])
    assert rel_err(torch.cat([first_order[k].reshape(-1) for k in ref]),
                   torch.cat([ref[k].reshape(-1) for k in ref])) > 1e-6, "second order equals first order"
    cpu_model, _, cpu_params, cpu_tasks = setup("cpu", torch.float64, inner_steps=1, n_tasks=2)
    g_cpu, _ = meta_batch_gradient(algo, cpu_model, cpu_params, {}, cpu_tasks, "loop")
    g_cuda, _ = meta_batch_gradient(algo, model, params, {}, tasks, "loop")
    assert_grads_close(g_cuda, g_cpu, 1e-9, "cuda vs cpu loop (float64)")


@pytest.mark.gpu
@cuda
def test_loop_and_vmap_agree_on_cuda_float32():
    """The dtype training uses; TF32 off so both executors round alike."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model, algo, params, tasks = setup("cuda", torch.float32, inner_steps=1, n_tasks=8)
        g_loop, _ = meta_batch_gradient(algo, model, params, {}, tasks, "loop")
        g_vmap, _ = meta_batch_gradient(algo, model, params, {}, tasks, "vmap")
        torch.cuda.synchronize()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm
    assert_grads_close(g_vmap, g_loop, 1e-4, "vmap vs loop (cuda, float32)")


@pytest.mark.gpu
@cuda
def test_metacore_on_cuda_picks_vmap_and_matches_the_cpu_loop():
    """End to end through MetaCore: task sampling, transfer to the device, the executor
    ``auto`` picks (vmap on CUDA) and the flat CPU gradient the engines exchange."""
    if CORE_IMPORT_ERROR is not None:  # pragma: no cover
        pytest.skip(f"distmeta.engine.core not importable ({CORE_IMPORT_ERROR})")
    import numpy as np

    from distmeta.config import from_dict
    from distmeta.data.base import ImageClassDataset
    from distmeta.engine.core import MetaCore

    rng = np.random.default_rng(0)
    images = (rng.random((40 * 5, 28, 28)) < 0.2).astype(np.uint8) * 255
    data = ImageClassDataset(images, np.repeat(np.arange(40), 5), [f"A{c // 10}/c{c}" for c in range(40)])
    datasets = {"train": data, "val": data, "test": data}
    cfg = {"seed": 1, "data": {"dataset": "none"},
           "task": {"kind": "classification", "ways": 5, "shots": 1, "queries": 2},
           "model": {"name": "conv4", "channels": 32},
           "algorithm": {"name": "maml", "inner_steps": 1, "inner_lr": 0.4, "executor": "auto"},
           "engine": {"dtype": "float64"}}
    gpu = MetaCore(from_dict(cfg), datasets=datasets, device="cuda")
    cpu = MetaCore(from_dict({**cfg, "algorithm": {**cfg["algorithm"], "executor": "loop"}}),
                   datasets=datasets, device="cpu")
    assert gpu.executor == "vmap" and cpu.executor == "loop"
    flat = cpu.initial_flat_params()
    g_gpu, m_gpu, n_gpu = gpu.shard_gradient(flat, 3, range(6))
    g_cpu, m_cpu, n_cpu = cpu.shard_gradient(flat, 3, range(6))
    assert g_gpu.device.type == "cpu" and n_gpu == n_cpu == 6
    assert rel_err(g_gpu, g_cpu) <= 1e-9, f"MetaCore cuda/vmap vs cpu/loop: {rel_err(g_gpu, g_cpu):.3g}"
    assert abs(m_gpu["loss"] - m_cpu["loss"]) <= 1e-9 * max(1.0, abs(m_cpu["loss"]))


def test_core_executors_available():
    """``executor: auto`` picks vmap on CUDA and for convolution-free models, the per-task loop for
    convolutional models on CPU (the measured winners), and always the loop for an algorithm that
    cannot run under vmap. (Runs without a GPU: it only asks which executor would be used.)"""
    if CORE_IMPORT_ERROR is not None:  # pragma: no cover
        pytest.skip(f"distmeta.engine.core not importable ({CORE_IMPORT_ERROR}); GPU tests used the fallback")
    from distmeta.engine.core import resolve_executor

    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 4))
    maml = SimpleNamespace(vmappable=True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_executor("auto", cuda, maml, conv) == "vmap"
    assert resolve_executor("auto", cpu, maml, conv) == "loop"
    assert resolve_executor("auto", cpu, maml, mlp) == "vmap"
    assert resolve_executor("vmap", cpu, maml, conv) == "vmap"          # an explicit choice is honoured
    assert resolve_executor("vmap", cuda, SimpleNamespace(vmappable=False), mlp) == "loop"
