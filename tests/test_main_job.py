"""The README's main job, as a user runs it (a few steps): embedded Ray with 2 task workers,
the Omniglot sets shipped with distmeta, and a run folder with everything a person looks at."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_main_job() -> list:
    text = (REPO / "README.md").read_text()
    section = text.split("## Run the main job", 1)[1].split("##", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("distmeta train "))
    return shlex.split(line)


@pytest.mark.ray
def test_readme_main_job_runs_and_fills_its_run_folder(tmp_path):
    argv = readme_main_job()
    assert argv[:3] == ["distmeta", "train", "experiments/quickstart_omniglot.yaml"]
    out = tmp_path / "quickstart"
    argv[argv.index("--out") + 1] = str(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISTMETA_DATA_DIR": str(tmp_path / "no-data-here")}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "distmeta.cli", *argv[1:], "--steps", "4", "--no-progress",
           "--set", "eval.every=2", "--set", "eval.episodes=5", "--set", "eval.final_episodes=10",
           "--set", "log_every=1", "--set", "checkpoint.every=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "provenance.json", "metrics.csv", "results.json", "learning_curves.png",
                 "step_time.png", "checkpoints/step_0000004.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"] == "final" and results["split"] == "test" and results["episodes"] == 10
    assert 0.0 <= results["accuracy"] <= 1.0 and results["ci95"] >= 0.0
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "accuracy", "tasks_per_s", "val_accuracy", "time_transfer_s"} <= set(header)
    # the one-screen summary: test score with its CI, where the run is, how to evaluate and resume it
    assert re.search(r"final test accuracy: [0-9.]+ ± [0-9.]+ \(final checkpoint, iteration 4\)", proc.stdout)
    assert f"distmeta eval {out}" in proc.stdout and f"distmeta train --resume {out}" in proc.stdout
