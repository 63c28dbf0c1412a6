"""The cluster-sized Meta-RL experiments (Meta-World ML10 for RL^2 and MAML-RL, HalfCheetah-Vel)
run end to end on one machine when scaled down with ``--set`` overrides (experiments/README.md,
"Trying a cluster experiment on one machine"): the shipped YAML, its env, sampling, the
held-out evaluation and ``results.json`` hold together before anyone books a cluster for them."""
from __future__ import annotations

from pathlib import Path

import pytest
from extras import needs_metaworld, needs_mujoco

import distmeta
from distmeta.config import from_dict, load_config_dict

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# one machine, no cluster, the local EnvRunner, two iterations of a few 10-step episodes
ONE_MACHINE = ["engine.address=null", "rl.num_env_runners=0", "rl.num_envs_per_env_runner=2", "rl.num_learners=0",
               "rl.env_config.horizon=10", "rl.env_steps=160",
               "eval.every=1", "eval.episodes=2", "eval.final_episodes=3", "checkpoint.every=1"]
SCALE_DOWN = {  # per algorithm
    "maml_rl": ["rl.maml.meta_batch=2", "rl.maml.episodes_per_task=2"],
    "rl2": ["rl.rl2.episodes_per_trial=2", "rl.rl2.max_seq_len=20", "rl.rl2.train_batch_size=80",
            "rl.rl2.minibatch_size=40", "rl.rl2.num_epochs=1"],
}


@pytest.mark.ray
@pytest.mark.parametrize("name, algorithm", [
    pytest.param("maml_rl_metaworld_ml10", "maml_rl", marks=needs_metaworld),
    pytest.param("rl2_metaworld_ml10", "rl2", marks=needs_metaworld),
    pytest.param("maml_rl_halfcheetah_vel", "maml_rl", marks=needs_mujoco)])
def test_cluster_experiment_runs_scaled_down(ray_session, tmp_path, name, algorithm):
    cfg = from_dict(load_config_dict(EXPERIMENTS / f"{name}.yaml", ONE_MACHINE + SCALE_DOWN[algorithm]))
    assert cfg.rl.algorithm == algorithm
    result = distmeta.train(cfg, out=tmp_path / "run", progress=False)
    out = result.metrics
    assert result.step == 2
    assert (out["checkpoint"], out["split"], out["tasks"]) == ("final", "test", 3)
    assert (tmp_path / "run" / "results.json").exists()
    if algorithm == "maml_rl":
        assert set(out["mean_return_by_inner_steps"]) == {str(k) for k in range(cfg.rl.maml.eval_inner_steps + 1)}
        success_curve = list(out.get("success_rate_by_inner_steps", {}).values())
    else:
        assert len(out["mean_return_by_episode"]) == 2
        success_curve = out.get("success_rate_by_episode", [])
    if "metaworld" in name:  # Meta-World's success rate next to the return
        assert 0.0 <= out["success_rate"] <= 1.0
        assert len(success_curve) == 2 and all(0.0 <= v <= 1.0 for v in success_curve)
