"""Proto-MAML's head (``algorithm.head_init: prototypes``) for MAML and Reptile."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_meta_gradients import conv4_net, tasks_f64  # noqa: E402

from distmeta.algorithms.base import forward, task_loss
from distmeta.algorithms.maml import MAML, MAMLConfig
from distmeta.algorithms.protonet import ProtoNet
from distmeta.algorithms.reptile import Reptile, ReptileConfig
from distmeta.schema import AlgorithmConfig


def test_before_any_inner_step_the_prototype_head_scores_like_protonets():
    """logits_c(z) = 2 p_c.z - ||p_c||^2 = -||z - p_c||^2 + ||z||^2: ProtoNets' logits plus a per-query constant."""
    algo = MAML(MAMLConfig(name="maml", head_init="prototypes", eval_inner_steps=0), "classification")
    net = conv4_net(algo, ways=3)   # trained for 3 ways, scored at 5: the head is rebuilt, not resized
    params = {n: p.detach() for n, p in net.named_parameters()}
    task = tasks_f64(1, ways=5)[0]
    state = algo.adapt(net, params, {}, task["support_x"], task["support_y"])
    logits = algo.predict(net, params, {}, state, task["query_x"])
    proto = ProtoNet(AlgorithmConfig(name="protonet"), "classification")
    backbone = {n[len("backbone."):]: p for n, p in params.items() if n.startswith("backbone.")}
    ref = proto.predict(net.backbone, backbone, {}, proto.adapt(net.backbone, backbone, {}, task["support_x"],
                                                                task["support_y"]), task["query_x"])
    assert logits.shape == ref.shape == (10, 5)
    shift = logits - ref
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), rtol=1e-9, atol=1e-9)
    assert float(shift.std(0).max()) > 1e-3   # the constant is the query's own ||z||^2, not one number
    # an inner step then changes the scores
    moved = MAML(MAMLConfig(name="maml", head_init="prototypes", inner_lr=0.1, eval_inner_steps=1), "classification")
    after = moved.predict(net, params, {}, moved.adapt(net, params, {}, task["support_x"], task["support_y"]),
                          task["query_x"])
    assert float((after - logits).abs().max()) > 1e-4


def test_proto_maml_meta_gradient_matches_finite_differences():
    """The loop executor's gradient is the derivative of the meta-objective (inner step on the
    backbone and the head as separate variables, the head built from the backbone): second order
    through both, by central differences in float64."""
    algo = MAML(MAMLConfig(name="maml", head_init="prototypes", inner_steps=1, inner_lr=0.1), "classification")
    net = conv4_net(algo)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    task = tasks_f64(1)[0]
    grads, _ = algo.eager_task_gradient(net, params, {}, task)

    eps = 1e-6
    for name, index in (("backbone.net.0.weight", (0, 0, 1, 1)), ("backbone.net.1.weight", (2,))):
        def shifted(delta):
            p = {n: t.clone() for n, t in params.items()}
            p[name][index] += delta
            return p

        def full_loss(p):
            phi = algo._adapt(net, algo.initial_params(net, p, {}, task["support_x"], task["support_y"], 3),
                              {}, task["support_x"], task["support_y"], 1, False)
            return float(task_loss("classification", forward(net, phi, {}, task["query_x"]), task["query_y"]))

        with torch.enable_grad():
            fd = (full_loss(shifted(eps)) - full_loss(shifted(-eps))) / (2 * eps)
        assert grads[name][index].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert float(grads["head.weight"].abs().max()) == 0.0   # the trained head is not used


def test_reptile_with_prototype_head_meta_learns_the_backbone_only_and_adapts_at_any_way_count():
    algo = Reptile(ReptileConfig(name="reptile", head_init="prototypes", inner_steps=2, inner_lr=0.01,
                                 inner_optimizer="adam"), "classification")
    net = conv4_net(algo, ways=3)
    params = {n: p.detach() for n, p in net.named_parameters()}
    task = tasks_f64(1)[0]
    direction, metrics = algo.task_gradient(net, params, {}, task)
    assert float(direction["head.weight"].abs().max()) == 0.0 and float(direction["head.bias"].abs().max()) == 0.0
    assert float(direction["backbone.net.0.weight"].abs().max()) > 1e-6
    five = tasks_f64(1, ways=5)[0]
    state = algo.adapt(net, params, {}, five["support_x"], five["support_y"])
    assert algo.predict(net, params, {}, state, five["query_x"]).shape == (10, 5)


@pytest.mark.parametrize("head_init", ["trained", "prototypes"])
def test_meta_sgd_adapts_at_another_way_count_with_the_mean_learned_rate_of_the_head(head_init):
    algo = MAML(MAMLConfig(name="maml", learn_inner_lr=True, head_init=head_init, inner_lr=0.1,
                           eval_inner_steps=1), "classification")
    net = conv4_net(algo, ways=3)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    params["meta_lr.head__weight"] = torch.rand_like(params["meta_lr.head__weight"]).double()
    five = tasks_f64(1, ways=5)[0]
    state = algo.adapt(net, params, {}, five["support_x"], five["support_y"])
    start = algo.initial_params(net, params, {}, five["support_x"], five["support_y"], 5)
    with torch.enable_grad():
        w = start["head.weight"].detach().requires_grad_()
        loss = task_loss("classification", forward(net, {**start, "head.weight": w}, {}, five["support_x"]),
                         five["support_y"])
        g, = torch.autograd.grad(loss, w)
    expected = start["head.weight"] - params["meta_lr.head__weight"].mean(0, keepdim=True) * g
    torch.testing.assert_close(state["head.weight"], expected)


def test_reptile_inner_loop_on_support_and_queries_trains_on_both_sets():
    """inner_data: support_and_queries = one step on the count-weighted mean loss of the two sets,
    each its own forward pass (here plain SGD, so phi = theta - lr * grad exactly)."""
    cfg = dict(name="reptile", inner_steps=1, inner_lr=0.05, inner_optimizer="sgd")
    both = Reptile(ReptileConfig(**cfg, inner_data="support_and_queries"), "classification")
    net = conv4_net(both)
    params = {n: p.detach() for n, p in net.named_parameters()}
    task = tasks_f64(1, shots=1, queries=3)[0]
    direction, _ = both.task_gradient(net, params, {}, task)
    with torch.enable_grad():
        leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
        loss = (task_loss("classification", forward(net, leaves, {}, task["support_x"]), task["support_y"]) * 3
                + task_loss("classification", forward(net, leaves, {}, task["query_x"]), task["query_y"]) * 9) / 12
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    for n in params:
        torch.testing.assert_close(direction[n], 0.05 * grads[n])
    support_only, _ = Reptile(ReptileConfig(**cfg), "classification").task_gradient(net, params, {}, task)
    assert float((support_only["backbone.net.0.weight"] - direction["backbone.net.0.weight"]).abs().max()) > 1e-6
