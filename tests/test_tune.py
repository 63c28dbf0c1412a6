"""Tune searches: trial placement groups, PBT restores, resume, best-checkpoint export."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import distmeta
from distmeta.config import ConfigError
from distmeta.tune import parse_tune_section, run_tune

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "tune-test", "seed": 0,
    "data": {"dataset": "none"},
    "task": {"kind": "sinusoid", "shots": 5, "queries": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_steps": 1, "inner_lr": 0.01},
    "optim": {"meta_batch": 4, "steps": 8},
    "engine": {"workers": 0, "learner_num_cpus": 0.5},
    "eval": {"every": 2, "episodes": 4, "final_episodes": 4},
    "checkpoint": {"every": 1000},
    "log_every": 2,
}


def config(tune, **sections):
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    data["tune"] = tune
    return data


def write(tmp_path, data) -> str:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def trial_frames(out: Path):
    import pandas as pd

    return [pd.read_json(p, lines=True) for p in sorted(out.glob("*/result.json")) if p.stat().st_size]


def test_tune_section_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"tune.space.optim.nope"):
        parse_tune_section(config({"space": {"optim.nope": {"uniform": [0, 1]}}}))
    with pytest.raises(ConfigError, match=r"tune.scheduler"):
        parse_tune_section(config({"space": {"optim.lr": {"uniform": [0, 1]}}, "scheduler": "hyperband9"}))
    with pytest.raises(ConfigError, match=r"tune.space.optim.lr"):
        parse_tune_section(config({"space": {"optim.lr": {"gaussian": [0, 1]}}}))


def test_two_trials_place_their_workers_in_their_own_placement_groups(ray_session, tmp_path):
    data = config({"space": {"optim.lr": {"grid": [0.001, 0.003]}}, "stop": {"training_iteration": 2},
                   "metric": "mse", "mode": "min"},
                  engine={"workers": 2, "num_cpus": 0.5, "learner_num_cpus": 0.5})
    out = tmp_path / "search"
    summary = run_tune(write(tmp_path, data), [], out=str(out))
    frames = trial_frames(out)
    assert len(frames) == 2
    groups = set()
    for df in frames:
        assert (df["workers_in_trial_group"] == 1.0).all()
        groups |= set(df["placement_group"])
    assert len(groups) == 2                     # one group per trial, none shared
    assert (out / "trials.png").is_file() and (out / "summary.json").is_file()
    # the best checkpoint is a distmeta run folder
    model = distmeta.load(summary["best"]["path"])
    import torch

    x = torch.linspace(-5, 5, 5)[:, None]
    assert model.adapt(x, torch.sin(x)).predict(x).shape == (5, 1)


def test_pbt_exploit_restores_step_and_optimizer_state(ray_session, tmp_path):
    data = config({"space": {"optim.lr": {"grid": [1.0e-4, 3.0e-3]}, "algorithm.inner_lr": {"choice": [0.005, 0.01]}},
                   "scheduler": "pbt",
                   # synch: both trials meet at every perturbation point, so the worse one exploits
                   "scheduler_options": {"perturbation_interval": 2, "quantile_fraction": 0.5,
                                         "resample_probability": 1.0, "synch": True},
                   "stop": {"training_iteration": 5}, "metric": "mse", "mode": "min", "max_concurrent": 2},
                  optim={"steps": 10})
    out = tmp_path / "pbt"
    run_tune(write(tmp_path, data), [], out=str(out))
    frames = trial_frames(out)
    restored = [df for df in frames if (df["restored_step"] > 0).any()]
    assert restored, "PBT never exploited"
    for df in frames:
        # the optimizer's own step count always equals the learner's: a restore brought both
        assert (df["optimizer_steps"] == df["step"]).all()
        assert df["step"].is_monotonic_increasing or (df["restored_step"] > 0).any()


@pytest.mark.slow
def test_interrupted_search_resumes(tmp_path):
    """The local-disk twin of test_storage.py's bucket search test, which CI runs: the same
    kill, resume and assertions, with --out on local disk."""
    data = config({"space": {"optim.lr": {"grid": [0.001, 0.002]}}, "metric": "mse", "mode": "min",
                   "max_concurrent": 1}, optim={"steps": 600}, eval={"every": 20, "episodes": 4, "final_episodes": 4})
    cfg = write(tmp_path, data)
    out = tmp_path / "resumable"
    # snapshots every second (Tune's default period is longer than a trial here)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = [sys.executable, "-m", "distmeta.cli", "tune", cfg, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 240

    def snapshot_has_checkpoint():  # Tune resumes from what its experiment state recorded
        for path in out.glob("experiment_state*.json"):  # a trial still running with a checkpoint
            try:
                trials = json.loads(path.read_text())["trial_data"]
            except ValueError:   # being written
                continue
            running = [json.loads(b) for a, b in trials if json.loads(a)["status"] == "RUNNING"]
            if any("checkpoint_0000" in json.dumps(b) for b in running):
                return True
        return False

    while time.monotonic() < deadline and not snapshot_has_checkpoint():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out.glob("*/checkpoint_*")), "the search never checkpointed"
    # every checkpoint the last snapshot names still exists: no rotation can outrun the snapshot
    snapshot = json.loads(sorted(out.glob("experiment_state-*.json"))[-1].read_text())
    for trial in snapshot["trial_data"]:
        named = json.loads(trial[1]).get("last_result", {}).get("checkpoint_dir_name")
        if isinstance(named, str):
            assert (out / json.loads(trial[0])["relative_logdir"] / named).is_dir(), named
    resumed = subprocess.run([sys.executable, "-m", "distmeta.cli", "tune", "--resume", str(out)],
                             capture_output=True, text=True, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    frames = trial_frames(out)
    assert len(frames) == 2
    assert all(df["step"].max() == 600 for df in frames), [df["step"].tolist() for df in frames]
    assert any((df["restored_step"] > 0).any() for df in frames)   # continued, not restarted


RL_TUNE = {
    "name": "rl-tune-test", "seed": 0, "eval": {"every": 1, "episodes": 10, "final_episodes": 10},
    "rl": {"algorithm": "rl2", "env": "bandit", "env_config": {"k": 2}, "env_steps": 2000, "num_env_runners": 0,
           "num_envs_per_env_runner": 4,
           "rl2": {"episodes_per_trial": 10, "cell_size": 16, "hidden": [16], "max_seq_len": 10,
                   "train_batch_size": 1000, "minibatch_size": 500, "num_epochs": 1}},
    "tune": {"space": {"rl.rl2.lr": {"grid": [0.001]}}, "metric": "mean_return", "mode": "max",
             "stop": {"training_iteration": 2}},
}


def test_rl2_search_uses_the_algorithm_resource_request_and_exports_the_best(ray_session, tmp_path):
    from distmeta.commands import evaluate_run
    from distmeta.config import from_dict
    from distmeta.rl.rl2_method import RL2Method
    from distmeta.tune import make_trainable

    cfg = from_dict({k: v for k, v in RL_TUNE.items() if k != "tune"})
    algo_config = RL2Method.algo_config(cfg)
    expected = algo_config.algo_class.default_resource_request(algo_config)
    trainable = make_trainable(RL_TUNE)    # the one trainable of every distmeta experiment
    assert trainable._resources.bundles == expected.bundles   # sized by RLlib's own request
    out = tmp_path / "rl"
    summary = run_tune(write(tmp_path, RL_TUNE), [], out=str(out))
    assert summary["trials"][0]["status"] == "TERMINATED"
    result = evaluate_run(summary["best"]["path"], episodes=10)
    assert "mean_return" in result and "baselines" in result and result["split"] == "test"
