"""MAML-RL: the meta-gradient against a hand computation through the inner
policy-gradient step, multi-learner averaging, and a short learning run on 2D
navigation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distmeta.config import ExperimentConfig, _build
from distmeta.rl.config import MAMLSection
from distmeta.rl.maml_rl import (Batch, LearnerPool, TaskData, adapt, evaluate_params, flatten, init_policy,
                                 log_prob, meta_gradient, PolicySpec, TaskSampler)


def _fixed_batch(rng, n, obs_dim, act_dim, W):
    obs = rng.normal(size=(n, obs_dim))
    act = rng.normal(size=(n, act_dim))
    adv = rng.normal(size=n)
    b = Batch(torch.tensor(obs, dtype=torch.float64), torch.tensor(act, dtype=torch.float64),
              torch.tensor(adv, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), np.zeros(1))
    return b


def _hand_meta_gradient(W, inner: Batch, outer: Batch, alpha, form, first_order):
    """Linear-Gaussian policy, unit std: log pi(a|s) = -|a - W s~|^2 / 2 + c, s~ = [s, 1].
    Inner loss L(W) = -mean_i A_i f_i(W) with f = log pi (vpg) or pi / pi_old (lvc, at W = W_old).
    W' = W - alpha grad L. Meta-loss = -mean_j A'_j pi_W'(a'_j|s'_j) / pi_old(a'_j|s'_j) at ratio 1.
    d meta / d vec(W) = -(I - alpha H_L) g_out (H_L symmetric), all by hand in numpy."""
    def aug(b):
        s = b.obs.numpy()
        return np.concatenate([s, np.ones((len(s), 1))], 1), b.act.numpy(), b.adv.numpy()

    S, A, adv = aug(inner)
    m, d = W.shape
    grad_logp = [np.outer(A[i] - W @ S[i], S[i]).reshape(-1) for i in range(len(S))]  # row-major vec
    hess_logp = [-np.kron(np.eye(m), np.outer(S[i], S[i])) for i in range(len(S))]
    gL = -np.mean([adv[i] * grad_logp[i] for i in range(len(S))], axis=0)
    c = 1.0 if form == "lvc" else 0.0  # d^2 ratio = ratio (grad grad^T + hess); d^2 log pi = hess
    HL = -np.mean([adv[i] * (c * np.outer(grad_logp[i], grad_logp[i]) + hess_logp[i]) for i in range(len(S))],
                  axis=0)
    W1 = (W.reshape(-1) - alpha * gL).reshape(m, d)
    S2, A2, adv2 = aug(outer)
    g_out = np.mean([adv2[j] * np.outer(A2[j] - W1 @ S2[j], S2[j]).reshape(-1) for j in range(len(S2))], axis=0)
    if first_order:
        return -g_out
    return -(np.eye(m * d) - alpha * HL) @ g_out


@pytest.mark.parametrize("form", ["lvc", "vpg"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_hand_computation(form, first_order):
    rng = np.random.default_rng(0)
    obs_dim, act_dim, alpha = 3, 2, 0.3
    W = rng.normal(size=(act_dim, obs_dim + 1)) * 0.5
    params = {"l0.weight": torch.tensor(W[:, :obs_dim]), "l0.bias": torch.tensor(W[:, obs_dim])}
    inner = _fixed_batch(rng, 7, obs_dim, act_dim, W)
    outer = _fixed_batch(rng, 9, obs_dim, act_dim, W)
    # pi_old: the policy that sampled each batch (ratio 1 at the first epoch)
    inner.logp_old = log_prob(params, inner.obs, inner.act).detach()
    adapted = adapt({k: v.clone().requires_grad_(True) for k, v in params.items()}, [inner], alpha,
                    form=form, create_graph=False)
    with torch.no_grad():
        outer.logp_old = log_prob({k: v.detach() for k, v in adapted.items()}, outer.obs, outer.act)
    m = MAMLSection(inner_lr=alpha, first_order=first_order, outer="promp", clip_param=0.2)
    grads = meta_gradient(params, [TaskData([inner], outer)], m, form=form)
    got = torch.cat([grads["l0.weight"], grads["l0.bias"][:, None]], 1).reshape(-1).numpy()
    want = _hand_meta_gradient(W, inner, outer, alpha, form, first_order)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if not first_order:  # second order differs from first order: the test has power
        assert not np.allclose(want, _hand_meta_gradient(W, inner, outer, alpha, form, True))


def test_meta_gradient_matches_autograd_through_two_inner_steps():
    """Several inner steps: compare with an independent torch.func computation."""
    rng = np.random.default_rng(1)
    spec = PolicySpec(2, 2, [4], init_log_std=-0.5)
    params = {k: v.double() for k, v in init_policy(spec, 0).items()}
    b1, b2, out = (_fixed_batch(rng, 6, 2, 2, None) for _ in range(3))
    m = MAMLSection(inner_lr=0.2, outer="vpg")
    got = flatten(meta_gradient(params, [TaskData([b1, b2], out)], m, form="vpg"))

    def f(flat):
        p = {}
        i = 0
        for k, v in params.items():
            p[k] = flat[i:i + v.numel()].view_as(v)
            i += v.numel()
        for b in (b1, b2):
            loss = -(log_prob(p, b.obs, b.act) * b.adv).mean()
            g = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {k: v - 0.2 * gk for (k, v), gk in zip(p.items(), g)}
        return -(torch.exp(log_prob(p, out.obs, out.act) - out.logp_old) * out.adv).mean()

    want = torch.func.grad(f)(flatten(params))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.ray
def test_multi_learner_copies_stay_identical(ray_session):
    """Two learner actors, each with half of the meta-batch: after the averaged steps both copies
    hold bit-identical parameters, equal (up to float summation order) to one learner on all tasks."""
    sampler = TaskSampler("point_nav", {"horizon": 10})
    spec = PolicySpec(sampler.obs_dim, sampler.act_dim, [8])
    params = init_policy(spec, 0)
    from distmeta.rl.maml_rl import collect_task_data

    m = MAMLSection(meta_batch=4, episodes_per_task=3, outer_lr=0.01)
    tasks = sampler._get_envs(1)[0].sample_tasks(4, 0)
    data, _ = collect_task_data(sampler, params, tasks, m, 1, seed=0)
    one, two = LearnerPool(params, m, False, 1), LearnerPool(params, m, False, 2)
    for _ in range(3):
        one.step(data)
        two.step(data)
    flats = two.all_flat()
    assert len(flats) == 2 and torch.equal(flats[0], flats[1])
    torch.testing.assert_close(flats[0], one.all_flat()[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(flats[0], flatten(params))  # they did move
    two.close()


def test_maml_rl_learns_point_navigation(tmp_path):
    """~20 s of MAML-RL on 2D navigation: on 40 held-out goals, the return after one inner step
    beats the pre-adaptation return and the untrained policy (before and after one inner step)
    by >= 2 standard errors of the paired per-goal difference."""
    from distmeta.engine.run_dir import load_checkpoint
    from distmeta.rl import train_rl
    from distmeta.rl.config import parse_rl
    from distmeta.rl.runner import held_out_tasks

    rl = {"algorithm": "maml_rl", "env": "point_nav", "env_steps": 400000, "eval_tasks": 40, "baselines": False,
          "maml": {"meta_batch": 10, "episodes_per_task": 10, "inner_lr": 0.1, "hidden": [32, 32],
                   "init_log_std": -2.0, "outer_lr": 0.003, "outer_epochs": 5, "eval_inner_steps": 1}}
    cfg = _build(ExperimentConfig, {"name": "t", "seed": 0, "log_every": 5, "checkpoint": {"every": 10},
                                    "rl": rl}, "")
    out = train_rl(cfg, tmp_path / "run")
    assert set(out["mean_return_by_inner_steps"]) == {"0", "1"} and out["tasks"] == 40
    parsed = parse_rl(rl)
    _, goals = held_out_tasks(parsed)
    sampler = TaskSampler("point_nav", {})
    trained = {k: torch.as_tensor(v) for k, v in
               load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["learner"]["params"].items()}
    spec = PolicySpec(sampler.obs_dim, sampler.act_dim, [32, 32], init_log_std=-2.0)
    ev = evaluate_params(trained, sampler, goals, parsed.maml, 1, seed=5)
    ev0 = evaluate_params(init_policy(spec, 0), sampler, goals, parsed.maml, 1, seed=5)
    post = ev[:, 1]
    for name, other in (("pre-adaptation", ev[:, 0]), ("untrained", ev0[:, 0]),
                        ("untrained + 1 step", ev0[:, 1])):
        diff = post - other
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        assert diff.mean() >= 2 * se, (name, diff.mean(), se)


@pytest.mark.ray
def test_rllib_mamlrl_algorithm_two_learners(ray_session, tmp_path):
    """MAML-RL through the RLlib Algorithm (EnvRunner sampling, task set on EnvRunners,
    adapted weights pushed per task) with two RLlib Learners: after meta-steps both Learner
    copies are bit-identical, they moved, and the EnvRunner holds the meta-parameters again."""
    from distmeta.rl.config import parse_rl
    from distmeta.rl.maml_algorithm import _AlgoPoolView, _single, build_maml_config, load_pool_state
    from distmeta.rl.runner import to_plain

    rl = parse_rl({"algorithm": "maml_rl", "env": "point_nav", "env_config": {"horizon": 20}, "num_learners": 2,
                   "maml": {"meta_batch": 4, "episodes_per_task": 3, "hidden": [8], "init_log_std": -2.0,
                            "outer_epochs": 2, "sampler": "env_runners"}})
    algo = build_maml_config(rl, 0).learners(num_learners=2, num_cpus_per_learner=0).build_algo()
    try:
        before = algo.learner_flats()
        result = algo.train()
        algo.train()
        assert np.isfinite(result["pre_adapt_return"]) and np.isfinite(result["post_adapt_return"])
        flats = algo.learner_flats()
        assert len(flats) == 2 and torch.equal(flats[0], flats[1])
        assert not torch.equal(flats[0], before[0])
        runner_params = flatten({k: v.detach() for k, v in
                                 _single(algo.env_runner.module).functional_params().items()})
        torch.testing.assert_close(runner_params, flats[0])
        saved = to_plain(_AlgoPoolView(algo).state())
    finally:
        algo.stop()
    # a resumed run gets the parameters and the Adam moments back, not a fresh optimizer
    assert saved["optimizer"]["state"], "the checkpoint holds no optimizer state"
    again = build_maml_config(rl, 1).learners(num_learners=1, num_cpus_per_learner=0).build_algo()
    try:
        load_pool_state(again, saved)
        restored = to_plain(_AlgoPoolView(again).state())
    finally:
        again.stop()
    torch.testing.assert_close(flatten(restored["params"]), flats[0])
    for key, moments in saved["optimizer"]["state"].items():
        for name, value in moments.items():
            torch.testing.assert_close(torch.as_tensor(restored["optimizer"]["state"][key][name]),
                                       torch.as_tensor(value))


def test_paired_difference_against_its_formula():
    from distmeta.rl.maml_rl import paired_difference

    rng = np.random.default_rng(0)
    goal_difficulty = rng.normal(0, 10, size=200)          # shared by both methods on the same goal
    a = goal_difficulty + 1.0 + rng.normal(0, 1, size=200)
    b = goal_difficulty + rng.normal(0, 1, size=200)
    out = paired_difference(a, b)
    d = a - b
    assert out["tasks"] == 200
    assert out["mean_difference"] == pytest.approx(d.mean())
    assert out["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(200))
    assert out["ci95"] == pytest.approx(1.96 * out["se"])
    # pairing removes the per-goal variance that independent standard errors would carry
    independent = np.sqrt(a.var(ddof=1) / 200 + b.var(ddof=1) / 200)
    assert out["se"] < independent / 5
    assert out["standard_errors"] > 5
