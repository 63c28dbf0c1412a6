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
# The last training log line, in the trainer's old ("step 20/20") or new ("iter 20 ") format.
LAST_STEP = re.compile(r"step 20/20|^iter 20 ", re.M)
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
    assert jobs.resolve_address("10.0.0.1:6379") == "10.0.0.1:6379"  # Ray finds its job server
    with pytest.raises(DistmetaError, match="embedded Ray .* jobs need a job server"):
        jobs.resolve_address("local")


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
    assert (pkg / "cli.py").is_file() and (pkg / "jobs" / "cli.py").is_file()
    assert (pkg / "envs" / "__init__.py").is_file()  # mapped from envs/ by package-dir
    assert not list(pkg.rglob("__pycache__"))


def test_wheel_holds_every_subpackage(tmp_path):
    """The wheel (what ``pip install`` installs, and what a job gets) lacks no
    subpackage of the source tree: pyproject's explicit ``packages`` list is complete."""
    import zipfile

    from distmeta.jobs.package import missing_subpackages

    with zipfile.ZipFile(jobs.build_wheel(tmp_path)) as zf:
        names = zf.namelist()
    assert missing_subpackages(names) == []
    assert "distmeta/jobs/cli.py" in names and "distmeta/envs/__init__.py" in names


def test_submit_options_parse():
    """``submit`` follows by default; ``--follow`` is a no-op alias, ``--no-wait`` returns."""
    from distmeta.cli import build_parser

    parse = build_parser().parse_args
    tail = ["--", "train", SINUSOID]
    assert parse(["submit", *tail]).no_wait is False
    assert parse(["submit", "--follow", *tail]).no_wait is False
    args = parse(["submit", "--no-wait", "--pip", "tqdm", "--pip", "rich==13.7",
                  "--env", "A=1", "--env", "B=x=y", "--runtime-env", "env.yaml", *tail])
    assert args.no_wait and args.pip == ["tqdm", "rich==13.7"] and args.env == ["A=1", "B=x=y"]
    assert args.runtime_env == "env.yaml" and args.job_command == tail
    assert parse(["jobs", "delete", "raysubmit_x"]).job_id == "raysubmit_x"


def test_pip_and_env_flags_build_the_runtime_env(tmp_path):
    assert jobs.user_runtime_env() == {}
    assert jobs.user_runtime_env(pip=["tqdm", "rich==13.7"], env=["A=1", "B=x=y", "C="]) == {
        "pip": ["tqdm", "rich==13.7"], "env_vars": {"A": "1", "B": "x=y", "C": ""}}
    with pytest.raises(DistmetaError, match=r"--env 'NOVALUE': expected KEY=VALUE"):
        jobs.user_runtime_env(env=["NOVALUE"])
    with pytest.raises(DistmetaError, match="expected KEY=VALUE"):
        jobs.user_runtime_env(env=["=1"])


def test_runtime_env_file_is_merged_with_flags_and_distmeta(tmp_path):
    yaml_file = tmp_path / "env.yaml"
    yaml_file.write_text("pip: [tqdm]\nenv_vars: {A: 1, B: from_file}\n"
                         "working_dir: s3://bucket/wd.zip\nexcludes: ['*.ckpt']\n"
                         "py_modules: [s3://bucket/mod.zip]\n")
    user = jobs.user_runtime_env(str(yaml_file), pip=["rich"], env=["B=from_flag"])
    assert user["pip"] == ["tqdm", "rich"]
    assert user["env_vars"] == {"A": "1", "B": "from_flag"}  # the flag wins, values are strings
    json_file = tmp_path / "env.json"
    json_file.write_text('{"pip": {"packages": ["tqdm"], "pip_check": false}}')
    assert jobs.user_runtime_env(str(json_file), pip=["rich"])["pip"] == {
        "packages": ["tqdm", "rich"], "pip_check": False}

    merged = jobs.job_runtime_env(user, tmp_path / "distmeta", None)
    assert merged["py_modules"] == ["s3://bucket/mod.zip", str(tmp_path / "distmeta")]
    assert merged["working_dir"] == "s3://bucket/wd.zip"  # the file's, when no --working-dir
    assert merged["excludes"][0] == "*.ckpt" and "/distmeta/" in merged["excludes"]
    assert user["py_modules"] == ["s3://bucket/mod.zip"]  # the user's dict is not changed
    merged = jobs.job_runtime_env(user, tmp_path / "distmeta", str(tmp_path))
    assert merged["working_dir"] == str(tmp_path)  # --working-dir wins


@pytest.mark.parametrize("content, match", [
    (None, "No such file"), ("[1, 2]", "expected a mapping"), ("pip: [a\n  b: {", "not YAML or JSON"),
    ("env_vars: [A]", "env_vars must be a mapping"), ("pip: requirements.txt", "requirements file"),
])
def test_runtime_env_file_errors_are_one_line(tmp_path, content, match):
    path = tmp_path / "env.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DistmetaError, match=match) as exc:
        jobs.user_runtime_env(str(path), pip=["rich"])
    assert "\n" not in str(exc.value) and str(exc.value).startswith(("--runtime-env", "--pip"))


@pytest.mark.parametrize("key", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN",
                                 "RAY_AUTH_TOKEN", "MY_SECRET_KEY", "DB_PASSWORD",
                                 "GOOGLE_APPLICATION_CREDENTIALS", "wandb_api_token"])
def test_credential_env_is_refused(tmp_path, key):
    with pytest.raises(DistmetaError) as exc:
        jobs.user_runtime_env(env=[f"{key}=x"])
    line = str(exc.value)
    assert "\n" not in line and line.startswith(f"--env {key}: looks like a credential")
    assert "job info" in line and "instance roles" in line
    path = tmp_path / "env.yaml"
    path.write_text(f"env_vars: {{{key}: x}}\n")
    with pytest.raises(DistmetaError, match=f"env_vars {key}: looks like a credential"):
        jobs.user_runtime_env(str(path))


def test_harmless_env_names_pass():
    names = ["TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "AWS_REGION", "AWS_ACCESS_KEY_ID_FILE_X",
             "MAX_TOKENS"]
    assert set(jobs.user_runtime_env(env=[f"{n}=1" for n in names])["env_vars"]) == set(names)


def test_unreachable_address_fails_fast_in_process():
    t0 = time.monotonic()
    with pytest.raises(DistmetaError, match="cannot reach the Ray job server"):
        jobs.job_client(f"http://127.0.0.1:{closed_port()}")
    assert time.monotonic() - t0 < 5


def test_unreachable_address_one_line_error():
    proc = run_cli(["jobs", "list", "--address", f"http://127.0.0.1:{closed_port()}"],
                   env=clean_env(), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distmeta: error: cannot reach"), proc.stderr
    assert proc.elapsed < 20  # interpreter start + imports on a loaded 2-core box; the probe is 3 s


def test_malformed_address_is_one_line(capsys):
    from distmeta.cli import main

    for argv in (["jobs", "list", "--address", "http://[::1"],
                 ["submit", "--address", "http://[::1", "--", "validate", SINUSOID]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert one_line(err) == "distmeta: error: address 'http://[::1' is malformed (Invalid IPv6 URL)"


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
def test_submit_follows_by_default_with_runtime_env(head, tmp_path, capsys):
    """A sinusoid `distmeta train` job runs to SUCCEEDED and `submit` follows it without
    being asked: its logs (with the metrics) are printed and its exit status returned.
    The job imports the shipped distmeta (with distmeta.envs), not the source checkout,
    and sees the variables of --runtime-env FILE and --env."""
    out = tmp_path / "run"
    env_file = tmp_path / "runtime_env.yaml"
    env_file.write_text("env_vars:\n  DM_FROM_FILE: file-value\n")
    # --python prefixes the entrypoint: here a probe that prints where distmeta comes from.
    probe = ("python -c 'import os, distmeta, distmeta.envs; "
             "print(\"DM_FILE\", distmeta.__file__, distmeta.envs.__file__); "
             "print(\"DM_ENV\", os.environ[\"DM_FROM_FILE\"], os.environ[\"DM_FROM_FLAG\"])' && python")
    proc = run_cli(["submit", "--address", head.url, "--runtime-env", str(env_file),
                    "--env", "DM_FROM_FLAG=flag-value", "--python", probe, "--",
                    "train", SINUSOID, *SHORT_RUN, "--out", str(out)], env=head.env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = job_id_of(proc)
    assert LAST_STEP.search(proc.stdout) and f"run folder: {out}" in proc.stdout, proc.stdout
    assert f"job {job} SUCCEEDED" in proc.stderr
    assert "DM_ENV file-value flag-value" in proc.stdout
    assert (out / "results.json").is_file()
    _, pkg_file, envs_file = next(ln for ln in proc.stdout.splitlines()
                                  if ln.startswith("DM_FILE")).split()
    assert "runtime_resources" in pkg_file and not pkg_file.startswith(str(REPO))
    assert Path(envs_file).parent.parent == Path(pkg_file).parent

    rc, logs, _ = cli(capsys, head, "jobs", "logs", job)
    assert rc == 0 and LAST_STEP.search(logs)
    assert "--address auto" in logs  # the job's driver joins the cluster it runs on
    rc, status, _ = cli(capsys, head, "jobs", "status", job)
    assert f"{job}: SUCCEEDED" in status
    rc, listing, _ = cli(capsys, head, "jobs", "list")
    assert re.search(rf"{job}\s+SUCCEEDED", listing), listing


@pytest.mark.ray
def test_failed_job_exit_status_and_delete(head, tmp_path, capsys):
    """`submit` returns the job's exit status (distmeta's config error: 2) after printing
    its logs; a finished job can be deleted."""
    rc, out, err = cli(capsys, head, "submit", "--no-wheel", "--",
                       "train", SINUSOID, "--set", "optim.lr=-1", "--out", str(tmp_path / "bad"))
    job = out.strip().splitlines()[0]
    assert job.startswith("raysubmit_"), out + err
    assert rc == 2, out + err
    assert re.search(r"^distmeta: error: optim\.lr: .+", out, re.M), out
    assert f"job {job} FAILED (exit status 2)" in err
    rc, logs, err = cli(capsys, head, "jobs", "logs", job, "--follow")
    assert rc == 2, logs + err
    assert f"job {job} FAILED" in err

    rc, out, err = cli(capsys, head, "jobs", "delete", job)
    assert rc == 0 and out.strip() == f"{job}: deleted", out + err
    rc, _, err = cli(capsys, head, "jobs", "status", job)
    assert rc == 2 and job in one_line(err)


@pytest.mark.ray
def test_no_wait_stop_and_delete_a_running_job(head, tmp_path, capsys):
    """`--no-wait` prints the job id and returns; a running job is not deleted (one line
    saying to stop it first); stopped, it is."""
    rc, out, err = cli(capsys, head, "submit", "--no-wait", "--no-wheel", "--",
                       "train", SINUSOID, "--steps", "100000", "--no-progress",
                       "--out", str(tmp_path / "long"))
    assert rc == 0, err
    job = out.strip()
    assert re.fullmatch(r"raysubmit_\w+", job), out  # the id alone: no logs were followed
    assert f"distmeta jobs logs {job} --follow" in err
    rc, out, err = cli(capsys, head, "jobs", "delete", job)
    assert rc == 2
    line = one_line(err)
    assert line.startswith(f"distmeta: error: job {job} is ") and "stop it first" in line
    rc, out, err = cli(capsys, head, "jobs", "stop", job, "--wait")
    assert rc == 0, err
    assert f"{job}: STOPPED" in out
    rc, out, err = cli(capsys, head, "jobs", "delete", job)
    assert rc == 0 and f"{job}: deleted" in out, err


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
        jobs.job_client(head.url, token_file=str(wrong))
    assert "\n" not in str(exc.value)
    with pytest.raises(DistmetaError, match="--token-file"):
        jobs.job_client(head.url, token_file=str(tmp_path / "missing"))
    # Ray would abort the process on an unreadable RAY_AUTH_TOKEN_PATH; distmeta says why
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(DistmetaError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.job_client(head.url)


@pytest.mark.ray
def test_unknown_job_is_one_line(head, capsys):
    rc, _, err = cli(capsys, head, "jobs", "status", "raysubmit_doesnotexist")
    assert rc == 2
    assert "raysubmit_doesnotexist" in one_line(err)
