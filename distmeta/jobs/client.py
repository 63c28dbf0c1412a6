"""Talking to a job server: a thin layer over Ray's public ``JobSubmissionClient``.

Contract:

- :func:`job_client` returns a ``JobSubmissionClient`` for :func:`~distmeta.jobs.server.resolve_address`,
  after probing the address (a dead one fails in seconds instead of hanging in HTTP
  retries) and with distmeta's token header.
- :func:`submit`, :func:`wait_for_job`, :func:`follow`, :func:`exit_status` and
  :func:`delete` take that client. Every error the client raises leaves through
  :func:`client_errors` as a one-line :class:`~distmeta.errors.DistmetaError` naming
  the job server (and job); nothing prints a traceback.
- A job's exit status (:func:`exit_status`) is 0 when it SUCCEEDED, else its driver's
  exit code when Ray reports one (distmeta's own errors exit 2), else 1.
"""
from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

from distmeta.address import JOB_SERVER, PROBE_TIMEOUT_S, address_kind, probe
from distmeta.errors import DistmetaError
from distmeta.jobs.package import stage_package
from distmeta.jobs.server import TUNNEL_HINT, resolve_address, token_headers, without_env
from distmeta.jobs.spec import (default_working_dir, entrypoint_for, job_command,
                                job_runtime_env, relative_out_warning)

TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")


def one_line(exc: Any) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."


@contextlib.contextmanager
def client_errors(url: str, job_id: Optional[str] = None) -> Iterator[None]:
    """Turn the job client's exceptions into one-line DistmetaErrors."""
    from ray.exceptions import AuthenticationError

    where = f"job {job_id} on {url}" if job_id else f"the Ray job server at {url}"
    try:
        yield
    except AuthenticationError as exc:
        if "Authentication failed" in str(exc) or "403" in str(exc):
            raise DistmetaError(
                f"{where} rejected the authentication token (HTTP 403): use the cluster's "
                "token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or --token-file)") from None
        raise DistmetaError(
            f"{where} requires an authentication token (HTTP 401, missing token): set "
            "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
            "or pass --token-file") from None
    except ConnectionError as exc:
        raise DistmetaError(f"cannot reach {where}: {one_line(exc)}; {TUNNEL_HINT}") from None
    except DistmetaError:
        raise
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        raise DistmetaError(f"{where}: {one_line(exc)}") from None
    except Exception as exc:  # requests/aiohttp errors have no common base we can import
        if type(exc).__module__.split(".")[0] in ("requests", "urllib3", "aiohttp"):
            raise DistmetaError(f"{where}: {one_line(exc)}") from None
        raise


def job_client(address: Optional[str] = None, token_file: Optional[str] = None,
               probe_timeout: float = PROBE_TIMEOUT_S):
    """A ``JobSubmissionClient`` for the resolved address, or a one-line DistmetaError."""
    chosen = resolve_address(address)
    if chosen != "auto":
        what = "the Ray job server" if address_kind(chosen) == JOB_SERVER else "the Ray cluster"
        probe(chosen, what, timeout=probe_timeout, hint=TUNNEL_HINT)
    headers = token_headers(token_file)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[default] is a dependency
        raise DistmetaError(f"job submission needs ray[default]: {exc}") from None
    with client_errors(chosen), without_env():
        client = JobSubmissionClient(chosen, headers=headers or None)
    _warn_on_version_mismatch(client)
    return client


def _warn_on_version_mismatch(client) -> None:
    import ray

    # Private on purpose: Ray has no public accessor for the cluster's Ray version.
    # JobSubmissionClient stores /api/version's "ray_version" here during its own
    # connection check (its public get_version() is the jobs API version, not Ray's);
    # read defensively, so a Ray without the attribute only loses the warning.
    server = getattr(client, "_server_ray_version", None)
    if server and server != ray.__version__:
        print(f"distmeta: warning: the cluster runs Ray {server}, this client Ray "
              f"{ray.__version__}", file=sys.stderr)


def submit(client, command: Sequence[str], *, runtime_env: Optional[Dict[str, Any]] = None,
           working_dir: Optional[str] = None, auto_working_dir: bool = True,
           wheel: bool = True, resume: Optional[str] = None,
           submission_id: Optional[str] = None,
           entrypoint_num_cpus: Optional[float] = None,
           entrypoint_num_gpus: Optional[float] = None, python: str = "python") -> str:
    """Submit ``distmeta COMMAND`` as a Ray job; returns the submission id.

    ``runtime_env`` is the user's (:func:`~distmeta.jobs.spec.user_runtime_env`); this
    distmeta and a working directory are added (:func:`~distmeta.jobs.spec.job_runtime_env`).
    """
    import distmeta

    args = job_command(command, resume=resume)
    warning = relative_out_warning(args, resume)
    if warning:
        print(f"distmeta: warning: {warning}", file=sys.stderr)
    user = dict(runtime_env or {})
    if working_dir is not None and not Path(working_dir).is_dir():
        raise DistmetaError(f"--working-dir {working_dir}: not a directory")
    if working_dir is None and auto_working_dir and "working_dir" not in user:
        working_dir = default_working_dir(args)
    resources = {k: v for k, v in (("entrypoint_num_cpus", entrypoint_num_cpus),
                                   ("entrypoint_num_gpus", entrypoint_num_gpus)) if v is not None}
    with tempfile.TemporaryDirectory(prefix="distmeta_submit_") as tmp:
        if working_dir is None and "working_dir" not in user:
            working_dir = _empty_working_dir(Path(tmp))
        env = job_runtime_env(user, stage_package(Path(tmp), wheel=wheel), working_dir)
        with client_errors(client.get_address()):
            return client.submit_job(
                entrypoint=entrypoint_for(args, python=python), runtime_env=env,
                submission_id=submission_id,
                metadata={"distmeta_version": distmeta.__version__,
                          "distmeta_command": shlex.join(args)[:1000]},
                **resources)


def _empty_working_dir(tmp: Path) -> str:
    """Always give the job a working directory: without one it runs in the raylet's
    directory, which may be a distmeta checkout that would shadow the shipped package."""
    path = tmp / "working_dir"
    path.mkdir()
    (path / ".distmeta_job").write_text("empty working directory\n")
    return str(path)


def _status(client, job_id: str) -> str:
    with client_errors(client.get_address(), job_id):
        return str(client.get_job_status(job_id))


def wait_for_job(client, job_id: str, timeout: Optional[float] = None,
                 poll: float = 0.5) -> str:
    """Block until the job is terminal; its status as a string."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = _status(client, job_id)
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise DistmetaError(f"job {job_id} still {status} after {timeout:g} s")
        time.sleep(poll)


def follow(client, job_id: str, stream=None) -> str:
    """Stream the job's logs until it ends; its final status as a string.

    Uses the job server's websocket tail, and polls the full log when the websocket
    breaks, so no output is lost or printed twice.
    """
    stream = stream or sys.stdout
    printed = [0]

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
        printed[0] += len(text)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        raise
    except Exception:
        return _poll_logs(client, job_id, write, printed)
    return wait_for_job(client, job_id)


def _poll_logs(client, job_id: str, write: Callable[[str], None], printed) -> str:
    while True:
        status = _status(client, job_id)
        with client_errors(client.get_address(), job_id):
            logs = client.get_job_logs(job_id) or ""
        if len(logs) > printed[0]:
            write(logs[printed[0]:])
        if status in TERMINAL_STATUSES:
            return status
        time.sleep(1.0)


def exit_status(client, job_id: str, status: str) -> int:
    """Print the job's end in one line on stderr; its exit status (module docstring)."""
    if status == "SUCCEEDED":
        print(f"distmeta: job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    info = None
    with contextlib.suppress(Exception):
        info = client.get_job_info(job_id)
    message = getattr(info, "message", None) or ""
    code = getattr(info, "driver_exit_code", None)
    rc = code if isinstance(code, int) and 0 < code < 256 else 1
    print(f"distmeta: error: job {job_id} {status}"
          + (f" (exit status {code})" if isinstance(code, int) and code else "")
          + (f": {one_line(message)}" if message else ""), file=sys.stderr)
    return rc


def follow_and_report(client, job_id: str) -> int:
    """:func:`follow`, then :func:`exit_status`; Ctrl-C stops following, not the job."""
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\ndistmeta: stopped following; job {job_id} keeps running "
              f"(distmeta jobs stop {job_id})", file=sys.stderr)
        return 130
    return exit_status(client, job_id, status)


def delete(client, job_id: str) -> None:
    """Delete a finished job and its data (``JobSubmissionClient.delete_job``); a job
    that still runs is refused in one line."""
    status = _status(client, job_id)
    if status not in TERMINAL_STATUSES:
        raise DistmetaError(f"job {job_id} is {status}: stop it first "
                            f"(distmeta jobs stop {job_id} --wait), then delete it")
    with client_errors(client.get_address(), job_id):
        deleted = client.delete_job(job_id)
    if not deleted:
        raise DistmetaError(f"job {job_id}: the job server did not delete it")
