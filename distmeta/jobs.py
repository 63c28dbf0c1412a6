"""Job submission to a Ray cluster: ``distmeta submit`` and ``distmeta jobs``.

``distmeta submit [options] -- train experiments/x.yaml --steps 100`` runs
``python -m distmeta.cli train experiments/x.yaml --steps 100`` as a Ray job. The job
imports the *same* distmeta as the client: the package is shipped with the job
through ``runtime_env["py_modules"]`` (by default as the contents of a wheel built
from the source tree, so the job sees exactly what ``pip install`` would install,
``distmeta.envs`` included), and the working directory, which only carries
experiment files, never contains a ``distmeta/`` folder that could shadow it.

Address of the job server, first that is set: ``--address``,
``RAY_API_SERVER_ADDRESS``, ``RAY_ADDRESS``, ``http://127.0.0.1:8265``. Unlike
Ray's own client, an explicit ``--address`` wins over the environment.

Token authentication (Ray >= 2.52): Ray's client sends the cluster token when
``RAY_AUTH_MODE=token`` is set and finds the token in ``RAY_AUTH_TOKEN``, else the
file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. distmeta also
sends the token when ``RAY_AUTH_MODE`` is unset but ``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH`` is, and ``--token-file FILE`` sends the token in FILE
whatever the environment says.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence
from urllib.parse import urlsplit

from distmeta.errors import DistmetaError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
PROBE_TIMEOUT_S = 3.0
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
# What never travels in a job's working directory. "/distmeta/" keeps a source
# checkout from shadowing the distmeta shipped through py_modules.
WORKING_DIR_EXCLUDES = [
    "/.git/", "/.venv/", "/venv/", "/runs/", "/distmeta/", "/build/", "/dist/",
    "*.egg-info/", "__pycache__/", "*.pyc", ".pytest_cache/",
]
TUNNEL_HINT = ("start the cluster, or tunnel to its dashboard port "
               "(ray dashboard cluster/aws.yaml, or ssh -L 8265:localhost:8265 HEAD)")


# --------------------------------------------------------------------------- address


def resolve_address(address: Optional[str] = None) -> str:
    """The job server address the user asked for (not yet reachable-checked).

    ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``, else
    ``http://127.0.0.1:8265``. ``http(s)://`` addresses are returned as given (minus a
    trailing slash); others (``auto``, ``HOST:GCS_PORT``, ``ray://HOST:PORT``) are
    turned into the dashboard URL by Ray, which asks the cluster for it.
    """
    chosen = address
    if not chosen:
        for var in ADDRESS_ENV_VARS:
            if os.environ.get(var):
                chosen = os.environ[var]
                break
    chosen = (chosen or DEFAULT_ADDRESS).strip().rstrip("/")
    if chosen.startswith(("http://", "https://")):
        return chosen
    # Ray's translation of cluster addresses. It would let the environment win over
    # the address we pass, so hide the environment while it runs.
    host_port = _host_port(chosen)
    if host_port is not None:
        _probe(*host_port, what=f"the Ray cluster at {chosen}")
    from ray.dashboard.utils import get_address_for_submission_client

    try:
        with _without_env(ADDRESS_ENV_VARS):
            return get_address_for_submission_client(chosen).rstrip("/")
    except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError...
        raise DistmetaError(f"cannot find the job server of the Ray cluster at {chosen}: "
                            f"{_one_line(exc)}") from None


def _host_port(address: str):
    """(host, port) of ``[scheme://]host:port``; None when it carries no port."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        raise DistmetaError(f"address {address!r}: the port is not a number") from None
    if port is None:
        if parts.scheme in ("http", "https"):
            port = 443 if parts.scheme == "https" else 80
        else:
            return None
    return parts.hostname or "127.0.0.1", port


def _probe(host: str, port: int, what: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, with one line, when nothing listens at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        raise DistmetaError(f"cannot reach {what} ({host}:{port}: no answer in "
                            f"{timeout:g} s); {TUNNEL_HINT}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DistmetaError(f"cannot reach {what} ({host}:{port}: {reason.lower()}); "
                            f"{TUNNEL_HINT}") from None


@contextlib.contextmanager
def _without_env(names: Sequence[str]) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# --------------------------------------------------------------------------- client


def _token_headers(token_file: Optional[str]) -> Dict[str, str]:
    """An explicit Authorization header, when the user gave distmeta the token."""
    token = None
    if token_file:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise DistmetaError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise DistmetaError(f"--token-file {token_file}: the file is empty")
    elif os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        # Ray reads the token itself; it aborts the process on an unreadable
        # RAY_AUTH_TOKEN_PATH, so check that here and fail with one line instead.
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if path and not os.environ.get("RAY_AUTH_TOKEN"):
            try:
                if not Path(path).expanduser().read_text().strip():
                    raise DistmetaError(f"RAY_AUTH_TOKEN_PATH={path}: the file is empty")
            except OSError as exc:
                raise DistmetaError(f"RAY_AUTH_TOKEN_PATH={path}: {exc.strerror or exc}") from None
    elif "RAY_AUTH_MODE" not in os.environ:
        # Ray itself only sends a token when RAY_AUTH_MODE=token; a user who set the
        # token but not the mode still means it to be used.
        if os.environ.get("RAY_AUTH_TOKEN"):
            token = os.environ["RAY_AUTH_TOKEN"].strip()
        elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
            path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise DistmetaError(f"RAY_AUTH_TOKEN_PATH={path}: "
                                    f"{exc.strerror or exc}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: Optional[str] = None, token_file: Optional[str] = None,
            probe_timeout: float = PROBE_TIMEOUT_S):
    """A ``JobSubmissionClient`` for the resolved address, or a one-line DistmetaError.

    The TCP port is probed first (``probe_timeout`` seconds) so a dead or closed
    address fails in seconds instead of hanging in HTTP retries.
    """
    url = resolve_address(address)
    host_port = _host_port(url)
    if host_port is None:
        raise DistmetaError(f"address {url!r} names no port")
    _probe(*host_port, what=f"the Ray job server at {url}", timeout=probe_timeout)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[default] is a dependency
        raise DistmetaError(f"job submission needs ray[default]: {exc}") from None
    headers = _token_headers(token_file)
    with _client_errors(url), _without_env(ADDRESS_ENV_VARS):
        client = JobSubmissionClient(url, headers=headers or None)
    server = getattr(client, "_server_ray_version", None)
    import ray

    if server and server != ray.__version__:
        print(f"distmeta: warning: the cluster runs Ray {server}, this client Ray "
              f"{ray.__version__}", file=sys.stderr)
    return client


@contextlib.contextmanager
def _client_errors(url: str, job_id: Optional[str] = None) -> Iterator[None]:
    """Turn the job client's exceptions into one-line DistmetaErrors."""
    from ray.exceptions import AuthenticationError

    where = f"job {job_id} on {url}" if job_id else f"the Ray job server at {url}"
    try:
        yield
    except AuthenticationError as exc:
        text = str(exc)
        if "Authentication failed" in text or "403" in text:
            raise DistmetaError(
                f"{where} rejected the authentication token (HTTP 403): use the cluster's "
                "token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or --token-file)") from None
        raise DistmetaError(
            f"{where} requires an authentication token (HTTP 401, missing token): set "
            "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
            "or pass --token-file") from None
    except ConnectionError as exc:
        raise DistmetaError(f"cannot reach {where}: {_one_line(exc)}; {TUNNEL_HINT}") from None
    except DistmetaError:
        raise
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        raise DistmetaError(f"{where}: {_one_line(exc)}") from None
    except Exception as exc:  # requests/aiohttp errors have no common base we can import
        if type(exc).__module__.split(".")[0] in ("requests", "urllib3", "aiohttp"):
            raise DistmetaError(f"{where}: {_one_line(exc)}") from None
        raise


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."


# --------------------------------------------------------------------------- packaging


def project_root() -> Optional[Path]:
    """The source checkout the imported distmeta comes from, if it is one."""
    import distmeta

    root = Path(distmeta.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'^name\s*=\s*["\']distmeta["\']',
                                         pyproject.read_text(), re.M):
        return root
    return None


def _package_dir_mapping(root: Optional[Path]) -> Dict[str, str]:
    """pyproject's ``[tool.setuptools] package-dir`` (``{"distmeta.envs": "envs"}``)."""
    if root is not None:
        try:
            import tomllib

            data = tomllib.loads((root / "pyproject.toml").read_text())
            mapping = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
            if isinstance(mapping, dict):
                return {str(k): str(v) for k, v in mapping.items()}
        except Exception:  # py3.10 without tomllib, or a malformed file
            pass
    return {"distmeta": "distmeta", "distmeta.envs": "envs"}


def build_wheel(dest: Path, root: Optional[Path] = None) -> Path:
    """``pip wheel --no-deps`` of the distmeta source tree into ``dest``; the wheel path.

    The build runs on a copy of the sources, so nothing (``build/``, egg-info) is
    written into the user's checkout.
    """
    root = root or project_root()
    if root is None:
        raise DistmetaError("distmeta is not imported from a source tree: nothing to build "
                            "a wheel from (use --no-wheel)")
    src = dest / "src"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md",
                 "README.rst", "LICENSE", "LICENSE.txt"):
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    for rel in sorted(set(_package_dir_mapping(root).values()) | {"distmeta"}):
        if (root / rel).is_dir() and not (src / rel).exists():
            shutil.copytree(root / rel, src / rel, ignore=ignore)
    out = dest / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "--no-index", "--quiet", "--wheel-dir", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out.glob("distmeta-*.whl")) if out.is_dir() else []
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        raise DistmetaError(f"building the distmeta wheel failed: {tail[0]}")
    return wheels[0]


def stage_package(dest: Path, wheel: bool = True) -> Path:
    """A ``distmeta`` package directory under ``dest`` to ship through ``py_modules``.

    ``wheel=True`` (and a source tree): the package as a wheel built from the tree
    lays it out. Otherwise the imported package directory, with the subpackages the
    project maps from elsewhere (``distmeta.envs`` from ``envs/``) copied in.
    """
    import distmeta

    dest = Path(dest)
    target_root = dest / "py_modules"
    target = target_root / "distmeta"
    root = project_root()
    if wheel and root is not None:
        try:
            whl = build_wheel(dest / "build", root)
        except DistmetaError as exc:
            print(f"distmeta: warning: {exc}; shipping the package directory instead",
                  file=sys.stderr)
        else:
            with zipfile.ZipFile(whl) as zf:
                members = [m for m in zf.namelist() if m.startswith("distmeta/")]
                zf.extractall(target_root, members=members)
            return target
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(distmeta.__file__).resolve().parent, target, ignore=ignore)
    for name in _package_dir_mapping(root):
        parts = name.split(".")
        if len(parts) != 2 or parts[0] != "distmeta" or (target / parts[1]).exists():
            continue
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations:
            shutil.copytree(locations[0], target / parts[1], ignore=ignore)
    return target


# --------------------------------------------------------------------------- submit


def job_command(command: Sequence[str], resume: Optional[str] = None,
                cluster_address: bool = True) -> List[str]:
    """The distmeta arguments the job runs (``train ... --resume auto --address auto``).

    The command is checked with distmeta's own parser here, so a typo fails before
    anything is uploaded. ``train``/``tune`` without ``--address`` get
    ``--address auto``: a job's driver joins the cluster it runs on.
    """
    args = list(command)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise DistmetaError("no command to submit: distmeta submit [options] -- train "
                            "experiments/x.yaml ...")
    if args[0] == "distmeta":  # "-- distmeta train ..." reads naturally too
        args = args[1:]
    if resume is not None:
        if args[0] != "train":
            raise DistmetaError(f"--resume: only `train` resumes, not `{args[0]}`")
        if not _has_option(args, "--resume"):
            args += ["--resume", resume]
    _parse_job_args(args)
    if cluster_address and args[0] in ("train", "tune") and not _has_option(args, "--address"):
        if _parses(args + ["--address", "auto"]):
            args += ["--address", "auto"]
    return args


def _has_option(args: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def _parses(args: Sequence[str]) -> bool:
    try:
        _parse_job_args(args)
    except DistmetaError:
        return False
    return True


def _parse_job_args(args: Sequence[str]) -> None:
    from distmeta.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(list(args))
    except SystemExit as exc:
        if exc.code in (0, None):
            return
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        reason = lines[-1] if lines else "does not parse"
        raise DistmetaError(f"job command `distmeta {shlex.join(args)}`: {reason}") from None


def entrypoint_for(args: Sequence[str], python: str = "python") -> str:
    """The shell command the job runs: ``python -m distmeta.cli ARGS``.

    ``python -m`` (not the ``distmeta`` script) so that the py_modules copy is what
    runs; the script only exists where distmeta was pip-installed.
    """
    return f"{python} -m distmeta.cli {shlex.join(list(args))}"


def _default_working_dir(args: Sequence[str]) -> Optional[str]:
    """The current directory when the command names files relative to it."""
    cwd = Path.cwd()
    for a in args:
        value = a.split("=", 1)[1] if a.startswith("--") and "=" in a else a
        if value and not value.startswith("-") and not os.path.isabs(value) \
                and (cwd / value).is_file():
            return str(cwd)
    return None


def submit(command: Sequence[str], *, address: Optional[str] = None,
           token_file: Optional[str] = None, working_dir: Optional[str] = None,
           auto_working_dir: bool = True, wheel: bool = True,
           resume: Optional[str] = None, env: Optional[Dict[str, str]] = None,
           submission_id: Optional[str] = None,
           entrypoint_num_cpus: Optional[float] = None,
           entrypoint_num_gpus: Optional[float] = None,
           python: str = "python", client=None) -> str:
    """Submit ``distmeta COMMAND`` as a Ray job; returns the submission id.

    The runtime environment ships this distmeta (``py_modules``) and, when given or
    when the command names files under the current directory, a working directory
    for experiment files.
    """
    args = job_command(command, resume=resume)
    if args[0] == "train" and not _out_is_absolute(args):
        print("distmeta: warning: the run folder will be inside the job's temporary working "
              "directory on the cluster; pass an absolute --out on storage the cluster keeps"
              + (" (--resume auto can only find checkpoints there)" if resume else ""),
              file=sys.stderr)
    if working_dir is None and auto_working_dir:
        working_dir = _default_working_dir(args)
    if working_dir is not None and not Path(working_dir).is_dir():
        raise DistmetaError(f"--working-dir {working_dir}: not a directory")
    client = client or connect(address, token_file)
    url = getattr(client, "_address", address or "")
    import distmeta

    with tempfile.TemporaryDirectory(prefix="distmeta_submit_") as tmp:
        package = stage_package(Path(tmp), wheel=wheel)
        runtime_env: Dict[str, object] = {"py_modules": [str(package)]}
        if working_dir is None:
            # Always give the job a working directory: without one it runs in the
            # raylet's directory, which may be a distmeta checkout that would shadow
            # the shipped package (python puts the current directory first).
            working_dir = Path(tmp) / "working_dir"
            working_dir.mkdir()
            (working_dir / ".distmeta_job").write_text("empty working directory\n")
        runtime_env["working_dir"] = str(Path(working_dir).resolve())
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
        if env:
            runtime_env["env_vars"] = dict(env)
        kwargs = {}
        if entrypoint_num_cpus is not None:
            kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
        if entrypoint_num_gpus is not None:
            kwargs["entrypoint_num_gpus"] = entrypoint_num_gpus
        with _client_errors(url):
            return client.submit_job(
                entrypoint=entrypoint_for(args, python=python),
                runtime_env=runtime_env,
                submission_id=submission_id,
                metadata={"distmeta_version": distmeta.__version__,
                          "distmeta_command": shlex.join(args)[:1000]},
                **kwargs)


def _out_is_absolute(args: Sequence[str]) -> bool:
    for i, a in enumerate(args):
        if a == "--out" and i + 1 < len(args):
            return os.path.isabs(args[i + 1])
        if a.startswith("--out="):
            return os.path.isabs(a.split("=", 1)[1])
    return False


# --------------------------------------------------------------------------- follow


def wait_for_job(client, job_id: str, timeout: Optional[float] = None,
                 poll: float = 0.5) -> str:
    """Block until the job is terminal; its status as a string."""
    url = getattr(client, "_address", "")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _client_errors(url, job_id):
            status = str(client.get_job_status(job_id))
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
    url = getattr(client, "_address", "")
    printed = 0

    async def _tail() -> None:
        nonlocal printed
        async for chunk in client.tail_job_logs(job_id):
            stream.write(chunk)
            stream.flush()
            printed += len(chunk)

    try:
        asyncio.run(_tail())
    except KeyboardInterrupt:
        raise
    except Exception:
        while True:  # fall back to polling
            with _client_errors(url, job_id):
                status = str(client.get_job_status(job_id))
                logs = client.get_job_logs(job_id) or ""
            if len(logs) > printed:
                stream.write(logs[printed:])
                stream.flush()
                printed = len(logs)
            if status in TERMINAL_STATUSES:
                return status
            time.sleep(1.0)
    return wait_for_job(client, job_id)


def _report_end(client, job_id: str, status: str) -> int:
    if status == "SUCCEEDED":
        print(f"distmeta: job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    message = ""
    with contextlib.suppress(Exception):
        message = client.get_job_info(job_id).message or ""
    print(f"distmeta: error: job {job_id} {status}" + (f": {_one_line(message)}" if message
                                                        else ""), file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- commands


def _cmd_submit(args: argparse.Namespace) -> int:
    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DistmetaError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    job_command(args.job_command, resume=args.resume)  # a bad command fails before connecting
    client = connect(args.address, args.token_file)
    job_id = submit(args.job_command, address=args.address, token_file=args.token_file,
                    working_dir=args.working_dir, auto_working_dir=not args.no_working_dir,
                    wheel=not args.no_wheel, resume=args.resume, env=env or None,
                    submission_id=args.submission_id,
                    entrypoint_num_cpus=args.entrypoint_num_cpus,
                    entrypoint_num_gpus=args.entrypoint_num_gpus,
                    python=args.python, client=client)
    print(job_id, flush=True)
    if not args.follow:
        print(f"distmeta: follow with: distmeta jobs logs {job_id} --follow", file=sys.stderr)
        return 0
    return _follow_and_report(client, job_id)


def _follow_and_report(client, job_id: str) -> int:
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\ndistmeta: stopped following; job {job_id} keeps running "
              f"(distmeta jobs stop {job_id})", file=sys.stderr)
        return 130
    return _report_end(client, job_id, status)


def _fmt_time(ms: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _cmd_list(args: argparse.Namespace) -> int:
    client = connect(args.address, args.token_file)
    with _client_errors(client._address):
        jobs = client.list_jobs()
    jobs = sorted(jobs, key=lambda j: j.start_time or 0)
    rows = [("ID", "STATUS", "START", "ENTRYPOINT")]
    for j in jobs:
        entry = j.entrypoint or ""
        rows.append((j.submission_id or j.job_id or "-", str(j.status),
                     _fmt_time(j.start_time), entry if len(entry) <= 70 else entry[:67] + "..."))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    client = connect(args.address, args.token_file)
    with _client_errors(client._address, args.job_id):
        info = client.get_job_info(args.job_id)
    print(f"{args.job_id}: {info.status}")
    if info.message:
        print(f"  message: {_one_line(info.message)}")
    print(f"  entrypoint: {info.entrypoint}")
    print(f"  start: {_fmt_time(info.start_time)}  end: {_fmt_time(info.end_time)}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    client = connect(args.address, args.token_file)
    if args.follow:
        with _client_errors(client._address, args.job_id):
            client.get_job_status(args.job_id)  # a missing job fails here, in one line
        return _follow_and_report(client, args.job_id)
    with _client_errors(client._address, args.job_id):
        sys.stdout.write(client.get_job_logs(args.job_id) or "")
    sys.stdout.flush()
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    client = connect(args.address, args.token_file)
    with _client_errors(client._address, args.job_id):
        stopped = client.stop_job(args.job_id)
    if not stopped:
        print(f"{args.job_id}: not running (already finished)")
        return 0
    print(f"{args.job_id}: stop requested")
    if args.wait:
        print(f"{args.job_id}: {wait_for_job(client, args.job_id)}")
    return 0


def _connection_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--address", default=None,
                   help="job server, e.g. http://127.0.0.1:8265 (default: "
                        "$RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, http://127.0.0.1:8265)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the cluster's token (default: Ray's own lookup: "
                        "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                        "or ~/.ray/auth_token)")
    return p


def register(subparsers) -> None:
    """Add ``submit`` and ``jobs {list,status,logs,stop}`` to distmeta's CLI."""
    common = _connection_options()
    p = subparsers.add_parser(
        "submit", parents=[common],
        help="run a distmeta command as a job on a Ray cluster",
        description="Submit `distmeta COMMAND...` as a Ray job. The job runs this "
                    "distmeta (shipped with the job), in a working directory that "
                    "carries the experiment files.",
        epilog="example: distmeta submit --follow -- train experiments/sinusoid_maml.yaml "
               "--steps 100 --out /shared/runs/sin")
    p.add_argument("--follow", action="store_true",
                   help="stream the job's logs until it ends; exit non-zero if it fails")
    p.add_argument("--working-dir", default=None, metavar="DIR",
                   help="directory uploaded as the job's working directory (experiment "
                        "files); default: the current directory when the command names "
                        "files in it")
    p.add_argument("--no-working-dir", action="store_true",
                   help="upload no working directory (the job gets an empty one)")
    p.add_argument("--no-wheel", action="store_true",
                   help="ship the imported distmeta package directory instead of the "
                        "contents of a wheel built from the source tree")
    p.add_argument("--resume", default=None, choices=["auto"],
                   help="pass `--resume auto` to `train`, so a retried job continues from "
                        "the run folder's latest checkpoint")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray's)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None,
                   help="CPUs reserved for the job's driver")
    p.add_argument("--entrypoint-num-gpus", type=float, default=None,
                   help="GPUs reserved for the job's driver")
    p.add_argument("--python", default="python",
                   help="python executable on the cluster (default: python)")
    p.add_argument("job_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the distmeta command to run, e.g. -- train experiments/x.yaml")
    p.set_defaults(func=_cmd_submit)

    jobs = subparsers.add_parser("jobs", help="list, inspect, follow and stop Ray jobs",
                                 description="Inspect jobs on a Ray cluster.")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    jl = jsub.add_parser("list", parents=[common], help="list the cluster's jobs")
    jl.set_defaults(func=_cmd_list)
    js = jsub.add_parser("status", parents=[common], help="status of one job")
    js.add_argument("job_id")
    js.set_defaults(func=_cmd_status)
    jg = jsub.add_parser("logs", parents=[common], help="logs of one job")
    jg.add_argument("job_id")
    jg.add_argument("--follow", action="store_true",
                    help="stream until the job ends; exit non-zero if it failed")
    jg.set_defaults(func=_cmd_logs)
    jt = jsub.add_parser("stop", parents=[common], help="stop a running job")
    jt.add_argument("job_id")
    jt.add_argument("--wait", action="store_true", help="wait until it has stopped")
    jt.set_defaults(func=_cmd_stop)

    def _jobs_help(_args: argparse.Namespace) -> int:
        jobs.print_help()
        return 2

    jobs.set_defaults(func=_jobs_help)
