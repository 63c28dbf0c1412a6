"""Run folders on any storage: a local path, or a URI on a pyarrow filesystem
(``s3://``, ``gs://``, ``file://``, ...).

A run whose folder is a URI is written to a local staging folder and published
to the URI at checkpoint boundaries, in commit order: the run's small files
(config, metrics, TensorBoard events, results, plots), then the checkpoint file,
then its marker ``checkpoints/<name>.commit`` last. Object stores have no atomic
rename, so the marker is what makes a checkpoint exist: a reader lists the
markers and never sees a partial checkpoint. Deleting an old checkpoint removes
its marker first. Opening a URI run (resume, eval, ``distmeta.load``) downloads
its files and its committed checkpoints into a fresh staging folder; the URI is
the truth, whatever a killed process left in its staging folder.

Credentials and endpoints come from the environment of each process (instance
roles, ``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for an S3-compatible server):
every node of a cluster needs its own access.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import List, Optional, Union

from distmeta.errors import DistmetaError

MARKER = ".commit"


def is_uri(path: Union[str, Path, None]) -> bool:
    """True for ``scheme://...`` (Path objects and plain paths are local)."""
    return isinstance(path, str) and "://" in path


def staging_root() -> Path:
    return Path(os.environ.get("DISTMETA_STAGING", Path.home() / ".cache" / "distmeta" / "staging"))


def staging_dir(uri: str) -> Path:
    """The local folder a URI run is written to before it is published."""
    return staging_root() / hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:16]


class Remote:
    """A folder on a pyarrow filesystem, addressed by paths relative to it."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except (ValueError, OSError, TypeError) as exc:
            raise DistmetaError(f"{uri}: not a storage location pyarrow can open ({exc})") from None

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise DistmetaError(f"{self.uri}: cannot {what} ({' '.join(str(exc).split())[:300]})") from None

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        info = self._call("read", self.fs.get_file_info, self._path(rel))
        return info.type != pafs.FileType.NotFound

    def list(self, rel: str) -> List[str]:
        """Names of the files directly in ``rel`` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._path(rel), allow_not_found=True)
        infos = self._call("list", self.fs.get_file_info, selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, rel: str) -> bytes:
        def read():
            with self.fs.open_input_stream(self._path(rel)) as fh:
                return fh.read()
        return self._call(f"read {rel}", read)

    def write_bytes(self, rel: str, data: bytes) -> None:
        def write():
            with self.fs.open_output_stream(self._path(rel)) as fh:
                fh.write(data)
        self._call(f"write {rel}", write)

    def upload(self, local: Path, rel: str) -> None:
        self.write_bytes(rel, Path(local).read_bytes())

    def download(self, rel: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self.read_bytes(rel))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self._call(f"delete {rel}", self.fs.delete_file, self._path(rel))


def committed(remote: Remote) -> List[str]:
    """Checkpoint file names whose marker exists, oldest first."""
    return [n[: -len(MARKER)] for n in remote.list("checkpoints") if n.endswith(MARKER)]


SMALL_FILES = ["config.yaml", "provenance.json", "metrics.csv", "results.json", "mlflow_run_id"]


def publish(remote: Remote, local: Path, checkpoint: Optional[Path] = None, extra: Optional[List[str]] = None,
            removed: Optional[List[str]] = None) -> None:
    """Upload the run's small files and TensorBoard events, then ``checkpoint`` and ``extra``
    checkpoint files (best.pt, best.json), then the checkpoint's marker; then retire ``removed``
    checkpoints (marker first)."""
    for name in SMALL_FILES + [p.name for p in local.glob("*.png")]:
        if (local / name).is_file():
            remote.upload(local / name, name)
    for event in sorted((local / "tensorboard").glob("*")):
        remote.upload(event, f"tensorboard/{event.name}")
    for name in extra or []:
        if (local / "checkpoints" / name).is_file():
            remote.upload(local / "checkpoints" / name, f"checkpoints/{name}")
    if checkpoint is not None:
        remote.upload(checkpoint, f"checkpoints/{checkpoint.name}")
        remote.write_bytes(f"checkpoints/{checkpoint.name}{MARKER}", b"{}")
    for name in removed or []:
        remote.delete(f"checkpoints/{name}{MARKER}")
        remote.delete(f"checkpoints/{name}")


def fetch(uri: str) -> Path:
    """A fresh local copy of a URI run (its files and committed checkpoints) in its staging folder."""
    remote = Remote(uri)
    if not remote.exists("config.yaml"):
        raise DistmetaError(f"{uri}: not a distmeta run folder (no config.yaml)")
    local = staging_dir(uri)
    shutil.rmtree(local, ignore_errors=True)
    for name in SMALL_FILES:
        if remote.exists(name):
            remote.download(name, local / name)
    for name in remote.list("tensorboard"):
        remote.download(f"tensorboard/{name}", local / "tensorboard" / name)
    for name in committed(remote) + [n for n in ("best.pt", "best.json") if n in remote.list("checkpoints")]:
        remote.download(f"checkpoints/{name}", local / "checkpoints" / name)
    return local
