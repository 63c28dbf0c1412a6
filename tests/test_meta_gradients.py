"""The CPU fast paths of the meta-gradient against the reference computations.

The loop executor computes each task's gradient with ``MAML.eager_task_gradient``
(plain autograd), through conv4's fused batch norm, ``layers.MaxPool2d`` and
``layers.Conv2d`` (the native kernels for a 1-channel constant input); the
vmap executor computes ``MAML.task_gradient`` (nested ``torch.func.grad``) with the
layers in their composite form. Both must be the same function: here in float64,
second order, 1 and 5 inner steps, MAML, Meta-SGD, ANIL, FOMAML and Proto-MAML.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distmeta.algorithms.maml import MAML, MAMLConfig
from distmeta.engine.core import meta_batch_gradient
from distmeta.models.backbones import Conv4
from distmeta.models.layers import Conv2d, MaxPool2d, TaskBatchNorm2d, composite_ops
from distmeta.models.network import Network


def tasks_f64(n_tasks=3, ways=3, shots=2, queries=2, size=16):
    g = torch.Generator().manual_seed(11)
    return [{"support_x": torch.rand(ways * shots, 1, size, size, generator=g, dtype=torch.float64),
             "support_y": torch.arange(ways).repeat_interleave(shots),
             "query_x": torch.rand(ways * queries, 1, size, size, generator=g, dtype=torch.float64),
             "query_y": torch.arange(ways).repeat_interleave(queries)} for _ in range(n_tasks)]


def conv4_net(algo, channels=4, size=16, ways=3):
    torch.manual_seed(0)
    net = Network(Conv4(1, channels, size), nn.Linear(channels, ways)).double()
    net.add_parameters(algo.extra_parameters(list(net.named_parameters())))
    return net


VARIANTS = [{}, {"learn_inner_lr": True}, {"anil": True}, {"first_order": True}, {"head_init": "prototypes"}]


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("variant", VARIANTS, ids=["maml", "meta_sgd", "anil", "fomaml", "proto_maml"])
def test_loop_executor_equals_vmap_and_torch_func(steps, variant):
    algo = MAML(MAMLConfig(name="maml", inner_steps=steps, inner_lr=0.1, **variant), "classification")
    net = conv4_net(algo)
    params = {n: p.detach() for n, p in net.named_parameters()}
    tasks = tasks_f64()
    g_loop, m_loop = meta_batch_gradient(algo, net, params, {}, tasks, "loop")
    g_vmap, m_vmap = meta_batch_gradient(algo, net, params, {}, tasks, "vmap")
    assert set(g_loop) == set(params)
    for n in params:
        torch.testing.assert_close(g_loop[n], g_vmap[n], rtol=1e-9, atol=1e-11)
    for k in m_vmap:
        torch.testing.assert_close(m_loop[k], m_vmap[k], rtol=1e-12, atol=1e-12)
    # task by task, eager (autograd) == torch.func, with the same layers
    for task in tasks[:1]:
        eager, em = algo.eager_task_gradient(net, params, {}, task)
        func, fm = algo.task_gradient(net, params, {}, task)
        for n in params:
            torch.testing.assert_close(eager[n], func[n], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(em["loss"], fm["loss"])
    if variant.get("learn_inner_lr") and not variant.get("first_order"):
        assert any(float(g_loop[n].abs().max()) > 0 for n in params if n.startswith("meta_lr."))


def test_eager_task_gradient_is_second_order_and_matches_unrolled_autograd():
    """Against an independent unrolled inner loop through the module itself (native layers)."""
    algo = MAML(MAMLConfig(name="maml", inner_steps=2, inner_lr=0.1), "classification")
    net = conv4_net(algo)
    task = tasks_f64(1)[0]
    names = [n for n, _ in net.named_parameters()]
    leaves = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    fast = list(leaves)
    for _ in range(2):
        loss = F.cross_entropy(torch.func.functional_call(net, dict(zip(names, fast)), task["support_x"]),
                               task["support_y"])
        fast = [p - 0.1 * g for p, g in zip(fast, torch.autograd.grad(loss, fast, create_graph=True))]
    q = F.cross_entropy(torch.func.functional_call(net, dict(zip(names, fast)), task["query_x"]), task["query_y"])
    ref = dict(zip(names, torch.autograd.grad(q, leaves)))
    grads, _ = algo.eager_task_gradient(net, {n: p.detach() for n, p in net.named_parameters()}, {}, task)
    for n in names:
        torch.testing.assert_close(grads[n], ref[n], rtol=1e-9, atol=1e-11)
    fo = MAML(MAMLConfig(name="maml", inner_steps=2, inner_lr=0.1, first_order=True), "classification")
    g_fo, _ = fo.eager_task_gradient(net, {n: p.detach() for n, p in net.named_parameters()}, {}, task)
    assert max(float((grads[n] - g_fo[n]).abs().max()) for n in names) > 1e-6


def test_fused_batch_norm_equals_composite_to_third_order():
    """The fused kernels with distmeta's own double backward (``_TaskBatchNormGradient``)
    against the plain-tensor-op form, every upstream term (x, gamma, beta) in play."""
    torch.manual_seed(1)
    bn = TaskBatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 4, 4, dtype=torch.float64)

    def derivatives():
        y = bn(x)
        gx, gw, gb = torch.autograd.grad((y * w).sin().sum(), [x, bn.weight, bn.bias], create_graph=True)
        hx = torch.autograd.grad((gx ** 2).sum() + (gw * gb).sum() + gw.sum() + (gb ** 2).sum(),
                                 [x, bn.weight, bn.bias], create_graph=True)
        third = torch.autograd.grad((hx[0] ** 3).sum() + (hx[1] ** 2).sum(), [x, bn.weight])
        return [y, gx, gw, gb, *hx, *third]

    assert type(bn(x).grad_fn).__name__ == "_TaskBatchNormBackward"   # the fused path is taken
    fused = derivatives()
    with composite_ops():
        assert type(bn(x).grad_fn).__name__ != "_TaskBatchNormBackward"
        composite = derivatives()
    for a, b in zip(fused, composite):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # only some upstream terms (the others None): x alone, then gamma and beta alone
    gx, gw, gb = torch.autograd.grad(bn(x).pow(3).sum(), [x, bn.weight, bn.bias], create_graph=True)
    with composite_ops():
        cx, cw, cb = torch.autograd.grad(bn(x).pow(3).sum(), [x, bn.weight, bn.bias], create_graph=True)
    for fused_out, composite_out in (((gx * w).sum(), (cx * w).sum()), ((gw * gb).sum(), (cw * cb).sum())):
        for a, b in zip(torch.autograd.grad(fused_out, [x, bn.weight], retain_graph=True),
                        torch.autograd.grad(composite_out, [x, bn.weight], retain_graph=True)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    f = lambda t, g, b: bn.__class__.forward(bn, t)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, bn.weight, bn.bias))
    # one value per channel (1 image, 1x1): the composite form (the fused kernel refuses it)
    assert torch.equal(bn(torch.ones(1, 3, 1, 1, dtype=torch.float64)), bn.bias.detach()[None, :, None, None])


@pytest.mark.parametrize("size", [8, 7, 3])
def test_max_pool_equals_nn_max_pool_bit_for_bit(size):
    torch.manual_seed(2)
    x = torch.randn(4, 5, size, size, dtype=torch.float64, requires_grad=True)
    x.data[0, 0, :2, :2] = 1.0  # a tie: both kernels pick the first maximum
    w = torch.randn(4, 5, size // 2, size // 2, dtype=torch.float64)
    out = []
    for pool in (MaxPool2d(2), nn.MaxPool2d(2)):
        y = pool(x)
        gx = torch.autograd.grad((y * w).pow(3).sum(), x, create_graph=True)[0]
        hx = torch.autograd.grad((gx * gx.detach().sign()).sum(), x, allow_unused=True, materialize_grads=True)[0]
        out.append((y, gx, hx))
    for a, b in zip(*out):
        assert torch.equal(a, b)
    assert torch.autograd.gradgradcheck(MaxPool2d(2), (torch.randn(2, 3, size, size, dtype=torch.float64,
                                                               requires_grad=True),))  # no ties
    # under torch.func transforms and composite_ops it is nn.MaxPool2d (vmap over tasks)
    xs = torch.randn(3, 2, 5, size, size, dtype=torch.float64)
    v = torch.func.vmap(MaxPool2d(2))(xs)
    assert torch.equal(v, torch.stack([F.max_pool2d(t, 2) for t in xs]))
    x0 = xs[0].clone().requires_grad_()
    g = torch.func.grad(lambda t: MaxPool2d(2)(t).pow(2).sum())(x0.detach())
    assert torch.equal(g, torch.autograd.grad(F.max_pool2d(x0, 2).pow(2).sum(), x0)[0])
    with composite_ops():
        assert torch.equal(MaxPool2d(2)(x0), F.max_pool2d(x0, 2))


def third_order_gradient(conv, params):
    """d/dp of sum(sin(d/dW of sum((d/dW of sum(y^3))^2))), p = (W[, b]): three nested derivatives."""
    g = torch.autograd.grad(conv(*params).pow(3).sum(), params[0], create_graph=True)[0]
    h = torch.autograd.grad(g.pow(2).sum(), params[0], create_graph=True)[0]
    return torch.autograd.grad(h.sin().sum(), params)


@pytest.mark.parametrize("stride,padding,bias", [(1, 1, False), (2, 0, True)])
def test_single_channel_conv_takes_the_native_path_and_equals_conv2d_to_third_order(stride, padding, bias):
    """``layers.Conv2d`` on a 1-channel input that needs no gradient runs torch's native
    kernels through its own autograd functions (pinned here: they rest on internal aten ops);
    values and derivatives of every order equal ``F.conv2d``'s."""
    torch.manual_seed(4)
    conv = Conv2d(1, 4, 3, stride=stride, padding=padding, bias=bias).double()
    x = torch.rand(3, 1, 9, 9, dtype=torch.float64)
    assert type(conv(x).grad_fn).__name__ == "_ConstantInputConv2dBackward"
    names = ["weight", "bias"] if bias else ["weight"]
    params = [getattr(conv, n).detach().clone().requires_grad_() for n in names]

    def native(*p):
        return torch.func.functional_call(conv, dict(zip(names, p)), (x,))

    def reference(*p):
        return F.conv2d(x, p[0], p[1] if bias else None, stride=stride, padding=padding)

    torch.testing.assert_close(native(*params), reference(*params), rtol=1e-14, atol=1e-14)
    for got, want in zip(third_order_gradient(native, params), third_order_gradient(reference, params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(native, params)
    # float32, the training dtype: the forward values of oneDNN's F.conv2d
    x32 = torch.rand(75, 1, 28, 28)
    conv32 = Conv2d(1, 64, 3, padding=1, bias=False)
    torch.testing.assert_close(conv32(x32), F.conv2d(x32, conv32.weight, padding=1), rtol=1e-6, atol=1e-6)


def test_conv2d_falls_back_to_nn_conv2d_off_its_path():
    """More input channels, an input that needs a gradient, vmap: plain ``nn.Conv2d``."""
    torch.manual_seed(5)
    grey = Conv2d(1, 2, 3, padding=1).double()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert type(grey(x).grad_fn).__name__ == "ConvolutionBackward0"
    rgb = Conv2d(3, 2, 3, padding=1).double()
    assert type(rgb(torch.rand(2, 3, 6, 6, dtype=torch.float64)).grad_fn).__name__ == "ConvolutionBackward0"
    xs = torch.rand(4, 2, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(grey)(xs), torch.stack([nn.Conv2d.forward(grey, t) for t in xs]),
                               rtol=0, atol=0)


def test_conv4_pools_before_relu_without_changing_the_function():
    """conv4 applies max-pool then ReLU; the old order (ReLU then pool) is the same
    network: the same outputs and meta-gradients, the same parameter names."""
    algo = MAML(MAMLConfig(name="maml", inner_steps=2, inner_lr=0.1), "classification")
    net = conv4_net(algo)
    old = copy.deepcopy(net)
    mods = list(old.backbone.net)
    for i in range(0, len(mods), 4):
        mods[i + 2], mods[i + 3] = mods[i + 3], mods[i + 2]
    old.backbone.net = nn.Sequential(*mods)
    assert isinstance(old.backbone.net[2], nn.ReLU) and isinstance(net.backbone.net[2], MaxPool2d)
    assert [n for n, _ in old.named_parameters()] == [n for n, _ in net.named_parameters()]
    params = {n: p.detach() for n, p in net.named_parameters()}
    tasks = tasks_f64(2)
    x = tasks[0]["query_x"]
    torch.testing.assert_close(net(x), old(x), rtol=0, atol=0)
    g_new, _ = meta_batch_gradient(algo, net, params, {}, tasks, "loop")
    g_old, _ = meta_batch_gradient(algo, old, params, {}, tasks, "loop")
    for n in params:
        torch.testing.assert_close(g_new[n], g_old[n], rtol=1e-12, atol=1e-14)


def test_float32_loop_stays_close_to_the_composite_torch_func_path():
    """Training runs in float32: the fast path and the old one round differently, not more."""
    algo = MAML(MAMLConfig(name="maml", inner_steps=1, inner_lr=0.4), "classification")
    torch.manual_seed(0)
    net = Network(Conv4(1, 8, 28), nn.Linear(8, 5))
    params = {n: p.detach() for n, p in net.named_parameters()}
    g = torch.Generator().manual_seed(3)
    tasks = [{"support_x": torch.rand(5, 1, 28, 28, generator=g), "support_y": torch.arange(5),
              "query_x": torch.rand(15, 1, 28, 28, generator=g), "query_y": torch.arange(5).repeat(3)}
             for _ in range(2)]
    fast, _ = meta_batch_gradient(algo, net, params, {}, tasks, "loop")
    with composite_ops():
        ref = [algo.task_gradient(net, params, {}, t)[0] for t in tasks]
    for n in params:
        r = (ref[0][n].double() + ref[1][n].double())
        assert float((fast[n] - r).norm()) <= 1e-4 * float(r.norm()) + 1e-7
