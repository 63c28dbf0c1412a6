"""distmeta.envs: task protocol, gymnasium checker, seeding and held-out splits."""
from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from extras import needs_metaworld, needs_mujoco
from gymnasium.utils.env_checker import check_env

import distmeta.envs as E
from distmeta.errors import DistmetaError


MUJOCO_IDS = [pytest.param(env_id, marks=needs_mujoco) for env_id in E.MUJOCO_ENV_IDS]
# HalfCheetah-Dir / Ant-Dir: two tasks (+1/-1), so no held-out task can be disjoint from 50 train tasks
CONTINUOUS_IDS = E.CORE_ENV_IDS + MUJOCO_IDS[:1]


def _assert_checker_clean(env, allowed):
    """gymnasium's env checker passes, and every warning it gives mentions one of ``allowed``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert all(any(a in str(w.message) for a in allowed) for w in caught), [str(w.message) for w in caught]


@pytest.mark.parametrize("env_id", E.CORE_ENV_IDS + MUJOCO_IDS)
def test_protocol_and_checker(env_id):
    env = gym.make(env_id).unwrapped
    assert isinstance(env, E.TaskEnv)
    # checker advice allowed only about the spaces gymnasium's own CartPole/Pendulum/MuJoCo
    # envs define: infinite observation bounds, Pendulum's [-2, 2] torque box
    _assert_checker_clean(env, allowed=("infinity", "symmetric and normalized"))
    tasks = env.sample_tasks(8, seed=5)
    assert len(tasks) == 8
    json.dumps(tasks)  # plain, serialisable descriptions
    env.set_task(tasks[1])
    assert E.task_key(env.get_task()) == E.task_key(tasks[1])
    other = next(t for t in tasks[1:] if E.task_key(t) != E.task_key(tasks[0]))
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
    assert rollout(tasks[0]) != rollout(other)


@pytest.mark.parametrize("env_id", E.CORE_ENV_IDS + MUJOCO_IDS)
def test_sampling_deterministic_in_seed(env_id):
    env = gym.make(env_id).unwrapped
    a, b, c = env.sample_tasks(16, 11), env.sample_tasks(16, 11), env.sample_tasks(16, 12)
    assert [E.task_key(t) for t in a] == [E.task_key(t) for t in b]
    assert [E.task_key(t) for t in a] != [E.task_key(t) for t in c]


@pytest.mark.parametrize("env_id", CONTINUOUS_IDS)
def test_held_out_tasks_disjoint(env_id):
    env = gym.make(env_id)
    train, val, test = E.task_splits(env, 50, 10, 20, seed=3)
    assert len(train) == 50 and len(val) == 10 and len(test) == 20
    keys = [{E.task_key(t) for t in s} for s in (train, val, test)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    train2, val2, test2 = E.task_splits(env, 50, 10, 20, seed=3)
    assert [E.task_key(t) for t in test] == [E.task_key(t) for t in test2]
    assert [E.task_key(t) for t in val] == [E.task_key(t) for t in val2]


def test_task_splits_drop_collisions():
    class Tiny(E.MetaEnv):  # a distribution of only 6 tasks: collisions are certain
        def sample_tasks(self, n, seed):
            rng = np.random.default_rng(seed)
            return [{"id": int(i)} for i in rng.integers(0, 6, n)]

    train, val, test = E.task_splits(Tiny(), 2, 2, 2, seed=0)
    keys = [{E.task_key(t) for t in s} for s in (train, val, test)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert len(val) == 2 and len(test) == 2


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


@pytest.mark.parametrize("env_id", E.MUJOCO_ENV_IDS + E.METAWORLD_ENV_IDS)
def test_optional_extras_fail_clearly(env_id, monkeypatch):
    """Without the extra, making the env names the extra. The missing import is simulated
    (a None entry in sys.modules makes ``import`` fail), so this runs with the extras installed too."""
    import sys

    monkeypatch.setitem(sys.modules, "mujoco" if env_id in E.MUJOCO_ENV_IDS else "metaworld", None)
    extra = "'mujoco' extra" if env_id in E.MUJOCO_ENV_IDS else "'metaworld' extra"
    with pytest.raises(DistmetaError, match=extra):
        gym.make(env_id)


@pytest.mark.parametrize("env_id", ["distmeta/HalfCheetahDir-v0", "distmeta/AntDir-v0"])
@needs_mujoco
def test_direction_tasks_held_out(env_id):
    """Two tasks (+1/-1): held-out tasks are i.i.d. draws of both (MAML paper); a fixed train
    set covers both directions, so a disjoint held-out set cannot exist and task_splits says so."""
    env = gym.make(env_id)
    train, val, test = E.task_splits(env, 0, 10, 40, seed=0)
    assert train == [] and len(val) == 10 and len(test) == 40
    assert {t["direction"] for t in test} == {-1.0, 1.0}
    assert test == E.task_splits(env, 0, 10, 40, seed=0)[2]
    with pytest.raises(RuntimeError, match="too small"):
        E.task_splits(env, 50, 10, 20, seed=3)
    with pytest.raises(DistmetaError, match="direction"):
        env.unwrapped.set_task({"direction": 0.5})


def _fixed_action_rollout(env, task, action, steps=30):
    env.set_task(task)
    env.reset(seed=0)
    out = []
    for _ in range(steps):
        out.append(env.step(action))
    return out


@needs_mujoco
def test_halfcheetah_vel_reward_and_horizon():
    env = E.make("halfcheetah_vel")
    u = env.unwrapped
    assert u.horizon == 200 and u.observation_space.shape == (17,) and u.action_space.shape == (6,)
    u.set_task({"velocity": 2.0})
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(1, 201):
        a = rng.uniform(-1.5, 1.5, 6)  # partly outside the box: clipped before it is applied and costed
        obs, r, term, trunc, info = env.step(a)
        ctrl = 0.05 * float(np.square(np.clip(a, -1, 1)).sum())
        assert r == pytest.approx(-abs(info["x_velocity"] - 2.0) - ctrl, abs=1e-9)
        assert info["reward_ctrl"] == pytest.approx(-ctrl) and not term
        assert trunc == (t == 200)
    # x_velocity is the torso's forward velocity: x displacement / dt (dt = 5 * 0.01 s)
    assert u.dt == pytest.approx(0.05)
    # the clipped action moves the cheetah exactly as the in-box action does
    big = _fixed_action_rollout(u, {"velocity": 1.0}, np.full(6, 3.0))
    box = _fixed_action_rollout(u, {"velocity": 1.0}, np.full(6, 1.0))
    assert [b[1] for b in big] == [b[1] for b in box]
    assert E.make("halfcheetah_vel", horizon=7).unwrapped.horizon == 7


@needs_mujoco
def test_halfcheetah_dir_reward():
    u = E.make("halfcheetah_dir").unwrapped
    a = np.linspace(-0.8, 0.8, 6)
    fwd = _fixed_action_rollout(u, {"direction": 1.0}, a)
    bwd = _fixed_action_rollout(u, {"direction": -1.0}, a)
    ctrl = 0.05 * float(np.square(a).sum())
    for (_, rf, _, _, i_f), (_, rb, _, _, i_b) in zip(fwd, bwd):
        assert i_f["x_velocity"] == i_b["x_velocity"]  # same dynamics, only the reward differs
        assert rf == pytest.approx(i_f["x_velocity"] - ctrl, abs=1e-9)
        assert rb == pytest.approx(-i_b["x_velocity"] - ctrl, abs=1e-9)


@needs_mujoco
def test_ant_dir_reward():
    u = E.make("ant_dir").unwrapped
    assert u.horizon == 200
    a = np.full(8, 0.3)
    for d in (1.0, -1.0):
        for _, r, term, _, info in _fixed_action_rollout(u, {"direction": d}, a, steps=10):
            ctrl = 0.5 * float(np.square(a).sum())  # Ant-v5's control cost
            assert info["reward_ctrl"] == pytest.approx(-ctrl)
            assert r == pytest.approx(d * info["x_velocity"] + info["reward_survive"] - ctrl
                                      + info["reward_contact"], abs=1e-9)


@needs_mujoco
@pytest.mark.parametrize("env_id", E.MUJOCO_ENV_IDS)
def test_mujoco_envs_pickle_and_vectorize(env_id, tmp_path, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    env = gym.make(env_id).unwrapped
    task = env.sample_tasks(1, seed=2)[0]
    env.set_task(task)
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is type(env) and clone.get_task() == task and clone.horizon == env.horizon
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode="sync")
    E.set_task_on_env(venv, task)
    assert all(t == task for t in venv.call("get_task"))
    venv.close()
    # MuJoCo 4's deprecation notice about gymnasium's half_cheetah.xml is not logged to ./MUJOCO_LOG.TXT
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()




def _episode_return(env, task, steps=40):
    env.set_task(task)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    return sum(env.step(rng.uniform(-1, 1, env.action_space.shape))[1] for _ in range(steps))


@needs_metaworld
def test_metaworld_ml1_protocol_checker_and_held_out_goals():
    env = E.make("metaworld_ml1", horizon=50).unwrapped
    assert isinstance(env, E.TaskEnv)
    # Meta-World's own observation box: infinite bounds and zero-width padding entries
    _assert_checker_clean(env, allowed=("infinity", "maximum and minimum values are equal"))
    train, val, test = E.task_splits(env, 10, 5, 10, seed=0)
    json.dumps(train + val + test)
    # validation goals come from Meta-World's training goals, never from its test goals
    assert {t["split"] for t in train + val} == {"train"} and {t["split"] for t in test} == {"test"}
    assert not {E.task_key(t) for t in train} & {E.task_key(t) for t in val}
    assert E.task_splits(env, 10, 5, 10, seed=0) == (train, val, test)
    # 40 of the 50 training goals train, the other 10 validate (each once); 45 + 10 cannot
    train40, val10, _ = E.task_splits(env, 40, 10, 1, seed=0)
    keys40, keys10 = {E.task_key(t) for t in train40}, {E.task_key(t) for t in val10}
    assert len(keys40) == 40 and len(keys10) == 10 and not keys40 & keys10
    with pytest.raises(DistmetaError, match="found only 5 of the 10 validation tasks"):
        E.task_splits(env, 45, 10, 1, seed=0)
    # a task is a goal: two train tasks give different rewards for the same actions
    first = train[0]
    other = next(t for t in train if t["index"] != first["index"])
    assert _episode_return(env, first) != pytest.approx(_episode_return(env, other), rel=1e-6)
    env.set_task(test[0])
    assert env.get_task() == test[0]
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    for t in range(50):
        _, _, _, truncated, _ = env.step(env.action_space.sample())
    assert truncated and t == 49  # the adapter's horizon
    with pytest.raises(DistmetaError, match="horizon"):
        E.make("metaworld_ml1", horizon=501)


@needs_metaworld
def test_metaworld_ml10_held_out_classes_and_trial_wrapper():
    from distmeta.rl.trial_wrapper import TrialWrapper

    env = E.make("metaworld_ml10", horizon=5).unwrapped
    train, _, test = E.task_splits(env, 30, 5, 30, seed=1)
    train_names = set(env.bench.train_classes)
    assert len(train_names) == 10 and {t["env_name"] for t in train} <= train_names
    # ML10's held-out tasks come from its five unseen task classes
    assert {t["env_name"] for t in test} <= set(env.bench.test_classes)
    assert not {t["env_name"] for t in test} & train_names
    trial = TrialWrapper(env, episodes_per_trial=2)
    trial.set_task(test[0])
    obs, _ = trial.reset(seed=0)
    assert trial.get_task() == test[0] and obs.shape == trial.observation_space.shape
    steps = 0
    while True:
        obs, _, term, trunc, _ = trial.step(env.action_space.sample())
        steps += 1
        if term or trunc:
            break
    assert steps == 10 and term and len(trial.sub_episode_returns) == 2
