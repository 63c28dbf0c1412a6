"""MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks"), with FOMAML, Meta-SGD and ANIL as options.

Inner loop (K steps on the support set S of task i):
    phi_0 = theta,   phi_{k+1} = phi_k - alpha * grad_phi L_S(phi_k)
Meta-objective and its gradient (second order: differentiated through the
inner loop, i.e. through the Hessian-vector products of every step):
    L(theta) = mean_i L_Q_i(phi_K(theta)),   g = d L / d theta
``first_order=True`` (FOMAML) treats grad_phi L_S as a constant, so
g = mean_i grad_phi L_Q_i(phi_K). ``learn_inner_lr`` (Meta-SGD, Li et al. 2017)
replaces alpha by a learned per-parameter tensor; ``anil`` (Raghu et al. 2020)
adapts the head only. ``head_init: prototypes`` (Proto-MAML, Triantafillou et
al. 2020) starts every inner loop from a head built from the support set
(:func:`prototype_head`) instead of the trained head, so one model serves any
number of ways.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field

from distmeta.algorithms.base import Algorithm, Tensors, forward, score_metrics, task_loss
from distmeta.algorithms.protonet import prototypes
from distmeta.registry import ALGORITHMS
from distmeta.schema import AlgorithmConfig, Bool, Int, Float


class InnerLoopConfig(AlgorithmConfig):
    """Fields of the methods that adapt by gradient steps on the support set."""
    inner_steps: Int = Field(1, ge=0, description="inner (adaptation) steps while training")
    inner_lr: Float = Field(0.01, ge=0, description="inner step size (Meta-SGD: its initial value)")
    eval_inner_steps: Optional[Int] = Field(None, ge=0, description="inner steps at evaluation (default inner_steps)")
    head_init: Literal["trained", "prototypes"] = Field(
        "trained", description="classification head each inner loop starts from: the meta-trained one, or "
                               "prototypes (Proto-MAML: w_c = 2 p_c, b_c = -||p_c||^2 from the support embeddings)")


class MAMLConfig(InnerLoopConfig):
    first_order: Bool = Field(False, description="FOMAML: treat the inner gradients as constants")
    learn_inner_lr: Bool = Field(False, description="Meta-SGD: learn a per-parameter inner learning rate")
    anil: Bool = Field(False, description="ANIL: adapt the head only")


def meta_lr_name(name: str) -> str:
    """Meta-SGD's learned inner learning rate of parameter ``name``."""
    return "meta_lr." + name.replace(".", "__")


def inner_step(params: Tensors, fast: Tensors, grads: Tensors, lr: float, learned_lr: bool) -> Tensors:
    """phi_{k+1} = phi_k - alpha * g for every adapted tensor (alpha: Meta-SGD's learned rate or ``lr``).
    A head with another number of rows than it was trained with (a resized or prototype head)
    takes the mean learned rate of the trained rows for each of its rows."""
    def rate(n):
        if not learned_lr:
            return lr
        alpha = params[meta_lr_name(n)]
        return alpha if alpha.shape == fast[n].shape else alpha.mean(0, keepdim=True)
    return {n: fast[n] - rate(n) * grads[n] for n in fast}


def adaptable_names(params: Tensors, anil: bool) -> list:
    names = [n for n in params if not n.startswith("meta_lr.")]
    return [n for n in names if n.startswith("head.")] if anil else names


def inner_adapt(model, params: Tensors, buffers: Tensors, x, y, *, kind: str, steps: int, lr: float,
                first_order: bool, anil: bool = False, learned_lr: bool = False) -> Tensors:
    """Return phi_K: ``steps`` SGD steps from ``params`` on (x, y), differentiable
    w.r.t. ``params`` unless ``first_order``."""
    names = adaptable_names(params, anil)
    fast = {n: params[n] for n in names}

    def support_loss(fast_params):
        return task_loss(kind, forward(model, {**params, **fast_params}, buffers, x), y)

    for _ in range(steps):
        grads = torch.func.grad(support_loss)(fast)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        fast = inner_step(params, fast, grads, lr, learned_lr)
    return {**params, **fast}


class InnerLoopAlgorithm(Algorithm):
    """What the methods that adapt by gradient steps (MAML, Reptile) share: their
    evaluation step count and the parameters an inner loop starts from."""

    def eval_inner_steps(self) -> int:
        return self.cfg.eval_inner_steps if self.cfg.eval_inner_steps is not None else self.cfg.inner_steps

    def rebuilds_head(self, ways: Optional[int]) -> bool:
        """Whether an inner loop for ``ways`` classes starts from a prototype head (see
        :func:`inner_loop_start`), so the trained head tensors are not used."""
        return prototype_head_used(self.kind, self.cfg.head_init, ways)

    def initial_params(self, model, params, buffers, support_x, support_y, ways: Optional[int]) -> Tensors:
        return inner_loop_start(model, params, buffers, support_x, support_y, kind=self.kind,
                                head_init=self.cfg.head_init, ways=ways)


@ALGORITHMS.register("maml")
class MAML(InnerLoopAlgorithm):
    name = "maml"
    config_class = MAMLConfig
    vmappable = True

    def extra_parameters(self, named_parameters) -> Tensors:
        """Meta-SGD: one learned inner learning rate per adapted parameter, ``meta_lr.<name>``."""
        if not self.cfg.learn_inner_lr:
            return {}
        return {meta_lr_name(n): torch.full_like(p.detach(), self.cfg.inner_lr)
                for n, p in named_parameters}

    def _adapt(self, model, params, buffers, x, y, steps: int, first_order: bool) -> Tensors:
        c = self.cfg
        return inner_adapt(model, params, buffers, x, y, kind=self.kind, steps=steps, lr=c.inner_lr,
                           first_order=first_order, anil=c.anil, learned_lr=c.learn_inner_lr)

    @property
    def first_order(self) -> bool:
        return self.cfg.first_order or self.name == "fomaml"

    def task_gradient(self, model, params, buffers, task):
        ways = training_ways(params)

        def meta_objective(p):
            p = self.initial_params(model, p, buffers, task["support_x"], task["support_y"], ways)
            phi = self._adapt(model, p, buffers, task["support_x"], task["support_y"],
                              self.cfg.inner_steps, self.first_order)
            metrics = score_metrics(self.kind, forward(model, phi, buffers, task["query_x"]), task["query_y"])
            return metrics["loss"], {k: v.detach() for k, v in metrics.items()}

        return torch.func.grad(meta_objective, has_aux=True)(params)

    def eager_task_gradient(self, model, params, buffers, task):
        """``task_gradient`` with ``torch.autograd`` (the same inner loop and meta-objective,
        equal to it to rounding: tests/test_meta_gradients.py): the loop executor's path."""
        c = self.cfg
        with torch.enable_grad():
            leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
            start = self.initial_params(model, leaves, buffers, task["support_x"], task["support_y"],
                                        training_ways(params))
            names = adaptable_names(start, c.anil)
            # views: new graph nodes, so each inner gradient is the partial derivative w.r.t. the
            # tensor the inner loop adapts, not the total one through a head built from the backbone
            fast = {n: start[n].view_as(start[n]) for n in names}
            for _ in range(c.inner_steps):
                loss = task_loss(self.kind, forward(model, {**start, **fast}, buffers, task["support_x"]),
                                 task["support_y"])
                grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not self.first_order)
                fast = inner_step(leaves, fast, dict(zip(names, grads)), c.inner_lr, c.learn_inner_lr)
            metrics = score_metrics(self.kind, forward(model, {**start, **fast}, buffers, task["query_x"]),
                                    task["query_y"])
            grads = torch.autograd.grad(metrics["loss"], list(leaves.values()), allow_unused=True)
        return ({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(leaves.items(), grads)},
                {k: v.detach() for k, v in metrics.items()})

    def adapt(self, model, params, buffers, support_x, support_y, steps: Optional[int] = None):
        steps = steps if steps is not None else self.eval_inner_steps()
        with torch.enable_grad():
            params = self.initial_params(model, params, buffers, support_x, support_y, int(support_y.max()) + 1)
            phi = self._adapt(model, params, buffers, support_x, support_y, steps, first_order=True)
        return {k: v.detach() for k, v in phi.items()}

    def predict(self, model, params, buffers, state, query_x):
        return forward(model, state, buffers, query_x)


def training_ways(params: Tensors) -> Optional[int]:
    """Rows of the trained classification head (the way count of the training tasks)."""
    w = params.get("head.weight")
    return None if w is None else int(w.shape[0])


def embed(model, params: Tensors, buffers: Tensors, x: torch.Tensor) -> torch.Tensor:
    """The backbone's embedding of ``x`` under ``params`` (the network without its head)."""
    def sub(tensors):
        return {n[len("backbone."):]: t for n, t in tensors.items() if n.startswith("backbone.")}
    return forward(model.backbone, sub(params), sub(buffers), x)


def prototype_head(model, params: Tensors, buffers: Tensors, support_x, support_y, ways: int) -> Tensors:
    """Proto-MAML's head (Triantafillou et al. 2020): with p_c the mean support
    embedding of class c, w_c = 2 p_c and b_c = -||p_c||^2, so that
        logits_c(z) = 2 p_c.z - ||p_c||^2 = -||z - p_c||^2 + ||z||^2,
    Prototypical Networks' logits up to a constant per query. A function of the
    backbone's parameters (the meta-gradient flows through it); the trained head's
    values are not used."""
    protos = prototypes(embed(model, params, buffers, support_x), support_y, ways)
    return {**params, "head.weight": 2 * protos, "head.bias": -(protos ** 2).sum(-1)}


def inner_loop_start(model, params: Tensors, buffers: Tensors, support_x, support_y, *, kind: str,
                     head_init: str, ways: Optional[int]) -> Tensors:
    """theta with the head an inner loop starts from, for ``ways`` classes: the
    prototype head (``head_init: prototypes``), else the trained head, resized
    (:func:`resize_head`) when it has a different number of rows."""
    if prototype_head_used(kind, head_init, ways):
        return prototype_head(model, params, buffers, support_x, support_y, ways)
    if kind != "classification" or ways is None:
        return params
    return resize_head(params, ways)


def prototype_head_used(kind: str, head_init: str, ways: Optional[int]) -> bool:
    """Whether :func:`inner_loop_start` builds the head from the support set."""
    return kind == "classification" and ways is not None and head_init == "prototypes"


def resize_head(params: Tensors, ways: int) -> Tensors:
    """Give a classification head ``ways`` outputs. Unchanged when it already has
    them; otherwise every row starts as the mean trained row (zero-symmetric
    initialisation), so the inner loop alone tells the new classes apart."""
    w, b = params.get("head.weight"), params.get("head.bias")
    if w is None or w.shape[0] == ways:
        return params
    return {**params, "head.weight": w.mean(0, keepdim=True).expand(ways, -1).clone(),
            "head.bias": b.mean().expand(ways).clone()}


@ALGORITHMS.register("fomaml")
class FOMAML(MAML):
    """First-order MAML: ``maml`` with ``first_order: true``."""
    name = "fomaml"
