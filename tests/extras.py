"""Skip markers for tests that need an optional extra."""
from __future__ import annotations

import pytest


def _has_metaworld() -> bool:
    try:
        import metaworld  # noqa: F401
    except Exception:
        return False
    return True


needs_metaworld = pytest.mark.skipif(not _has_metaworld(),
                                     reason="needs the metaworld extra (pip install 'distmeta[metaworld]')")


def _has_mujoco() -> bool:
    try:
        import mujoco  # noqa: F401
    except Exception:
        return False
    return True


needs_mujoco = pytest.mark.skipif(not _has_mujoco(), reason="needs the mujoco extra (pip install 'distmeta[mujoco]')")
