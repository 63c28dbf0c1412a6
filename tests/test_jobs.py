"""``distmeta submit`` / ``distmeta jobs`` against a real, token-protected local Ray head.

The head runs in its own session (``start_new_session``) with private ports, a
short private ``--temp-dir`` and its own token file, so the tests depend on no
other Ray on the machine and stop only what they started (by session id, never
``ray stop``).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from proc_utils import session_pids

from distmeta import jobs
from distmeta.errors import DistmetaError

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SINUSOID = "experiments/sinusoid_maml.yaml"
# A short sinusoid run: 20 meta-steps and a small final evaluation.
SHORT_RUN = ["--steps", "20", "--set", "eval.final_episodes=20", "--set", "eval.episodes=10",
             "--set", "log_every=10", "--no-progress"]
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound then released)."""
    return free_port()




def kill_session(sid: int, grace: float = 4.0) -> None:
    """SIGTERM every process of the session, then SIGKILL what is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_pids(sid):
            return


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in AUTH_VARS + ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


class Head:
    def __init__(self, url, token_file, tmp, proc):
        self.url, self.token_file, self.tmp, self.proc = url, token_file, tmp, proc

    def env(self, **extra):
        return clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file), **extra)


def run_cli(args, env, cwd=REPO, timeout=240):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "distmeta.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    proc.elapsed = time.monotonic() - t0
    return proc


@pytest.fixture(scope="module")
def head():
    tmp = Path(tempfile.mkdtemp(prefix="dm_", dir="/tmp"))  # short: Ray's socket paths
    token_file = tmp / "token"
    token_file.write_text(secrets.token_hex(32))  # Ray's own format (token_hex(32))
    token_file.chmod(0o600)
    dashboard_port = free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block",
           "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dashboard_port),
           "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port()),
           "--temp-dir", str(tmp / "ray"), "--num-cpus", "2",
           "--object-store-memory", str(200 * 1024 ** 2), "--disable-usage-stats"]
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    request = urllib.request.Request(f"{url}/api/jobs/",
                                     headers={"Authorization": f"Bearer {token_file.read_text()}"})
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}: "
                            f"{(tmp / 'head.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the job server did not come up: {(tmp / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield Head(url, token_file, tmp, proc)
    finally:
        kill_session(proc.pid)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def job_id_of(proc) -> str:
    match = re.search(r"^(raysubmit_\w+)$", proc.stdout, re.M)
    assert match, (proc.stdout, proc.stderr)
    return match.group(1)


# --------------------------------------------------------------------------- no cluster


def test_address_resolution_order(monkeypatch):
    for var in jobs.ADDRESS_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert jobs.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://a:1")
    assert jobs.resolve_address() == "http://a:1"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://b:2/")
    assert jobs.resolve_address() == "http://b:2"
    assert jobs.resolve_address("http://c:3") == "http://c:3"  # the flag wins


def test_job_command_adds_resume_and_cluster_address():
    args = jobs.job_command(["--", "train", SINUSOID, "--steps", "5"], resume="auto")
    assert args[:4] == ["train", SINUSOID, "--steps", "5"]
    assert args[args.index("--resume") + 1] == "auto"
    assert args[args.index("--address") + 1] == "auto"
    assert jobs.job_command(["train", SINUSOID, "--address", "10.0.0.1:6379"]).count("--address") == 1
    assert jobs.entrypoint_for(["train", "a b.yaml"]) == "python -m distmeta.cli train 'a b.yaml'"
    with pytest.raises(DistmetaError, match="only `train` resumes"):
        jobs.job_command(["validate", SINUSOID], resume="auto")
    with pytest.raises(DistmetaError, match="invalid choice"):
        jobs.job_command(["trian", SINUSOID])
    with pytest.raises(DistmetaError, match="no command"):
        jobs.job_command(["--"])


@pytest.mark.parametrize("wheel", [True, False])
def test_stage_package_ships_distmeta_with_envs(tmp_path, wheel):
    pkg = jobs.stage_package(tmp_path, wheel=wheel)
    assert pkg.name == "distmeta" and (pkg / "__init__.py").is_file()
    assert (pkg / "cli.py").is_file() and (pkg / "jobs.py").is_file()
    assert (pkg / "envs" / "__init__.py").is_file()  # mapped from envs/ by package-dir
    assert not list(pkg.rglob("__pycache__"))


def test_unreachable_address_fails_fast_in_process():
    t0 = time.monotonic()
    with pytest.raises(DistmetaError, match="cannot reach the Ray job server"):
        jobs.connect(f"http://127.0.0.1:{closed_port()}")
    assert time.monotonic() - t0 < 5


def test_unreachable_address_one_line_error():
    proc = run_cli(["jobs", "list", "--address", f"http://127.0.0.1:{closed_port()}"],
                   env=clean_env(), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distmeta: error: cannot reach"), proc.stderr
    assert proc.elapsed < 20  # interpreter start + imports on a loaded 2-core box; the probe is 3 s


# --------------------------------------------------------------------------- real head
# Subprocesses where the process environment is the point (RAY_AUTH_MODE +
# RAY_AUTH_TOKEN_PATH as users set them, a clean environment without a token);
# otherwise the CLI runs in-process with --token-file, which sends the token
# explicitly whatever Ray's per-process auth state is.


def cli(capsys, head, *args):
    """``distmeta ARGS --address URL --token-file FILE`` in-process: (rc, stdout, stderr)."""
    from distmeta.cli import main

    args = list(args)
    cut = args.index("--") if "--" in args else len(args)  # options go before `-- COMMAND`
    args[cut:cut] = ["--address", head.url, "--token-file", str(head.token_file)]
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.ray
def test_submit_follow_sinusoid_succeeds(head, tmp_path, capsys):
    """A sinusoid `distmeta train` job runs to SUCCEEDED with its metrics in the logs,
    and imports the shipped distmeta (with distmeta.envs), not the source checkout."""
    out = tmp_path / "run"
    # --python prefixes the entrypoint: here a probe that prints where distmeta comes from.
    probe = ("python -c 'import distmeta, distmeta.envs; "
             "print(\"DM_FILE\", distmeta.__file__, distmeta.envs.__file__)' && python")
    proc = run_cli(["submit", "--address", head.url, "--follow", "--python", probe, "--",
                    "train", SINUSOID, *SHORT_RUN, "--out", str(out)], env=head.env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = job_id_of(proc)
    assert "step 20/20" in proc.stdout and "final split=" in proc.stdout
    assert (out / "results.json").is_file()
    _, pkg_file, envs_file = next(ln for ln in proc.stdout.splitlines()
                                  if ln.startswith("DM_FILE")).split()
    assert "runtime_resources" in pkg_file and not pkg_file.startswith(str(REPO))
    assert Path(envs_file).parent.parent == Path(pkg_file).parent

    rc, logs, _ = cli(capsys, head, "jobs", "logs", job)
    assert rc == 0 and "step 20/20" in logs
    assert "--address auto" in logs  # the job's driver joins the cluster it runs on
    rc, status, _ = cli(capsys, head, "jobs", "status", job)
    assert f"{job}: SUCCEEDED" in status
    rc, listing, _ = cli(capsys, head, "jobs", "list")
    assert re.search(rf"{job}\s+SUCCEEDED", listing), listing


@pytest.mark.ray
def test_bad_config_job_fails_with_validation_message(head, tmp_path, capsys):
    rc, out, err = cli(capsys, head, "submit", "--no-wheel", "--",
                       "train", SINUSOID, "--set", "optim.lr=-1", "--out", str(tmp_path / "bad"))
    assert rc == 0, err
    job = out.strip().splitlines()[0]
    assert job.startswith("raysubmit_")
    rc, logs, err = cli(capsys, head, "jobs", "logs", job, "--follow")
    assert rc == 1, logs + err
    assert re.search(r"^distmeta: error: optim\.lr: .+", logs, re.M), logs
    assert f"job {job} FAILED" in err


@pytest.mark.ray
def test_stop_a_running_job(head, tmp_path, capsys):
    rc, out, err = cli(capsys, head, "submit", "--no-wheel", "--",
                       "train", SINUSOID, "--steps", "100000", "--no-progress",
                       "--out", str(tmp_path / "long"))
    assert rc == 0, err
    job = out.strip().splitlines()[0]
    rc, out, err = cli(capsys, head, "jobs", "stop", job, "--wait")
    assert rc == 0, err
    assert f"{job}: STOPPED" in out


@pytest.mark.ray
def test_missing_token_is_a_clear_error(head, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = run_cli(["jobs", "list", "--address", head.url], env=clean_env(HOME=str(home)))
    assert proc.returncode == 2
    assert "requires an authentication token" in one_line(proc.stderr)


@pytest.mark.ray
def test_wrong_or_unreadable_token_is_a_clear_error(head, tmp_path, monkeypatch):
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    with pytest.raises(DistmetaError, match="rejected the authentication token") as exc:
        jobs.connect(head.url, token_file=str(wrong))
    assert "\n" not in str(exc.value)
    with pytest.raises(DistmetaError, match="--token-file"):
        jobs.connect(head.url, token_file=str(tmp_path / "missing"))
    # Ray would abort the process on an unreadable RAY_AUTH_TOKEN_PATH; distmeta says why
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(DistmetaError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.connect(head.url)


@pytest.mark.ray
def test_unknown_job_is_one_line(head, capsys):
    rc, _, err = cli(capsys, head, "jobs", "status", "raysubmit_doesnotexist")
    assert rc == 2
    assert "raysubmit_doesnotexist" in one_line(err)
