"""distmeta.envs: task protocol, gymnasium checker, seeding and held-out splits."""
from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import distmeta.envs as E
from distmeta.errors import DistmetaError


@pytest.mark.parametrize("env_id", E.CORE_ENV_IDS)
def test_protocol_and_checker(env_id):
    env = gym.make(env_id).unwrapped
    assert isinstance(env, E.TaskEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's own CartPole/Pendulum spaces have infinite bounds
        check_env(env, skip_render_check=True)
    tasks = env.sample_tasks(3, seed=5)
    assert len(tasks) == 3
    json.dumps(tasks)  # plain, serialisable descriptions
    env.set_task(tasks[1])
    assert E.task_key(env.get_task()) == E.task_key(tasks[1])
    # the task takes effect: two tasks give different trajectories from the same seed
    def rollout(task):
        env.set_task(task)
        obs, _ = env.reset(seed=0)
        env.action_space.seed(0)
        total = 0.0
        for _ in range(20):
            obs, r, term, trunc, _ = env.step(env.action_space.sample())
            total += r
            if term or trunc:
                obs, _ = env.reset(seed=1)
        return [total, *np.asarray(obs, dtype=float).ravel().tolist()]
    assert rollout(tasks[0]) != rollout(tasks[2])


@pytest.mark.parametrize("env_id", E.CORE_ENV_IDS)
def test_sampling_deterministic_in_seed(env_id):
    env = gym.make(env_id).unwrapped
    a, b, c = env.sample_tasks(4, 11), env.sample_tasks(4, 11), env.sample_tasks(4, 12)
    assert [E.task_key(t) for t in a] == [E.task_key(t) for t in b]
    assert [E.task_key(t) for t in a] != [E.task_key(t) for t in c]


@pytest.mark.parametrize("env_id", E.CORE_ENV_IDS)
def test_held_out_tasks_disjoint(env_id):
    env = gym.make(env_id)
    train, test = E.task_splits(env, 50, 20, seed=3)
    assert len(train) == 50 and len(test) == 20
    assert not {E.task_key(t) for t in train} & {E.task_key(t) for t in test}
    train2, test2 = E.task_splits(env, 50, 20, seed=3)
    assert [E.task_key(t) for t in test] == [E.task_key(t) for t in test2]


def test_task_splits_drop_collisions():
    class Tiny(E.MetaEnv):  # a distribution of only 6 tasks: collisions are certain
        def sample_tasks(self, n, seed):
            rng = np.random.default_rng(seed)
            return [{"id": int(i)} for i in rng.integers(0, 6, n)]

    train, test = E.task_splits(Tiny(), 3, 2, seed=0)
    assert not {E.task_key(t) for t in train} & {E.task_key(t) for t in test}


def test_set_task_through_vector_env_call():
    """What RLlib EnvRunners do: env.unwrapped.call("set_task", task) on a vector env."""
    venv = gym.make_vec("distmeta/PointNav-v0", num_envs=2, vectorization_mode="sync")
    task = {"goal": [0.3, -0.2]}
    E.set_task_on_env(venv, task)
    assert all(t == task for t in venv.call("get_task"))
    venv.close()


def test_env_details():
    bandit = E.make("bandit", k=3).unwrapped
    assert bandit.action_space.n == 3
    nav = E.make("point_nav").unwrapped
    nav.set_task({"goal": [0.5, 0.5]})
    nav.reset(seed=0)
    for t in range(100):
        _, r, term, trunc, _ = nav.step(np.array([1.0, 1.0]))  # clipped to 0.1 per step
    assert trunc and not term and r == pytest.approx(-np.linalg.norm(np.full(2, 100 * 0.1) - 0.5), abs=1e-6)
    oracle = E.make("point_nav", oracle=True).unwrapped
    oracle.set_task({"goal": [0.1, 0.2]})
    assert oracle.reset(seed=0)[0].tolist() == pytest.approx([0, 0, 0.1, 0.2])
    mdp = E.make("tabular_mdp").unwrapped
    assert mdp.observation_space.shape == (10,) and mdp.action_space.n == 5 and mdp.horizon == 10
    assert mdp.optimal_value() > 0
    cart = E.make("cartpole_physics").unwrapped
    cart.set_task({"masscart": 2.0, "masspole": 0.2, "length": 1.0})
    assert cart.polemass_length == pytest.approx(0.2) and cart.total_mass == pytest.approx(2.2)


def test_value_iteration_beats_random_policy():
    from distmeta.rl.baselines import tabular_baselines

    env = E.make("tabular_mdp").unwrapped
    tasks = env.sample_tasks(10, 0)
    b = tabular_baselines(tasks, 5, {}, seed=0)
    assert b["optimal"].mean() > b["random"].mean() + 2


@pytest.mark.parametrize("env_id", ["distmeta/HalfCheetahVel-v0", "distmeta/HalfCheetahDir-v0",
                                    "distmeta/AntDir-v0", "distmeta/MetaWorldML1-v0"])
def test_optional_extras_fail_clearly(env_id):
    pytest.importorskip("gymnasium")
    try:
        import mujoco  # noqa: F401
        pytest.skip("mujoco is installed")
    except ImportError:
        pass
    with pytest.raises(DistmetaError, match="extra"):
        gym.make(env_id)
