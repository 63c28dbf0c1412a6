"""What a submitted job is: the distmeta command it runs and its runtime environment.

Contract (pure functions: nothing is contacted, nothing uploaded):

- :func:`job_command` checks ``distmeta COMMAND ...`` with distmeta's own parser (a
  typo fails before anything is uploaded) and adds ``--address auto`` to ``train`` and
  ``tune`` (a job's driver joins the cluster it runs on) and, with ``resume``,
  ``--resume auto``. :func:`entrypoint_for` is the shell command the job runs.
- :func:`user_runtime_env` is the runtime environment the user asked for:
  ``--runtime-env FILE`` (YAML or JSON), then ``--pip PKG`` appended to its ``pip``
  list and ``--env KEY=VALUE`` over its ``env_vars``. A variable that looks like a
  credential is refused: Ray shows a job's runtime_env to whoever can read job info,
  and every node needs its own access anyway (instance roles, the node's environment).
- :func:`job_runtime_env` merges it with what distmeta adds: this distmeta in
  ``py_modules`` (after the user's), a working directory (``--working-dir`` wins over
  the file's) and the working-directory excludes.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from distmeta.errors import DistmetaError

# What never travels in a job's working directory. "/distmeta/" keeps a source
# checkout from shadowing the distmeta shipped through py_modules.
WORKING_DIR_EXCLUDES = [
    "/.git/", "/.venv/", "/venv/", "/runs/", "/distmeta/", "/build/", "/dist/",
    "*.egg-info/", "__pycache__/", "*.pyc", ".pytest_cache/",
]
CREDENTIAL_NAME = re.compile(
    r"^(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|GOOGLE_APPLICATION_CREDENTIALS)$"
    r"|(^|_)TOKEN$|(^|_)SECRET|PASSWORD", re.I)


# --------------------------------------------------------------------------- command


def job_command(command: Sequence[str], resume: Optional[str] = None,
                cluster_address: bool = True) -> List[str]:
    """The distmeta arguments the job runs (``train ... --resume auto --address auto``)."""
    args = list(command)
    if args and args[0] == "--":
        args = args[1:]
    if args and args[0] == "distmeta":  # "-- distmeta train ..." reads naturally too
        args = args[1:]
    if not args:
        raise DistmetaError("no command to submit: distmeta submit [options] -- train "
                            "experiments/x.yaml ...")
    if resume is not None:
        if args[0] != "train":
            raise DistmetaError(f"--resume: only `train` resumes, not `{args[0]}`")
        if not _has_option(args, "--resume"):
            args += ["--resume", resume]
    _parse_job_args(args)
    if cluster_address and args[0] in ("train", "tune") and not _has_option(args, "--address"):
        with contextlib.suppress(DistmetaError):
            _parse_job_args(args + ["--address", "auto"])
            args += ["--address", "auto"]
    return args


def _has_option(args: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


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
    """``python -m distmeta.cli ARGS``: ``-m`` (not the ``distmeta`` script) so that the
    py_modules copy is what runs; the script only exists where distmeta was installed."""
    return f"{python} -m distmeta.cli {shlex.join(list(args))}"


def default_working_dir(args: Sequence[str]) -> Optional[str]:
    """The current directory when the command names files relative to it."""
    cwd = Path.cwd()
    for a in args:
        value = a.split("=", 1)[1] if a.startswith("--") and "=" in a else a
        if value and not value.startswith("-") and not os.path.isabs(value) \
                and (cwd / value).is_file():
            return str(cwd)
    return None


def relative_out_warning(args: Sequence[str], resume: Optional[str]) -> Optional[str]:
    """A warning when ``train`` writes its run folder into the temporary working dir."""
    if not args or args[0] != "train":
        return None
    for i, a in enumerate(args):
        value = args[i + 1] if a == "--out" and i + 1 < len(args) else \
            a.split("=", 1)[1] if a.startswith("--out=") else None
        if value is not None and os.path.isabs(value):
            return None
    return ("the run folder will be inside the job's temporary working directory on the "
            "cluster; pass an absolute --out on storage the cluster keeps"
            + (" (--resume auto can only find checkpoints there)" if resume else ""))


# --------------------------------------------------------------------------- runtime env


def parse_env_pairs(items: Sequence[str]) -> Dict[str, str]:
    """``["KEY=VALUE", ...]`` as a dict; a malformed item is a one-line error."""
    env: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DistmetaError(f"--env {item!r}: expected KEY=VALUE")
        env[key.strip()] = value
    return env


def refuse_credentials(env_vars: Dict[str, Any], source: str = "--env") -> None:
    """Fail, in one line, when a variable's name looks like a credential."""
    for key in env_vars:
        if CREDENTIAL_NAME.search(key):
            raise DistmetaError(
                f"{source} {key}: looks like a credential and is not forwarded: a job's "
                "runtime_env is shown to whoever can read job info (ray job status, the "
                "dashboard), and every node needs its own access anyway; give the nodes "
                "access themselves (instance roles, or the node's environment)")


def load_runtime_env(path: str) -> Dict[str, Any]:
    """A runtime_env mapping from a YAML or JSON file (JSON is YAML)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).expanduser().read_text())
    except OSError as exc:
        raise DistmetaError(f"--runtime-env {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DistmetaError(f"--runtime-env {path}: not YAML or JSON "
                            f"({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistmetaError(f"--runtime-env {path}: expected a mapping "
                            f"(pip:, env_vars:, ...), got {type(data).__name__}")
    return data


def _add_pip(runtime_env: Dict[str, Any], packages: Sequence[str]) -> None:
    pip = runtime_env.get("pip")
    if pip is None:
        runtime_env["pip"] = list(packages)
    elif isinstance(pip, list):
        runtime_env["pip"] = pip + list(packages)
    elif isinstance(pip, dict) and isinstance(pip.get("packages", []), list):
        runtime_env["pip"] = {**pip, "packages": list(pip.get("packages", [])) + list(packages)}
    else:
        raise DistmetaError("--pip: the runtime_env's pip is a requirements file "
                            f"({pip!r}); list the packages there instead")


def user_runtime_env(file: Optional[str] = None, pip: Sequence[str] = (),
                     env: Sequence[str] = ()) -> Dict[str, Any]:
    """The runtime_env the user asked for: ``--runtime-env``, ``--pip``, ``--env``."""
    runtime_env = load_runtime_env(file) if file else {}
    file_env = runtime_env.get("env_vars") or {}
    if not isinstance(file_env, dict):
        raise DistmetaError(f"--runtime-env {file}: env_vars must be a mapping")
    refuse_credentials(file_env, source=f"--runtime-env {file}: env_vars")
    flag_env = parse_env_pairs(env)
    refuse_credentials(flag_env)
    if file_env or flag_env:
        runtime_env["env_vars"] = {**{k: str(v) for k, v in file_env.items()}, **flag_env}
    if pip:
        _add_pip(runtime_env, pip)
    return runtime_env


def job_runtime_env(user: Dict[str, Any], package: Path,
                    working_dir: Optional[str]) -> Dict[str, Any]:
    """``user`` plus this distmeta (``py_modules``), the working dir and its excludes.

    ``working_dir`` (``--working-dir``, or distmeta's default) wins over the user's;
    ``None`` keeps the user's.
    """
    runtime_env = copy.deepcopy(user)
    runtime_env["py_modules"] = list(runtime_env.get("py_modules") or []) + [str(package)]
    if working_dir is not None:
        runtime_env["working_dir"] = str(Path(working_dir).resolve())
    excludes = list(runtime_env.get("excludes") or [])
    runtime_env["excludes"] = excludes + [e for e in WORKING_DIR_EXCLUDES if e not in excludes]
    return runtime_env
