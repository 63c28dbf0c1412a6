"""Runs on object storage: a real S3-compatible server (moto) on 127.0.0.1. A run with
``--out s3://...`` killed with SIGKILL resumes from the bucket and ends with the parameters
of an uninterrupted run; eval and distmeta.load read it from the bucket; a checkpoint
without its commit marker is never picked."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import distmeta
from distmeta.commands import evaluate_run
from distmeta.engine.run_dir import load_checkpoint
from distmeta.storage import MARKER, Remote, committed, is_uri

SIN = {"name": "s3run", "data": {"dataset": "none"}, "task": {"kind": "sinusoid", "shots": 5, "queries": 5},
       "model": {"name": "mlp", "hidden": [16, 16]}, "algorithm": {"name": "maml", "inner_lr": 0.01},
       "optim": {"meta_batch": 2, "steps": 300}, "eval": {"every": 100, "episodes": 5, "final_episodes": 5},
       "checkpoint": {"every": 20, "keep_last": 2}, "log_every": 20}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with bucket ``bkt``; endpoint and dummy keys in the environment
    (this process and its children)."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "DISTMETA_STAGING": str(tmp_path_factory.mktemp("staging"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                      allow_bucket_creation=True).create_dir("bkt")
    yield env
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _params(location):
    return load_checkpoint(location)["state"]["model"]


def test_uri_detection():
    assert is_uri("s3://b/x") and is_uri("file:///tmp/x") and not is_uri("runs/x")


def test_runs_without_out_go_to_distmeta_runs(monkeypatch):
    """A location set once per cluster (a submitted job without --out writes there)."""
    from distmeta.config import from_dict
    from distmeta.engine.trainer import default_run_dir

    cfg = from_dict({"name": "where"})
    monkeypatch.setenv("DISTMETA_RUNS", "s3://lab-runs/distmeta/")
    assert str(default_run_dir(cfg)).startswith("s3://lab-runs/distmeta/where-")
    monkeypatch.delenv("DISTMETA_RUNS")
    assert str(default_run_dir(cfg)).startswith("runs/where-")


def test_killed_run_resumes_from_the_bucket_with_uninterrupted_parameters(s3, tmp_path):
    cfg_file = tmp_path / "sin.yaml"
    cfg_file.write_text(yaml.safe_dump(SIN))
    uri = "s3://bkt/runs/killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "distmeta.cli", "train", str(cfg_file), "--out", uri,
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    remote = Remote(uri)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(committed(remote)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = committed(remote)
    assert done and done[-1] != "step_0000300.pt", f"the run was not killed mid-way: {done}"
    # a checkpoint that was uploaded but never committed (no marker) is never picked
    remote.write_bytes("checkpoints/step_0000299.pt", b"partial upload")
    assert load_checkpoint(uri)["step"] == int(done[-1][5:12])

    resumed = subprocess.run([sys.executable, "-m", "distmeta.cli", "train", "--resume", uri, "--no-progress"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"run folder: {uri}" in resumed.stdout
    assert committed(remote)[-1] == "step_0000300.pt" and remote.exists("results.json")
    assert remote.exists("learning_curves.png") and remote.list("tensorboard")

    full = distmeta.train(SIN, out=tmp_path / "full", progress=False)
    a, b = _params(uri), _params(full.path)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)

    # eval and the Python API read the run from the bucket
    result = evaluate_run(uri, episodes=5)
    assert result["checkpoint"] == "final" and result["iteration"] == 300
    model = distmeta.load(uri)
    x = torch.linspace(-5, 5, 5)[:, None]
    assert model.adapt(x, torch.sin(x)).predict(x).shape == (5, 1)


def test_markers_are_removed_before_their_checkpoints(s3, tmp_path):
    uri = "s3://bkt/runs/rotation"
    result = distmeta.train({**SIN, "optim": {**SIN["optim"], "steps": 60}}, out=uri, progress=False)
    assert result.path == uri
    names = Remote(uri).list("checkpoints")
    assert [n for n in names if n.endswith(MARKER)] == ["step_0000040.pt" + MARKER, "step_0000060.pt" + MARKER]
    assert "step_0000020.pt" not in names     # rotated out: marker and file both gone


def test_out_on_an_existing_bucket_run_is_refused(s3, tmp_path, capsys):
    from distmeta import cli

    uri = "s3://bkt/runs/rotation"
    cfg_file = tmp_path / "sin.yaml"
    cfg_file.write_text(yaml.safe_dump(SIN))
    assert cli.main(["train", str(cfg_file), "--out", uri]) == 2
    assert "a run folder already exists there" in capsys.readouterr().err


# 600 steps, a report (and a checkpoint) every 20: after the first checkpoint a trial still has
# 29 reports to make, so the kill lands while it runs, also on a fast machine (at 300 steps, one
# CI run on a 2.5x faster machine resumed with no trial continuing from a checkpoint)
TUNE = {**SIN, "name": "s3tune", "optim": {**SIN["optim"], "steps": 600},
        "eval": {"every": 20, "episodes": 4, "final_episodes": 4}, "checkpoint": {"every": 1000},
        "engine": {"workers": 0, "learner_num_cpus": 0.5},
        "tune": {"space": {"optim.lr": {"grid": [0.001, 0.002]}}, "metric": "mse", "mode": "min",
                 "max_concurrent": 1}}


@pytest.mark.ray
def test_tune_search_writes_to_the_bucket_and_resumes_there(s3, tmp_path):
    """Trials checkpoint to the bucket (Tune's storage_path follows --out); a search killed with
    SIGKILL resumes from the bucket URI alone and both trials finish all their steps."""
    import json

    cfg_file = tmp_path / "tune.yaml"
    cfg_file.write_text(yaml.safe_dump(TUNE))
    uri = "s3://bkt/searches/s3tune"
    # snapshots every second (Tune's default period is longer than a trial here)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "distmeta.cli", "tune", str(cfg_file), "--out", uri],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    remote = Remote(uri)

    def snapshots():  # each experiment-state snapshot in the bucket, by name: its (trial, state) pairs
        for name in [n for n in remote.list("") if n.startswith("experiment_state")]:
            try:
                trials = json.loads(remote.read_bytes(name))["trial_data"]
            except ValueError:   # being written
                continue
            yield [(json.loads(a), json.loads(b)) for a, b in trials]

    def snapshot_names_a_checkpoint():  # of a trial still running: the kill lands mid-search
        return any(trial["status"] == "RUNNING" and "checkpoint_0000" in json.dumps(state)
                   for trials in snapshots() for trial, state in trials)

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not snapshot_names_a_checkpoint():
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot_names_a_checkpoint(), "the search never checkpointed to the bucket"
    # every checkpoint the last snapshot names is still there: no rotation can outrun the snapshot
    for trial, state in list(snapshots())[-1]:
        named = state.get("last_result", {}).get("checkpoint_dir_name")
        if isinstance(named, str):
            assert remote.exists(f"{trial['relative_logdir']}/{named}"), named
    resumed = subprocess.run([sys.executable, "-m", "distmeta.cli", "tune", "--resume", uri],
                             capture_output=True, text=True, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    summary = json.loads(remote.read_bytes("summary.json"))
    assert len(summary["trials"]) == 2 and all(t["status"] == "TERMINATED" for t in summary["trials"])
    best = summary["best"]["path"]
    assert best.startswith(uri) and load_checkpoint(best)["step"] == 600
    reports = [[json.loads(line) for line in remote.read_bytes(f"{trial['relative_logdir']}/result.json").splitlines()
                if line.strip()] for trial, _ in list(snapshots())[-1]]
    assert all(max(r["step"] for r in rows) == 600 for rows in reports)
    assert any(r["restored_step"] > 0 for rows in reports for r in rows)   # continued, not restarted


def test_resume_from_a_bucket_downloads_the_run_once(s3, monkeypatch):
    """``train --resume URI`` without a config reads only config.yaml for the config, then fetches
    the run folder once (it used to fetch it twice: once for the config, once to resume)."""
    import distmeta.storage as storage
    from distmeta import cli

    uri = "s3://bkt/runs/fetch-once"
    distmeta.train({**SIN, "optim": {**SIN["optim"], "steps": 40}}, out=uri, progress=False)
    fetched = []
    real_fetch = storage.fetch
    monkeypatch.setattr(storage, "fetch", lambda u: fetched.append(u) or real_fetch(u))
    assert cli.main(["train", "--resume", uri, "--steps", "60", "--no-progress"]) == 0
    assert fetched == [uri]
    assert load_checkpoint(uri)["step"] == 60
