"""Shared fixtures: the Omniglot folder, one Ray cluster per test session, and
thread settings for a 2-core machine."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The two official minimal sets ship with distmeta; $DISTMETA_DATA_DIR may point at another copy.
OMNIGLOT_DIR = Path(os.environ.get("DISTMETA_DATA_DIR") or REPO / "distmeta" / "data" / "omniglot_minimal")

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    if not (OMNIGLOT_DIR / "images_background_small1.zip").is_file():
        pytest.fail(f"Omniglot minimal sets not found in {OMNIGLOT_DIR}")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray for the whole test session (address='local' never
    joins a cluster that happens to run on the machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _system_config={"health_check_period_ms": 1000,
                                                          "health_check_failure_threshold": 3})
    yield ray
    # left running for other tests; Ray shuts down at interpreter exit
