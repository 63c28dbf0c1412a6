"""Helpers shared by the data-layer tests (a plain module, not a conftest)."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import pytest

OMNIGLOT_DIR = Path(os.environ.get("DISTMETA_DATA_DIR") or
                    Path(__file__).resolve().parents[1] / "distmeta" / "data" / "omniglot_minimal")


def omniglot_zip(set_name: str) -> Path:
    """Path of an official minimal zip (shipped with distmeta); fails (never skips) when it is missing."""
    path = OMNIGLOT_DIR / f"images_{set_name}.zip"
    if not path.is_file():
        pytest.fail(f"Omniglot data missing: {path}")
    return path


def rezip(dest: Path, stem: str, sources: Iterable[Tuple[Path, Optional[Sequence[str]]]]) -> Path:
    """Write ``dest/<stem>.zip`` in the official layout from (zip, alphabets or None) sources."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{stem}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for src, alphabets in sources:
            with zipfile.ZipFile(src) as zin:
                for member in zin.namelist():
                    parts = member.split("/")
                    if not member.endswith(".png") or (alphabets is not None and parts[1] not in alphabets):
                        continue
                    zout.writestr("/".join([stem] + parts[1:]), zin.read(member))
    return out
