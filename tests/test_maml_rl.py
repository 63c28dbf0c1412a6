"""MAML-RL: the meta-gradient against a hand computation through the inner policy-gradient
step; the RLlib Algorithm end to end (EnvRunner sampling of meta-batch shards, Learners
averaging meta-gradients): the config builder, 1 vs 2 EnvRunners, a SIGKILLed EnvRunner,
several Learners, evaluation per inner step, the Method's state round trip and a short
learning check on 2D navigation."""
from __future__ import annotations

import os
import pickle
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
from extras import needs_metaworld
import torch

from distmeta.envs import MetaEnv
from distmeta.rl.maml_rl import (Batch, PolicySpec, SampleSpec, TaskData, TaskEnvPool, adapt, flatten, init_policy,
                                 log_prob, meta_gradient, sample_tasks, seed_for)
from distmeta.schema import MAMLSection


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


def test_sampling_depends_on_the_task_only():
    """A task's episodes, inner step and data are the same whatever shard or chunk it is sampled in
    (seeds per task and phase, per-task noise in the batched forward)."""
    pool = TaskEnvPool("point_nav", {"horizon": 8})
    params = init_policy(PolicySpec(2, 2, [8], init_log_std=-1.0), 0)
    tasks = pool.get(1)[0].unwrapped.sample_tasks(4, 0)
    seeds = [seed_for(0, 0, 1, i) for i in range(4)]
    spec = SampleSpec(episodes=3, inner_steps=1, inner_lr=0.1)
    whole = sample_tasks(pool, params, tasks, [0, 1, 2, 3], seeds, spec, width=12)
    part = sample_tasks(TaskEnvPool("point_nav", {"horizon": 8}), params, tasks[2:], [2, 3], seeds[2:], spec, width=3)
    for a, b in zip(whole[2:], part):
        assert a.index == b.index and a.env_steps == b.env_steps == 2 * 3 * 8
        np.testing.assert_allclose(a.returns, b.returns, rtol=0, atol=1e-6)
        for x, y in zip([*a.data.inner, a.data.outer], [*b.data.inner, b.data.outer]):
            torch.testing.assert_close(x.obs, y.obs, rtol=0, atol=1e-6)
            torch.testing.assert_close(x.logp_old, y.logp_old, rtol=0, atol=1e-5)
    assert not np.allclose(whole[0].returns, whole[1].returns)  # different tasks: different data


# -- the RLlib Algorithm --------------------------------------------------------------------------
TINY = dict(meta_batch=4, episodes_per_task=3, inner_lr=0.1, hidden=[8], init_log_std=-1.0, outer_epochs=2,
            outer_lr=0.01)


def _config(runners: int = 0, learners: int = 0, horizon: int = 10, **training):
    from distmeta.rl.maml_algorithm import MAMLRLConfig

    return (MAMLRLConfig()
            .environment("distmeta/PointNav-v0", env_config={"horizon": horizon})
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=6)
            .learners(num_learners=learners, num_cpus_per_learner=0 if learners else "auto")
            .training(**{**TINY, **training})
            .fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=0.1)
            .debugging(seed=0, log_level="ERROR"))


def _flat(algo) -> torch.Tensor:
    return flatten(algo.get_params())


@pytest.mark.ray
def test_config_builder_trains_one_iteration(ray_session):
    """The RLlib way: MAMLRLConfig().environment().env_runners().learners().training().build_algo()."""
    algo = _config(runners=1).build_algo()
    try:
        before = _flat(algo)
        result = algo.train()
        assert result["env_steps"] == 2 * 4 * 3 * 10  # pre + post episodes of 4 tasks x 3 episodes x 10 steps
        assert np.isfinite(result["pre_adapt_return"]) and np.isfinite(result["post_adapt_return"])
        assert not torch.equal(_flat(algo), before)
        # the EnvRunners' RLModule follows the Learner (RLlib-side users see the meta-parameters)
        from distmeta.rl.maml_algorithm import _single

        module = flatten({k: v.detach() for k, v in _single(algo.get_module()).functional_params().items()})
        torch.testing.assert_close(module, _flat(algo))
    finally:
        algo.stop()


# 1 vs 2 runners and the fault test: longer episodes, so a shard is more than one lock-step batch
FAULT = dict(horizon=100, episodes_per_task=10)


@pytest.fixture(scope="module")
def one_runner_params(ray_session):
    """Fault-free reference: 5 iterations sampled by one remote EnvRunner."""
    algo = _config(runners=1, **FAULT).build_algo()
    try:
        for _ in range(5):
            algo.train()
        return _flat(algo)
    finally:
        algo.stop()


@pytest.mark.ray
def test_one_and_two_env_runners_give_the_same_parameters(one_runner_params):
    algo = _config(runners=2, **FAULT).build_algo()
    try:
        for _ in range(5):
            algo.train()
        torch.testing.assert_close(_flat(algo), one_runner_params, rtol=0, atol=1e-5)
    finally:
        algo.stop()


@pytest.mark.ray
def test_sigkilled_env_runner_is_restarted_and_its_shard_resampled(one_runner_params):
    """SIGKILL one of two EnvRunners while an iteration samples: RLlib drops its result, the
    Algorithm sees the missing task indices, restores the runners and samples the shard again;
    the run ends with the fault-free parameters and the runner comes back as a new process."""
    def arm_sigkill(runner):
        """In this runner's process, its next shard's sampling call kills the process (a fixed
        point inside the call, whatever the machine's speed); a restarted runner is unarmed."""
        from distmeta.rl import maml_rl

        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        maml_rl.sample_tasks = killed
        return os.getpid()

    algo = _config(runners=2, **FAULT).build_algo()
    try:
        algo.train()
        algo.train()
        group = algo.env_runner_group
        pids = group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)
        assert len(pids) == 2
        armed = group.foreach_env_runner(arm_sigkill, remote_worker_ids=group.healthy_env_runner_ids()[:1],
                                         local_env_runner=False)
        assert len(armed) == 1 and armed[0] in pids
        algo.train()
        assert algo.train()["resampled_tasks_lifetime"] >= 1   # the killed shard was sampled again
        algo.train()
        torch.testing.assert_close(_flat(algo), one_runner_params, rtol=0, atol=1e-5)
        deadline = time.time() + 90
        while group.num_healthy_remote_env_runners() < 2 and time.time() < deadline:
            algo.restore_env_runners(group)
            time.sleep(0.5)
        now = group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)
        assert len(now) == 2 and armed[0] not in now
    finally:
        algo.stop()


@pytest.mark.ray
def test_several_learners_stay_identical_and_equal_one_learner(ray_session):
    """Two RLlib Learners, each with half of the meta-batch, average their meta-gradients through
    foreach_learner: both copies hold bit-identical parameters, equal (up to float summation
    order) to a single Learner on all tasks."""
    one, two = _config(learners=0).build_algo(), _config(learners=2).build_algo()
    try:
        start = _flat(one)
        for _ in range(3):
            one.train()
            two.train()
        res = two.learner_group.foreach_learner(lambda learner: learner.distmeta_params())
        copies = [flatten(r.get()) for r in res.result_or_errors]
        assert len(copies) == 2 and torch.equal(copies[0], copies[1])
        torch.testing.assert_close(copies[0], _flat(one), rtol=1e-5, atol=1e-6)
        assert not torch.equal(copies[0], start)
    finally:
        one.stop()
        two.stop()


@pytest.mark.ray
def test_evaluation_returns_per_inner_step(ray_session):
    """evaluate_tasks: the mean episode return after 0..K inner steps per task, paired by seed:
    the same tasks and seed give the same numbers."""
    algo = _config(runners=1).build_algo()
    try:
        tasks = [{"goal": [0.3, -0.2]}, {"goal": [-0.4, 0.1]}, {"goal": [0.0, 0.45]}]
        ev = algo.evaluate_tasks(tasks, 2, seed=3)
        assert ev.shape == (3, 3) and np.isfinite(ev).all()
        assert not np.allclose(ev[:, 0], ev[:, 2])  # the inner steps change the policy
        np.testing.assert_array_equal(ev, algo.evaluate_tasks(tasks, 2, seed=3))
    finally:
        algo.stop()


@pytest.mark.ray
@pytest.mark.slow
def test_tune_runs_the_algorithm_like_any_rllib_algorithm(ray_session, tmp_path):
    """tune.Tuner(MAMLRL, param_space=config): one trial, two iterations, the MAML metrics reported."""
    from ray import tune

    from distmeta.rl.maml_algorithm import MAMLRL

    tuner = tune.Tuner(MAMLRL, param_space=_config(runners=1),
                       run_config=tune.RunConfig(stop={"training_iteration": 2}, storage_path=str(tmp_path),
                                                 verbose=0))
    result = tuner.fit().get_best_result(metric="post_adapt_return", mode="max")
    assert result.error is None and result.metrics["meta_iteration"] == 2
    assert np.isfinite(result.metrics["post_adapt_return"])


# -- the Method ----------------------------------------------------------------------------------
def _method_cfg(**rl):
    from distmeta.config import from_dict

    maml = {"meta_batch": 3, "episodes_per_task": 2, "inner_lr": 0.1, "hidden": [8], "outer_epochs": 2,
            "eval_inner_steps": 1, "init_log_std": -1.0}
    return from_dict({"name": "maml_rl_test", "seed": 1, "eval": {"every": 1, "episodes": 4, "final_episodes": 5},
                      "rl": {"algorithm": "maml_rl", "env": "point_nav", "env_config": {"horizon": 8},
                             "env_steps": 4 * 3 * 2 * 8 * 2, "train_tasks": 10, "baselines": True,
                             "maml": maml, **rl}})


@pytest.mark.ray
def test_method_state_round_trip_continues_identically(ray_session, tmp_path):
    """state() after 2 iterations, loaded into a fresh method: 2 more iterations give the same
    parameters as the uninterrupted run; the final step trains the baselines and the test
    evaluation reports them with paired differences; artifacts write rl_curve.png."""
    from distmeta.rl.maml_method import MAMLRLMethod

    cfg = _method_cfg()
    a = MAMLRLMethod.build(cfg)
    b = MAMLRLMethod.build(cfg)
    try:
        rows = []
        for _ in range(2):
            rows.append(a.step())
        saved = a.state()
        b.load(saved)
        while not a.done():
            rows.append(a.step())
            b.step()
        assert a.iteration == b.iteration == 4 and rows[-1]["work"] == 3 * 2 * 8 * 2
        torch.testing.assert_close(flatten(a.algo.get_params()), flatten(b.algo.get_params()), rtol=0, atol=0)
        assert a.baselines_trained and b.baselines_trained
        val = a.evaluate("val", 4)
        assert val["tasks"] == 4 and set(val["mean_return_by_inner_steps"]) == {"0", "1"} and "ci95" in val
        test = a.evaluate("test", None)
        assert test["tasks"] == 5
        assert {"pretrained", "pretrained_0_steps", "pretrained_best_lr", "oracle", "maml_0_steps"} <= set(
            test["baselines"])
        assert test["vs_pretrained"]["tasks"] == 5 and "vs_pretrained_best_lr" in test
        assert test == b.evaluate("test", None)  # same params, same baselines, same tasks and seeds
        rows[-1]["val_mean_return"] = val["mean_return"]
        a.artifacts(tmp_path, rows)
        assert (tmp_path / "rl_curve.png").stat().st_size > 0
        torch.save(a.state(), tmp_path / "state.pt")
        assert torch.load(tmp_path / "state.pt", weights_only=True)["maml"]["baselines"]["oracle"]["params"]
    finally:
        a.close()
        b.close()


@pytest.mark.ray
def test_maml_rl_learns_point_navigation(ray_session):
    """A short run on 2D navigation (horizon 20): on 40 held-out goals the return after one
    inner step beats the pre-adaptation return and the untrained policy after one inner step,
    each by >= 2 standard errors of the paired per-goal difference."""
    algo = _config(horizon=20, meta_batch=10, episodes_per_task=10, hidden=[32, 32], init_log_std=-2.0,
                   outer_lr=0.003, outer_epochs=5).build_algo()
    try:
        untrained = algo.get_params()
        for _ in range(25):
            result = algo.train()
        goals = [{"goal": [float(x), float(y)]} for x, y in np.random.default_rng(12345).uniform(-0.5, 0.5, (40, 2))]
        ev = algo.evaluate_tasks(goals, 1, seed=5)
        ev0 = algo.evaluate_tasks(goals, 1, seed=5, params=untrained)
        for name, other in (("pre-adaptation", ev[:, 0]), ("untrained + 1 step", ev0[:, 1])):
            diff = ev[:, 1] - other
            se = diff.std(ddof=1) / np.sqrt(len(diff))
            assert diff.mean() >= 2 * se, (name, diff.mean(), se, result["post_adapt_return"])
    finally:
        algo.stop()


def test_paired_difference_against_its_formula():
    from distmeta.rl.common import paired_difference

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


# -- success rate (Meta-World's info["success"]) ---------------------------------------------------
class WinEnv(MetaEnv):
    """A toy task env with ``info["success"]`` true at the last of 3 steps of every episode of
    tasks with ``win``."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def __init__(self):
        self._task, self._t = {"win": 0, "id": 0}, 0

    def sample_tasks(self, n, seed):
        rng = np.random.default_rng(seed)
        return [{"win": int(rng.integers(2)), "id": int(rng.integers(10**9))} for _ in range(n)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self._t += 1
        last = self._t >= 3
        obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return obs, -float(np.sum(np.square(action))), False, last, {"success": float(last and self._task["win"])}


def test_success_pool_records_success_per_task_and_inner_step():
    """SuccessPool (what MAMLEnvRunner samples with): per task, the fraction of its episodes after
    0..K inner steps whose ``info["success"]`` was true at some step, whatever the chunking; envs
    without ``success`` give None."""
    from distmeta.rl.maml_algorithm import SuccessPool, success_by_step

    env_id = "distmeta-test/Win-v0"
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=WinEnv, disable_env_checker=True)
    params = init_policy(PolicySpec(2, 2, [8], init_log_std=-1.0), 0)
    tasks = WinEnv().sample_tasks(6, 0)
    win = np.array([t["win"] for t in tasks], dtype=float)
    assert 0 < win.sum() < 6
    seeds = [seed_for(0, 0, 1, i) for i in range(6)]
    spec = SampleSpec(episodes=2, inner_steps=2, inner_lr=0.1, keep_data=False)
    for width in (12, 4):   # every task in one chunk, or two tasks per chunk
        pool = SuccessPool(env_id)
        res = sample_tasks(pool, params, tasks, list(range(6)), seeds, spec, width=width)
        got = pool.success(seeds, 2, 2)
        np.testing.assert_array_equal(got, np.repeat(win[:, None], 3, axis=1))
        for r, row in zip(res, got):
            r.success = row
        np.testing.assert_array_equal(success_by_step(res), got)
        # what a remote EnvRunner returns travels pickled: the success rows with it
        np.testing.assert_array_equal(success_by_step(pickle.loads(pickle.dumps(res))), got)
    plain = SuccessPool("point_nav", {"horizon": 4})
    res = sample_tasks(plain, params, [{"goal": [0.1, 0.2]}], [0], seeds[:1], spec, width=4)
    assert plain.success(seeds[:1], 2, 2) is None and success_by_step(res) is None


def test_success_summary_by_inner_steps():
    from distmeta.rl.maml_method import success_summary

    s = np.array([[0.0, 0.5], [1.0, 1.0], [0.0, 0.0], [0.5, 1.0]])
    out = success_summary(s, 1)
    assert out["success_rate"] == pytest.approx(0.625)
    assert out["success_rate_by_inner_steps"] == pytest.approx({"0": 0.375, "1": 0.625})
    assert out["success_rate_ci95"] == pytest.approx(1.96 * s[:, 1].std(ddof=1) / 2)




@pytest.mark.ray
@needs_metaworld
def test_maml_rl_metaworld_reports_success_after_0_and_1_inner_steps(ray_session):
    """Meta-World ML1 reach-v3, horizon 5, 2 test tasks (Meta-World's own test goals): the
    evaluation reports the success rate next to the return, after 0 and 1 inner steps (the local
    EnvRunner samples; a remote one took 11-25 s on 2 shared cores, and gives the same numbers)."""
    from distmeta.rl.maml_method import MAMLRLMethod

    cfg = _method_cfg(env="metaworld_ml1", env_config={"env_name": "reach-v3", "horizon": 5}, baselines=False,
                      train_tasks=0, maml={"meta_batch": 2, "episodes_per_task": 2, "inner_lr": 0.05,
                                           "hidden": [8], "outer_epochs": 1, "eval_inner_steps": 1})
    method = MAMLRLMethod.build(cfg)
    try:
        out = method.evaluate("test", 2)
        assert out["tasks"] == 2 and set(out["mean_return_by_inner_steps"]) == {"0", "1"}
        assert set(out["success_rate_by_inner_steps"]) == {"0", "1"}
        assert all(0.0 <= v <= 1.0 for v in out["success_rate_by_inner_steps"].values())
        assert out["success_rate"] == out["success_rate_by_inner_steps"]["1"]
    finally:
        method.close()


@pytest.mark.ray
def test_maml_rl_runs_under_tune_and_exports_an_evaluable_best(ray_session, tmp_path):
    """The one distmeta trainable runs a MAML-RL config under Tune (point navigation, 2
    iterations); the best trial's run folder evaluates with ``distmeta eval``
    (``MAMLRLMethod.from_checkpoint``)."""
    import yaml

    from distmeta.commands import evaluate_run
    from distmeta.tune import run_tune

    data = {"name": "maml-rl-tune-test", "seed": 0, "eval": {"every": 1, "episodes": 3, "final_episodes": 3},
            "rl": {"algorithm": "maml_rl", "env": "point_nav", "env_config": {"horizon": 8}, "env_steps": 10**6,
                   "baselines": False,
                   "maml": {"meta_batch": 2, "episodes_per_task": 2, "hidden": [8], "outer_epochs": 1,
                            "eval_inner_steps": 1}},
            "tune": {"space": {"rl.maml.inner_lr": {"grid": [0.1]}}, "metric": "mean_return", "mode": "max",
                     "stop": {"training_iteration": 2}}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = run_tune(str(path), [], out=str(tmp_path / "search"))
    assert summary["trials"][0]["status"] == "TERMINATED"
    result = evaluate_run(summary["best"]["path"], episodes=3)
    assert result["split"] == "test" and result["tasks"] == 3 and result["algorithm"] == "maml_rl"
    assert set(result["mean_return_by_inner_steps"]) == {"0", "1"} and "success_rate" not in result
