"""Experiment tracking where users already look: MLflow, optional.

TensorBoard events are always written (``tensorboard/`` in the run folder). With
``tracking.mlflow_uri`` set (and the ``mlflow`` extra installed), the run loop
also logs the flattened config as parameters and every metrics row as MLflow
metrics (step = iteration) to one MLflow run named after the run folder. Its run
id is kept in the run folder (``mlflow_run_id``), so a resumed run continues the
same MLflow run. Tune searches log their trials with Ray's
``MLflowLoggerCallback`` to the same URI.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

from distmeta.errors import DistmetaError


def _flat(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise DistmetaError("tracking.mlflow_uri is set but MLflow is not installed: "
                            "pip install 'distmeta[mlflow]'") from None
    return mlflow


class MLflowTracker:
    """One MLflow run for one distmeta run folder (created, or continued on resume)."""

    def __init__(self, uri: str, experiment: str, run_dir: Path, name: str, config: Dict[str, Any]):
        mlflow = import_mlflow()
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        id_file = Path(run_dir) / "mlflow_run_id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        id_file.write_text(self.run_id)
        for key, value in _flat(config).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.client.log_metric(self.run_id, key, float(value), step=step)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def make_tracker(cfg, run_dir: Path) -> Optional[MLflowTracker]:
    t = cfg.tracking
    if not t.mlflow_uri:
        return None
    return MLflowTracker(t.mlflow_uri, t.mlflow_experiment or cfg.name, run_dir, Path(run_dir).name, cfg.to_dict())


def tune_callbacks(cfg) -> list:
    """Ray Tune's own MLflow callback when ``tracking.mlflow_uri`` is set."""
    if not cfg.tracking.mlflow_uri:
        return []
    import_mlflow()
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=cfg.tracking.mlflow_uri,
                                 experiment_name=cfg.tracking.mlflow_experiment or cfg.name, save_artifact=False)]
