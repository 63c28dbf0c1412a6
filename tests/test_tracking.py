"""MLflow tracking (optional extra) against a local file store: params, metric history by
iteration, the test score, and one MLflow run continued by a resume."""
from __future__ import annotations

import pytest

import distmeta

SIN = {"name": "tracked", "data": {"dataset": "none"}, "task": {"kind": "sinusoid", "shots": 5, "queries": 5},
       "model": {"name": "mlp", "hidden": [8]}, "algorithm": {"name": "maml", "inner_lr": 0.01},
       "optim": {"meta_batch": 2, "steps": 6}, "eval": {"every": 3, "episodes": 3, "final_episodes": 4},
       "checkpoint": {"every": 3}, "log_every": 2}


def test_mlflow_logs_params_metrics_and_continues_on_resume(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # a local file store; users point at a server
    uri = (tmp_path / "mlruns").as_uri()
    cfg = {**SIN, "tracking": {"mlflow_uri": uri, "mlflow_experiment": "distmeta-test"}}
    run = distmeta.train(cfg, out=tmp_path / "run", progress=False)
    run_id = (run.path / "mlflow_run_id").read_text().strip()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.data.params["algorithm.inner_lr"] == "0.01"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [2, 3, 4, 6]   # log_every and validations
    assert [m.step for m in client.get_metric_history(run_id, "val_mse")] == [3, 6]
    assert client.get_metric_history(run_id, "test_mse")[0].value == pytest.approx(run.metrics["mse"])
    # a resumed run logs to the same MLflow run
    more = {**cfg, "optim": {**cfg["optim"], "steps": 8}}
    distmeta.train(more, resume=run.path, progress=False)
    assert (run.path / "mlflow_run_id").read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")][-1] == 8
