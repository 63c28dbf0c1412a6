"""Make an interrupted Tune search resumable when its last snapshot names a
checkpoint that checkpoint rotation has since deleted.

Tune writes its experiment state (``experiment_state-*.json``) every few seconds,
while ``CheckpointConfig(num_to_keep=N)`` deletes old checkpoints as soon as newer
ones arrive. A search killed between the two leaves a snapshot whose trial points
at a deleted ``checkpoint_NNNNNN``, and ``Tuner.restore`` then fails that trial
("does not exist on storage anymore").

Contract: ``refill_rotated_checkpoints(exp_dir)`` finds, for every trial of the
newest snapshot, the checkpoint names it records (in its last result and in its
checkpoint manager's state, read as bytes, never unpickled). Each one that is
missing while the trial folder still holds a newer checkpoint that loads is
re-created as a copy of the newest such checkpoint. The trial then resumes from
later progress than the snapshot knew of, never from earlier. It returns one
line per copy, for the log.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import List, Optional, Set

import torch

CHECKPOINT_NAME = re.compile(r"checkpoint_\d{6}")


def _recorded_names(trial_meta: str) -> Set[str]:
    names = set(CHECKPOINT_NAME.findall(trial_meta))
    manager = json.loads(trial_meta).get("checkpoint_manager")
    if isinstance(manager, dict) and isinstance(manager.get("value"), str):
        try:  # a hex-encoded pickle: its path strings are plain bytes, so no unpickling is needed
            names |= {m.decode() for m in re.findall(rb"checkpoint_\d{6}", bytes.fromhex(manager["value"]))}
        except ValueError:
            pass
    return names


def _loads(checkpoint: Path) -> bool:
    """True when the folder holds at least one ``.pt`` file and all of them load safely
    (a search killed mid-copy can leave a partial checkpoint)."""
    files = list(checkpoint.glob("*.pt"))
    try:
        for f in files:
            torch.load(f, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return bool(files)


def _newest_loadable(trial_dir: Path) -> Optional[Path]:
    for checkpoint in sorted((p for p in trial_dir.glob("checkpoint_*") if p.is_dir()), reverse=True):
        if _loads(checkpoint):
            return checkpoint
    return None


def refill_rotated_checkpoints(exp_dir: Path) -> List[str]:
    snapshots = sorted(Path(exp_dir).glob("experiment_state-*.json"))
    if not snapshots:
        return []
    notes: List[str] = []
    for trial_json, trial_meta in json.loads(snapshots[-1].read_text()).get("trial_data", []):
        logdir = json.loads(trial_json).get("relative_logdir")
        if not logdir or not (Path(exp_dir) / logdir).is_dir():
            continue
        trial_dir = Path(exp_dir) / logdir
        missing = sorted(n for n in _recorded_names(trial_meta) if not (trial_dir / n).exists())
        newest = _newest_loadable(trial_dir) if missing else None
        for name in missing:
            if newest is not None and newest.name > name:
                shutil.copytree(newest, trial_dir / name)
                notes.append(f"tune --resume: {logdir}: {name} was rotated out after Tune's last snapshot; "
                             f"restoring it from the newer {newest.name}")
    return notes
