"""Skip markers for tests that need an optional extra."""
from __future__ import annotations

import importlib

import pytest


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


needs_metaworld = pytest.mark.skipif(not _importable("metaworld"),
                                     reason="needs the metaworld extra (pip install 'distmeta[metaworld]')")
needs_mujoco = pytest.mark.skipif(not _importable("gymnasium.envs.mujoco.half_cheetah_v5"),  # imports mujoco
                                  reason="needs the mujoco extra (pip install 'distmeta[mujoco]')")
