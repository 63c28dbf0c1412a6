"""RL^2 on RLlib: config validation, the trial wrapper, recurrent state across
sub-episodes (checked on RLlib's own EnvRunner), bandit baselines and a short
training run that must beat random on held-out 2-armed bandits."""
from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from extras import needs_metaworld
import torch

import distmeta
from distmeta.commands import evaluate_run
from distmeta.config import ConfigError, from_dict
from distmeta.envs import MetaEnv
from distmeta.rl.trial_wrapper import TrialWrapper


def _cfg(rl, **top):
    return from_dict({"name": "t", "seed": 0, "rl": rl, **top})


def parse_rl(rl):
    return _cfg(rl).rl


def validate_rl(cfg):
    return cfg


@pytest.mark.parametrize("rl, field", [
    ({"algorithm": "foo"}, "rl.algorithm"),
    ({"env": "nope"}, "rl.env"),
    ({"bogus": 1}, "rl.bogus"),
    ({"env_steps": 0}, "rl.env_steps"),
    ({"rl2": {"episodes_per_trial": 0}}, "rl.rl2.episodes_per_trial"),
    ({"rl2": {"gamma": 1.5}}, "rl.rl2.gamma"),
    ({"rl2": {"lr": "fast"}}, "rl.rl2.lr"),
    ({"rl2": {"recurrent": "transformer"}}, "rl.rl2.recurrent"),
    ({"algorithm": "maml_rl", "maml": {"inner_steps": 0}}, "rl.maml.inner_steps"),
    ({"maml": {"baseline": "magic"}}, "rl.maml.baseline"),
])
def test_validate_rl_names_the_field(rl, field):
    with pytest.raises(ConfigError) as exc:
        _cfg(rl)
    msg = str(exc.value)
    assert msg.startswith(field) and "\n" not in msg


def test_validate_rl_accepts_every_recurrent_module():
    for recurrent in ("lstm", "gru", "attention"):
        assert parse_rl({"rl2": {"recurrent": recurrent}}).rl2.recurrent == recurrent


def test_validate_rl_accepts_shipped_configs():
    import yaml
    from pathlib import Path

    for name in ("rl2_bandits", "rl2_bandits_k10", "rl2_bandits_n500", "rl2_tabular_mdp", "rl2_metaworld_ml10",
                 "maml_rl_point_nav", "maml_rl_halfcheetah_vel", "maml_rl_metaworld_ml1", "maml_rl_metaworld_ml10"):
        data = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml").read_text())
        assert from_dict(data).rl is not None


def test_trial_wrapper_joins_episodes():
    from distmeta.envs import make

    env = TrialWrapper(make("point_nav", horizon=4).unwrapped, episodes_per_trial=3, task_seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (2 + 2 + 2,)
    task = env.get_task()
    flags, steps = [], 0
    while True:
        obs, r, term, trunc, info = env.step(np.array([0.05, 0.0]))
        steps += 1
        flags.append(obs[-1])
        assert obs[2:4].tolist() == pytest.approx([0.05, 0.0]) and obs[4] == pytest.approx(r)
        assert env.get_task() == task  # one task for the whole trial
        if term or trunc:
            break
    assert steps == 12 and term and not trunc
    assert flags == [0, 0, 0, 1] * 3
    assert len(env.sub_episode_returns) == 3
    env.reset()
    assert env.get_task() != task  # a new trial draws a new task
    env.set_task(task)
    env.reset()
    assert env.get_task() == task  # pinned


def test_trial_wrapper_discrete_one_hot():
    from distmeta.envs import make

    env = TrialWrapper(make("bandit", k=3).unwrapped, episodes_per_trial=5)
    env.reset(seed=1)
    obs, *_ = env.step(2)
    assert obs[1:4].tolist() == [0, 0, 1] and obs[-1] == 1  # one pull is one sub-episode


def test_trial_wrapper_progress_feature():
    """trial_progress=True appends k/K, the fraction of the trial's episodes already finished."""
    from distmeta.envs import make

    env = TrialWrapper(make("point_nav", horizon=2).unwrapped, episodes_per_trial=4, trial_progress=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (2 + 2 + 2 + 1,) and obs[-1] == 0
    progress = []
    for _ in range(8):
        obs, *_ = env.step(np.zeros(2))
        assert env.observation_space.contains(obs)
        progress.append(float(obs[-1]))
    assert progress == [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]


def test_trial_wrapper_prev_obs():
    """prev_obs=True: each observation also holds the observation the last action was taken in
    (zeros at a trial's start), across sub-episode boundaries too."""
    from distmeta.envs import make

    env = TrialWrapper(make("tabular_mdp").unwrapped, episodes_per_trial=2, prev_obs=True)
    obs, _ = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape == (10 + 10 + 5 + 2,)
    assert obs[0] == 1 and not obs[10:20].any()          # state 0, no previous state yet
    states = [int(np.argmax(obs[:10]))]
    for t in range(20):
        obs, r, term, trunc, _ = env.step(t % 5)
        assert env.observation_space.contains(obs)
        assert int(np.argmax(obs[10:20])) == states[-1] and obs[10:20].sum() == 1   # the state acted in
        assert obs[20 + t % 5] == 1 and obs[25] == pytest.approx(r)
        states.append(int(np.argmax(obs[:10])))
    assert term and obs[-1] == 1
    assert states[10] == 0    # after the first sub-episode, the next one starts in state 0 again


def test_gru_skip_heads_read_the_current_input():
    """head_hidden: the policy and value heads are MLPs over [h_t, x_t], so with the GRU's
    output held fixed the logits still follow the current observation (a linear head on h_t
    could not); compute_values agrees with the training forward's embeddings."""
    from ray.rllib.core.columns import Columns

    from distmeta.rl import rl2

    rl = parse_rl({"algorithm": "rl2", "env": "tabular_mdp",
                   "rl2": {"recurrent": "gru", "cell_size": 8, "hidden": [8], "head_hidden": [16],
                           "prev_obs": True}})
    module = rl2.build_module(rl)
    with torch.no_grad():
        for p in module._gru.parameters():
            p.zero_()      # h_t = 0.5 h_{t-1}: the same for every input
        for p in module._pi.parameters():
            p.normal_()    # lift the near-zero initialisation of the last layer
    obs = torch.zeros(2, 1, module.observation_space.shape[0])
    obs[0, 0, 0], obs[1, 0, 3] = 1, 1
    batch = {Columns.OBS: obs, Columns.STATE_IN: {"h": torch.zeros(2, 8)}}
    with torch.no_grad():
        out = module.forward_train(batch)
        values = module.compute_values(batch)
    logits = out[Columns.ACTION_DIST_INPUTS]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)
    torch.testing.assert_close(values, module.compute_values(batch, embeddings=out[Columns.EMBEDDINGS]))
    with pytest.raises(Exception, match="head_hidden: needs recurrent: gru"):
        parse_rl({"algorithm": "rl2", "env": "bandit", "rl2": {"head_hidden": [16]}})


def test_gru_chrono_init_spreads_memory_spans():
    """rl2.chrono: N sets the GRU's update-gate biases to log(U(1, N - 1)): with zero weights a
    unit then keeps a fraction sigmoid(b) = 1 - 1 / (1 + e^b) of its state per step, memory spans
    1 + e^b between 2 and N steps; the other gates keep torch's initialisation."""
    from distmeta.rl import rl2
    from distmeta.rl.gru_module import chrono_init_

    rl = parse_rl({"algorithm": "rl2", "env": "bandit",
                   "rl2": {"recurrent": "gru", "cell_size": 256, "hidden": [8], "chrono": 100}})
    gru = rl2.build_module(rl)._gru
    H = 256
    spans = 1 + torch.exp(gru.bias_ih_l0[H:2 * H].detach())
    assert spans.min() >= 2 and spans.max() <= 100 and spans.max() > 50 and spans.median() > 20
    assert not gru.bias_hh_l0[H:2 * H].any()
    plain = torch.nn.GRU(4, 8)
    before = plain.bias_ih_l0.detach().clone()
    chrono_init_(plain, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain.bias_ih_l0[:8], before[:8])        # reset gate untouched
    torch.testing.assert_close(plain.bias_ih_l0[16:], before[16:])      # new gate untouched
    # a unit with bias b and zero weights keeps sigmoid(b) of its state per step
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if "weight" in name:
                p.zero_()
        plain.bias_ih_l0[16:] = 0.0
        plain.bias_hh_l0[:] = 0.0
        h = plain(torch.zeros(1, 1, 4), torch.ones(1, 1, 8))[1][0, 0]
    torch.testing.assert_close(h, torch.sigmoid(plain.bias_ih_l0[8:16].detach()))
    with pytest.raises(ConfigError, match="chrono: needs recurrent: gru"):
        parse_rl({"algorithm": "rl2", "env": "bandit", "rl2": {"chrono": 100}})


def _attention_module(memory, max_seq_len):
    from distmeta.rl import rl2

    rl = parse_rl({"algorithm": "rl2", "env": "tabular_mdp",
                   "rl2": {"recurrent": "attention", "cell_size": 32, "hidden": [32], "heads": 4, "memory": memory,
                           "max_seq_len": max_seq_len, "prev_obs": True, "head_hidden": [16]}})
    torch.manual_seed(0)
    module = rl2.build_module(rl)
    module.eval()
    return module


def test_attention_memory_chunks_equal_steps_and_see_a_window_of_m_inputs():
    """recurrent: attention: forwarding 12 inputs one at a time (RLlib's sampling, T = 1) or in
    chunks of max_seq_len = 5 (its Learner), each fed the memory the previous call returned,
    gives the same logits; the output at step t depends on inputs t - M + 1 .. t only (M = 7)."""
    from ray.rllib.core.columns import Columns

    module = _attention_module(memory=7, max_seq_len=5)
    B, T = 3, 12
    obs = torch.randn(B, T, module.observation_space.shape[0], generator=torch.Generator().manual_seed(1))
    init = {k: v.unsqueeze(0).repeat(B, 1, 1) for k, v in module.get_initial_state().items()}
    assert init["memory"].shape == (B, 7, obs.shape[-1] + 1) and not init["memory"].any()

    def run(length, inputs):
        state, logits = init, []
        with torch.no_grad():
            for start in range(0, T, length):
                out = module.forward_train({Columns.OBS: inputs[:, start:start + length], Columns.STATE_IN: state})
                state = out[Columns.STATE_OUT]
                logits.append(out[Columns.ACTION_DIST_INPUTS])
        return torch.cat(logits, dim=1), state

    steps, state = run(1, obs)
    chunks, _ = run(5, obs)
    torch.testing.assert_close(chunks, steps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state["memory"][..., :-1], obs[:, -7:])    # the last 7 inputs, all real
    assert state["memory"][..., -1].eq(1).all()
    nudged = obs.clone()
    nudged[:, 4] += 1.0
    moved = (run(T, nudged)[0] - run(T, obs)[0]).abs().amax(dim=(0, 2))
    assert moved[:4].eq(0).all() and moved[11] == 0      # before step 4, and 7 steps after it
    assert (moved[4:11] > 1e-6).all(), moved             # inside the window, step 4 counts


def test_attention_config_is_checked():
    from distmeta.rl.attention_module import AttentionPPOTorchRLModule

    module = _attention_module(memory=0, max_seq_len=9)
    assert isinstance(module, AttentionPPOTorchRLModule) and module.get_initial_state()["memory"].shape[0] == 9
    with pytest.raises(ConfigError, match=r"heads: cell_size \(30\) must divide by it, got 4"):
        parse_rl({"algorithm": "rl2", "env": "bandit", "rl2": {"recurrent": "attention", "cell_size": 30}})
    with pytest.raises(ConfigError, match="chrono: needs recurrent: gru"):
        parse_rl({"algorithm": "rl2", "env": "bandit", "rl2": {"recurrent": "attention", "chrono": 10}})


@pytest.mark.parametrize("recurrent, keys, extra", [("lstm", {"h", "c"}, {}), ("gru", {"h"}, {}),
                                                    ("gru", {"h"}, {"head_hidden": [8], "prev_obs": True}),
                                                    ("attention", {"memory"}, {"head_hidden": [8], "prev_obs": True})])
def test_recurrent_state_carries_across_sub_episodes_and_resets_between_trials(recurrent, keys, extra):
    """Sample two trials with RLlib's own SingleAgentEnvRunner and replay the stored recurrent
    states (LSTM: h, c; GRU: h; GRU with skip heads and the previous observation as input): a
    trial's states chain from the initial state through every sub-episode boundary (no reset
    there), and the next trial starts again from the initial state."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from distmeta.rl import rl2

    rl = parse_rl({"algorithm": "rl2", "env": "point_nav", "env_config": {"horizon": 5},
                   "rl2": {"episodes_per_trial": 3, "cell_size": 8, "hidden": [8], "recurrent": recurrent,
                           **extra}})
    config = rl2.build_ppo_config(rl, 0).env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    runner = SingleAgentEnvRunner(config=config)
    episodes = runner.sample(num_episodes=2, random_actions=False)
    module = runner.module["default_policy"] if hasattr(runner.module, "keys") else runner.module
    if recurrent == "gru":
        from distmeta.rl.gru_module import GRUPPOTorchRLModule

        assert isinstance(module, GRUPPOTorchRLModule)
    init = {k: v.unsqueeze(0) for k, v in module.get_initial_state().items()}
    assert set(init) == keys

    def step(obs, state):
        with torch.no_grad():
            out = module.forward_exploration({Columns.OBS: torch.as_tensor(obs)[None, None], Columns.STATE_IN: state})
        return out[Columns.STATE_OUT]

    assert [len(e) for e in episodes] == [15, 15]
    for ep in episodes:
        obs = ep.get_observations()
        stored = ep.get_extra_model_outputs(Columns.STATE_OUT)
        assert set(stored) == keys
        assert obs[:, -1].tolist() == [0] + [0, 0, 0, 0, 1] * 3  # sub-episode flags at steps 5, 10, 15
        state = init  # each RLlib episode (= trial) starts from the initial state ...
        for t in range(15):
            state = step(obs[t], state)  # ... and carries it through the sub-episode boundaries
            for key in keys:
                np.testing.assert_allclose(state[key][0].numpy(), stored[key][t], rtol=1e-5, atol=1e-6)
        # power check: resetting at the boundary (what RLlib would do without the wrapper) differs
        key = sorted(keys)[-1]
        reset_at_5 = step(obs[5], init)
        assert not np.allclose(reset_at_5[key][0].numpy(), stored[key][5], atol=1e-4)
    # between trials: trial 2's first state came from the initial state, not from trial 1's last
    second = episodes[1]
    carried = step(second.get_observations()[0], {k: torch.as_tensor(v[-1])[None] for k, v in
                                                   episodes[0].get_extra_model_outputs(Columns.STATE_OUT).items()})
    assert not np.allclose(carried[key][0].numpy(), second.get_extra_model_outputs(Columns.STATE_OUT)[key][0],
                           atol=1e-4)


def test_bandit_baselines_order():
    from distmeta.envs import make, task_splits
    from distmeta.rl.baselines import bandit_baselines, summarize

    _, _, tasks = task_splits(make("bandit", k=5), 0, 10, 300, 0)
    b = {k: summarize(v)["mean_return"] for k, v in bandit_baselines(tasks, 100, seed=0).items()}
    assert b["random"] < b["ucb1"] < b["thompson"] < b["oracle_best_arm"]
    assert b["random"] == pytest.approx(50, abs=3)


def _paired_vs_random(run_path, rl_cfg, checkpoint="final"):
    """Mean and standard error of (trial return - random's exact expectation 20 * mean(p)) per test task."""
    from distmeta.engine.run_dir import load_run_checkpoint
    from distmeta.rl import rl2
    from distmeta.rl.rl2_method import RL2Method

    state, _ = load_run_checkpoint(run_path, checkpoint)
    method = RL2Method.from_checkpoint(rl_cfg, state["state"])
    returns = rl2.evaluate_module(method.module(), rl_cfg.rl, method.test_tasks, seed=1).sum(1)
    diff = returns - 20 * np.array([np.mean(t["means"]) for t in method.test_tasks])
    return diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff)), method


@pytest.mark.ray
@pytest.mark.parametrize("recurrent", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                       pytest.param("attention", marks=pytest.mark.slow)])
def test_rl2_learns_two_armed_bandits(ray_session, tmp_path, recurrent):
    """20k env steps of recurrent PPO (~10 s) on 2-armed bandits, 20 pulls per trial, through the
    one run loop; on 200 test tasks (disjoint from the validation tasks that select best.pt) the
    final checkpoint's trial return must beat random by >= 5 standard errors (paired per task).
    ``distmeta eval`` scores the final checkpoint on the test tasks by default."""
    rl = {"algorithm": "rl2", "env": "bandit", "env_config": {"k": 2}, "env_steps": 20000,
          "baselines": recurrent == "lstm",
          "rl2": {"recurrent": recurrent, "episodes_per_trial": 20, "train_batch_size": 2000, "minibatch_size": 500,
                  "num_epochs": 8, "lr": 0.003, "entropy_coeff": 0.0, "cell_size": 64, "hidden": [64]}}
    cfg = _cfg(rl, log_every=5, checkpoint={"every": 5, "keep_last": 2},
               eval={"every": 5, "episodes": 50, "final_episodes": 200})
    result = distmeta.train(cfg, out=tmp_path / "run", progress=False)
    out = result.metrics
    for name in ("config.yaml", "metrics.csv", "learning_curves.png", "rl_curve.png", "results.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert out["tasks"] == 200 and out["checkpoint"] == "final" and out["split"] == "test"
    assert len(out["mean_return_by_episode"]) == 20 and result.step == 10
    if recurrent == "lstm":
        assert set(out["baselines"]) >= {"random", "ucb1", "thompson"}
    mean, se, method = _paired_vs_random(tmp_path / "run", cfg)
    assert mean >= 5 * se, (mean, se)
    val_keys = {json.dumps(t, sort_keys=True) for t in method.val_tasks}
    assert not val_keys & {json.dumps(t, sort_keys=True) for t in method.test_tasks}

    ev = evaluate_run(str(tmp_path / "run"), episodes=50)   # what `distmeta eval --json` prints
    json.dumps(ev)
    assert ev["tasks"] == 50 and ev["checkpoint"] == "final" and ev["split"] == "test"
    assert ev["mean_return"] == pytest.approx(np.mean(out["mean_return_by_episode"]) * 20, rel=0.5)
    best = evaluate_run(str(tmp_path / "run"), episodes=50, checkpoint="best")
    assert best["checkpoint"] == "best" and best["iteration"] in (5, 10)
    if recurrent == "lstm":  # resume continues the iteration count and the env-step budget
        again = distmeta.train(cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"env_steps": 22000})}),
                               resume=tmp_path / "run", progress=False)
        assert again.step == 11


@pytest.mark.ray
def test_restarted_env_runner_gets_its_task_back(ray_session):
    """Kill a remote EnvRunner: RLlib recreates it during train(), and the task callback
    re-applies the pinned task (a fresh EnvRunner would otherwise sample its own)."""
    import time

    import ray

    from distmeta.rl import rl2

    rl = parse_rl({"algorithm": "rl2", "env": "bandit", "env_config": {"k": 2}, "num_env_runners": 1,
                   "num_envs_per_env_runner": 1,
                   "rl2": {"episodes_per_trial": 5, "train_batch_size": 200, "minibatch_size": 100,
                           "num_epochs": 1, "cell_size": 8, "hidden": [8]}})
    algo = rl2.build_ppo_config(rl, 0).build_algo()
    try:
        task = {"means": [0.1, 0.9]}
        rl2.set_task_on_runners(algo, task)
        assert [t[0] for t in rl2.tasks_on_runners(algo)] == [task]
        ray.kill(algo.env_runner_group._worker_manager._actors[1], no_restart=False)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                algo.train()
            except Exception:
                pass
            if algo.env_runner_group.num_healthy_remote_workers() == 1 and \
                    algo._counters.get("total_num_restored_workers", 0) >= 1:
                break
            time.sleep(0.5)
        assert algo._counters.get("total_num_restored_workers", 0) >= 1
        assert [t[0] for t in rl2.tasks_on_runners(algo)] == [task]
    finally:
        algo.stop()


# -- test-split evaluation: paired comparisons with the same-run baselines, success rates -----------
def _eval_method(rl, final_episodes=20):
    from distmeta.rl import rl2
    from distmeta.rl.rl2_method import RL2Method

    cfg = _cfg(rl, eval={"every": 1, "episodes": 5, "final_episodes": final_episodes})
    return RL2Method(cfg, module=rl2.build_module(cfg.rl))


def test_rl2_test_evaluation_pairs_with_the_baselines_task_by_task(monkeypatch):
    """At "test" RL^2 and every baseline (random, PSRL, greedy, optimal) run on exactly the same task list,
    and ``vs_<baseline>`` is the paired difference of total trial return task by task (the
    formula of distmeta.rl.common.paired_difference); ``fraction_of_psrl`` is the ratio of means."""
    from distmeta.rl import baselines, rl2

    seen = {}
    real_eval, real_base = rl2.evaluate_module, baselines.baselines_for

    def spy_eval(module, rl, tasks, *a, **k):
        out = real_eval(module, rl, tasks, *a, **k)
        seen["agent"] = (list(tasks), out[0] if isinstance(out, tuple) else out)
        return out

    def spy_base(env, tasks, *a, **k):
        out = real_base(env, tasks, *a, **k)
        seen["baselines"] = (list(tasks), out)
        return out

    monkeypatch.setattr(rl2, "evaluate_module", spy_eval)
    monkeypatch.setattr(baselines, "baselines_for", spy_base)
    method = _eval_method({"algorithm": "rl2", "env": "tabular_mdp",
                           "rl2": {"episodes_per_trial": 10, "cell_size": 8, "hidden": [8]}})
    out = method.evaluate("test", None)
    agent_tasks, agent = seen["agent"]
    base_tasks, base = seen["baselines"]
    assert agent_tasks == base_tasks == method.test_tasks and len(agent_tasks) == 20
    assert set(out["baselines"]) == {"random", "psrl", "greedy", "optimal"} and "success_rate" not in out
    for name, returns in base.items():
        d = agent.sum(1) - returns.sum(1)
        vs = out[f"vs_{name}"]
        assert vs["tasks"] == 20 and vs["mean_difference"] == pytest.approx(d.mean())
        assert vs["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(20)) and vs["ci95"] == pytest.approx(1.96 * vs["se"])
    assert out["fraction_of_psrl"] == pytest.approx(agent.sum(1).mean() / base["psrl"].sum(1).mean())
    assert out["fraction_of_psrl_ci95"] > 0
    assert out["vs_optimal"]["mean_difference"] < 0   # an untrained policy is far below the optimum
    # validation: no baselines; the task digest names the task list
    val = method.evaluate("val", None)
    assert "baselines" not in val and "vs_random" not in val and val["task_digest"] != out["task_digest"]


def test_rl2_bandit_test_evaluation_reports_the_fraction_of_gittins():
    method = _eval_method({"algorithm": "rl2", "env": "bandit", "env_config": {"k": 2},
                           "rl2": {"episodes_per_trial": 10, "cell_size": 8, "hidden": [8]}}, final_episodes=30)
    out = method.evaluate("test", None)
    assert {"random", "ucb1", "thompson", "gittins", "oracle_best_arm"} <= set(out["baselines"])
    for name in ("thompson", "gittins"):
        assert out[f"fraction_of_{name}"] == pytest.approx(out["mean_return"] /
                                                           out["baselines"][name]["mean_return"])
        assert out[f"vs_{name}"]["tasks"] == 30
    assert method.evaluate("test", 50)["tasks"] == 50   # more test tasks than the run's eval settings


class SuccessEnv(MetaEnv):
    """A task-settable toy env reporting Meta-World's ``info["success"]``: episodes of 2 steps;
    ``success`` is true at the last step of every second episode since the last seeded reset
    (sub-episodes 1, 3, ... of an RL^2 trial) of tasks with ``win``, else false."""

    observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self._task, self._ep, self._t = {"win": 0, "id": 0}, 0, 0

    def sample_tasks(self, n, seed):
        rng = np.random.default_rng(seed)
        return [{"win": int(rng.integers(2)), "id": int(rng.integers(10**9))} for _ in range(n)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._ep = 0 if seed is not None else self._ep + 1
        self._t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self._t += 1
        last = self._t >= 2
        win = bool(self._task["win"]) and last and self._ep % 2 == 1
        return np.zeros(1, np.float32), float(action), False, last, {"success": float(win)}


SUCCESS_ENV = "distmeta-test/Success-v0"


@pytest.fixture
def success_env():
    if SUCCESS_ENV not in gym.registry:
        gym.register(id=SUCCESS_ENV, entry_point=SuccessEnv, disable_env_checker=True)
    return SUCCESS_ENV


def test_rl2_success_rate_per_trial(success_env):
    """``info["success"]`` at any step of an episode makes the episode successful; per trial RL^2
    reports the fraction of episodes with success, the last episode's success and the curve."""
    from distmeta.rl import rl2

    method = _eval_method({"algorithm": "rl2", "env": success_env, "baselines": False,
                           "rl2": {"episodes_per_trial": 4, "cell_size": 8, "hidden": [8]}}, final_episodes=12)
    tasks = method.test_tasks
    returns, success = rl2.evaluate_module(method.module(), method.rl, tasks, seed=3, return_success=True)
    win = np.array([t["win"] for t in tasks], dtype=float)
    assert 0 < win.sum() < len(win)
    np.testing.assert_array_equal(success, win[:, None] * np.array([0, 1, 0, 1]))
    out = method.evaluate("test", None)
    assert out["success_rate"] == pytest.approx(win.mean() / 2)
    assert out["success_rate_last_episode"] == pytest.approx(win.mean())
    assert out["success_rate_by_episode"] == pytest.approx([0, win.mean(), 0, win.mean()])
    # envs without ``success`` in info get no key
    bandit = _eval_method({"algorithm": "rl2", "env": "bandit", "baselines": False,
                           "rl2": {"episodes_per_trial": 3, "cell_size": 8, "hidden": [8]}})
    assert "success_rate" not in bandit.evaluate("val", None)




@needs_metaworld
def test_rl2_metaworld_reports_success_rate():
    """Meta-World ML1 reach-v3, horizon 5, 2 test tasks (Meta-World's own test goals), 2 episodes
    per trial: the success keys are there, next to the returns, and are fractions."""
    method = _eval_method({"algorithm": "rl2", "env": "metaworld_ml1",
                           "env_config": {"env_name": "reach-v3", "horizon": 5},
                           "rl2": {"episodes_per_trial": 2, "cell_size": 8, "hidden": [8]}}, final_episodes=2)
    out = method.evaluate("test", None)
    assert out["tasks"] == 2 and len(out["mean_return_by_episode"]) == 2
    assert 0.0 <= out["success_rate"] <= 1.0 and 0.0 <= out["success_rate_last_episode"] <= 1.0
    assert len(out["success_rate_by_episode"]) == 2
