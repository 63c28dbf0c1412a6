"""Meta-gradients and losses against independent computations."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distmeta.algorithms.base import forward
from distmeta.algorithms.maml import MAML, MAMLConfig
from distmeta.algorithms.protonet import ProtoNet, prototypes, squared_distance_logits
from distmeta.algorithms.reptile import Reptile, ReptileConfig
from distmeta.algorithms.siamese import Siamese, SiameseConfig, balanced_pairs, contrastive_loss
from distmeta.config import ModelConfig
from distmeta.engine.core import meta_batch_gradient
from distmeta.models.backbones import Conv4, MLP
from distmeta.models.network import Network


def regression_task(seed, n=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a, ph = 0.5 + 4 * torch.rand(1, generator=g), 3 * torch.rand(1, generator=g)
    xs, xq = 10 * torch.rand(n, 1, generator=g) - 5, 10 * torch.rand(n, 1, generator=g) - 5
    f = lambda x: a * torch.sin(x - ph)
    return {k: v.to(dtype) for k, v in dict(support_x=xs, support_y=f(xs), query_x=xq, query_y=f(xq)).items()}


def tiny_mlp():
    torch.manual_seed(0)
    return Network(MLP(1, [8, 8]), nn.Linear(8, 1)).double()


def unrolled_maml_grad(model, task, steps, lr, first_order=False):
    """Independent reference: plain autograd through an explicitly unrolled inner loop."""
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    fast = list(params)
    for _ in range(steps):
        loss = nn.functional.mse_loss(torch.func.functional_call(model, dict(zip(names, fast)), task["support_x"]),
                                      task["support_y"])
        grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
        fast = [p - lr * g for p, g in zip(fast, grads)]
    qloss = nn.functional.mse_loss(torch.func.functional_call(model, dict(zip(names, fast)), task["query_x"]),
                                   task["query_y"])
    wrt = fast if first_order else params
    return dict(zip(names, torch.autograd.grad(qloss, wrt)))


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_second_order_matches_unrolled_autograd(steps):
    model = tiny_mlp()
    algo = MAML(MAMLConfig(name="maml", inner_steps=steps, inner_lr=0.05), "regression")
    params = dict(model.named_parameters())
    task = regression_task(1)
    grads, _ = algo.task_gradient(model, params, {}, task)
    ref = unrolled_maml_grad(model, task, steps, 0.05)
    for n in ref:
        torch.testing.assert_close(grads[n], ref[n], rtol=1e-10, atol=1e-12)
    # and it is genuinely second order: differs from the first-order gradient
    fo = unrolled_maml_grad(model, task, steps, 0.05, first_order=True)
    assert max((grads[n] - fo[n]).abs().max() for n in ref) > 1e-6


def test_maml_gradient_matches_finite_differences():
    model = tiny_mlp()
    algo = MAML(MAMLConfig(name="maml", inner_steps=2, inner_lr=0.05), "regression")
    params = {k: v.detach() for k, v in model.named_parameters()}
    task = regression_task(2)

    def meta_loss(p):  # an independent inner loop: two plain SGD steps written out with autograd
        fast = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        for _ in range(2):
            loss = nn.functional.mse_loss(torch.func.functional_call(model, fast, task["support_x"]),
                                          task["support_y"])
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {k: v - 0.05 * g for (k, v), g in zip(fast.items(), grads)}
        return nn.functional.mse_loss(torch.func.functional_call(model, fast, task["query_x"]), task["query_y"])

    grads, _ = algo.task_gradient(model, params, {}, task)
    eps = 1e-6
    for name in ["backbone.net.0.weight", "head.bias"]:
        flat = params[name].reshape(-1)
        for i in range(min(3, flat.numel())):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += eps
            minus[i] -= eps
            fd = (meta_loss({**params, name: plus.view_as(params[name])})
                  - meta_loss({**params, name: minus.view_as(params[name])})) / (2 * eps)
            assert abs(float(fd) - float(grads[name].reshape(-1)[i])) < 1e-6 * max(1.0, abs(float(fd)))


def test_fomaml_equals_query_gradient_at_adapted_parameters():
    model = tiny_mlp()
    algo = MAML(MAMLConfig(name="maml", inner_steps=2, inner_lr=0.05, first_order=True), "regression")
    task = regression_task(3)
    grads, _ = algo.task_gradient(model, dict(model.named_parameters()), {}, task)
    ref = unrolled_maml_grad(model, task, 2, 0.05, first_order=True)
    for n in ref:
        torch.testing.assert_close(grads[n], ref[n], rtol=1e-10, atol=1e-12)


def conv4_classification_tasks(n_tasks, ways=3, shots=2, queries=2, size=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n_tasks):
        out.append({
            "support_x": torch.rand(ways * shots, 1, size, size, generator=g, dtype=dtype),
            "support_y": torch.arange(ways).repeat_interleave(shots),
            "query_x": torch.rand(ways * queries, 1, size, size, generator=g, dtype=dtype),
            "query_y": torch.arange(ways).repeat_interleave(queries),
        })
    return out


@pytest.mark.parametrize("steps", [1, 5])
def test_loop_and_vmap_agree_for_second_order_maml_with_batch_norm(steps):
    torch.manual_seed(0)
    model = Network(Conv4(1, 4, 16, batch_norm=True), nn.Linear(4, 3)).double()
    algo = MAML(MAMLConfig(name="maml", inner_steps=steps, inner_lr=0.1), "classification")
    params = dict(model.named_parameters())
    tasks = conv4_classification_tasks(3)
    g_loop, m_loop = meta_batch_gradient(algo, model, params, {}, tasks, "loop")
    g_vmap, m_vmap = meta_batch_gradient(algo, model, params, {}, tasks, "vmap")
    for n in g_loop:
        torch.testing.assert_close(g_vmap[n], g_loop[n], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(m_vmap["loss"], m_loop["loss"])
    # the loop itself matches the unrolled reference on the first task (batch norm included)
    ref_params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    fast, t = list(ref_params), tasks[0]
    for _ in range(steps):
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, dict(zip(names, fast)), t["support_x"]),
                                           t["support_y"])
        fast = [p - 0.1 * g for p, g in zip(fast, torch.autograd.grad(loss, fast, create_graph=True))]
    q = nn.functional.cross_entropy(torch.func.functional_call(model, dict(zip(names, fast)), t["query_x"]), t["query_y"])
    ref = torch.autograd.grad(q, ref_params)
    single, _ = algo.task_gradient(model, params, {}, t)
    for n, r in zip(names, ref):
        torch.testing.assert_close(single[n], r, rtol=1e-9, atol=1e-11)


def test_reptile_update_is_epsilon_times_mean_displacement():
    from distmeta.algorithms.reptile import inner_train

    model = tiny_mlp()
    cfg = ReptileConfig(name="reptile", inner_steps=3, inner_lr=0.02, epsilon=0.7)
    algo = Reptile(cfg, "regression")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    tasks = [regression_task(s) for s in range(4)]
    phis = [inner_train(model, params, {}, t["support_x"], t["support_y"], kind="regression", steps=3,
                        lr=0.02, optimizer="sgd") for t in tasks]
    # the phi really moved with 3 plain SGD steps
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    for _ in range(3):
        loss = nn.functional.mse_loss(torch.func.functional_call(model, p, tasks[0]["support_x"]), tasks[0]["support_y"])
        gs = torch.autograd.grad(loss, list(p.values()))
        p = {k: (v - 0.02 * g).detach().requires_grad_(True) for (k, v), g in zip(p.items(), gs)}
    for k in p:
        torch.testing.assert_close(phis[0][k], p[k].detach())
    grad_sum, _ = meta_batch_gradient(algo, model, params, {}, tasks, "loop")
    opt = algo.outer_optimizer(model.parameters(), None)
    for param, (name, _) in zip(model.parameters(), model.named_parameters()):
        param.grad = grad_sum[name] / len(tasks)
    opt.step()
    for name, param in model.named_parameters():
        expected = params[name] + 0.7 * torch.stack([phi[name] - params[name] for phi in phis]).mean(0)
        torch.testing.assert_close(param.detach(), expected)


def test_reptile_epsilon_anneals_linearly():
    algo = Reptile(ReptileConfig(name="reptile", epsilon=1.0, epsilon_final=0.0), "classification")
    assert algo.outer_lr(0.0, 0, 100) == pytest.approx(1.0)
    assert algo.outer_lr(0.0, 50, 100) == pytest.approx(0.5)
    assert algo.outer_lr(0.0, 100, 100) == pytest.approx(0.0)


def test_protonet_logits_are_negative_squared_distances():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    protos = prototypes(emb, labels, 3)
    torch.testing.assert_close(protos[1], emb[2:4].mean(0))
    q = torch.randn(5, 4, generator=g)
    logits = squared_distance_logits(q, protos)
    for i in range(5):
        for c in range(3):
            assert logits[i, c].item() == pytest.approx(-float(((q[i] - protos[c]) ** 2).sum()), rel=1e-6)


def test_contrastive_loss_convention_y1_means_different():
    d = torch.tensor([0.3, 0.3])
    same, different = torch.tensor([False]), torch.tensor([True])
    # a same-class pair is penalised by its distance squared; pulling it closer lowers the loss
    assert contrastive_loss(d[:1], same, 1.0) == pytest.approx(0.09)
    assert contrastive_loss(torch.tensor([0.1]), same, 1.0) < contrastive_loss(torch.tensor([0.3]), same, 1.0)
    # a different-class pair inside the margin is pushed out; beyond the margin it costs nothing
    assert contrastive_loss(d[:1], different, 1.0) == pytest.approx(0.49)
    assert contrastive_loss(torch.tensor([1.2]), different, 1.0) == 0


def test_contrastive_training_pulls_same_pairs_together_and_pushes_different_beyond_margin():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 10, generator=g)
    x = (centers[:, None, :] + 0.3 * torch.randn(4, 6, 10, generator=g)).reshape(-1, 10)
    y = torch.arange(4).repeat_interleave(6)
    model = Network(MLP(10, [16]), None)
    algo = Siamese(SiameseConfig(name="siamese", loss="contrastive", margin=2.0, pairs=64), "classification")
    task = {"support_x": x[:12], "support_y": y[:12], "query_x": x[12:], "query_y": y[12:], "seed": torch.tensor(3)}
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def distances():
        z = model(x).detach()
        d = torch.cdist(z, z)
        same = y[:, None] == y[None, :]
        return d[same & ~torch.eye(len(y), dtype=bool)].mean(), d[~same].min()

    before_same, _ = distances()
    for step in range(300):
        task["seed"] = torch.tensor(step)
        grads, _ = algo.task_gradient(model, dict(model.named_parameters()), {}, task)
        for n, p in model.named_parameters():
            p.grad = grads[n]
        opt.step()
    after_same, after_diff_min = distances()
    assert after_same < 0.5 * before_same
    assert after_diff_min > 0.8 * 2.0  # different-class pairs end (nearly) beyond the margin m = 2


def test_balanced_pairs_are_half_same_half_different():
    y = torch.arange(5).repeat_interleave(3)
    a, b = balanced_pairs(y, 40, seed=0)
    same = (y[a] == y[b])
    assert int(same.sum()) == 20 and bool((a != b).all())
    a2, b2 = balanced_pairs(y, 40, seed=0)
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_siamese_verification_head_trains_with_bce():
    torch.manual_seed(0)
    model = Network(MLP(10, [16]), None, {"verifier": nn.Linear(16, 1)})
    algo = Siamese(SiameseConfig(name="siamese", loss="verification", pairs=32), "classification")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 10, generator=g)
    task = {"support_x": x[:6], "support_y": torch.arange(3).repeat(2), "query_x": x[6:],
            "query_y": torch.arange(3).repeat(2), "seed": torch.tensor(0)}
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    # the BCE target is 1 for a SAME-class pair: the loss equals BCE(sim, same) by hand
    a, b = balanced_pairs(torch.cat([task["support_y"], task["query_y"]]), 32, 0)
    y = torch.cat([task["support_y"], task["query_y"]])
    z = forward(model, params, {}, torch.cat([task["support_x"], task["query_x"]]))
    sim = algo.pair_similarity(params, z[a], z[b])
    _, metrics = algo.task_gradient(model, params, {}, task)
    expected = nn.functional.binary_cross_entropy_with_logits(sim, (y[a] == y[b]).to(sim.dtype))
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-6)
    # and it trains: 200 plain gradient steps on this episode lower the loss and separate the pairs
    first = float(metrics["loss"])
    for _ in range(200):
        grads, metrics = algo.task_gradient(model, params, {}, task)
        params = {k: v - 0.3 * grads[k] for k, v in params.items()}
    assert float(metrics["loss"]) < 0.5 * first and float(metrics["pair_accuracy"]) > 0.9
