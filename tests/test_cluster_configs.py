"""The cluster/ folder: launcher YAMLs against Ray's own schema, KubeRay manifests,
and cluster/local.sh starting and stopping a real 2-node cluster."""
from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from proc_utils import session_pids
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = ["aws.yaml", "gcp.yaml"]
# EC2 families with NVIDIA GPUs.
AWS_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e")


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def prepared(name):
    """The config the way `ray up` prepares it (defaults filled in, offline)."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(load(name)))


# --------------------------------------------------------------------------- launcher


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_validates_against_ray_schema(name):
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared(name))


def test_ray_schema_check_is_not_vacuous():
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = prepared("aws.yaml")
    config["available_node_types"]["gpu_1x"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)
    config = prepared("aws.yaml")
    config["max_wrokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def _worker_types(config):
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_node_types(name):
    config = prepared(name)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0  # CPU head
    workers = _worker_types(config)
    gpus = sorted(t["resources"].get("GPU", 0) for t in workers.values())
    assert 1 in gpus and max(gpus) > 1, "a single-GPU and a multi-GPU worker type"
    for node_type in workers.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
    assert any(t["max_workers"] > t["min_workers"] for t in workers.values()), "autoscaling range"

    provider = config["provider"]["type"]
    for type_name, node_type in config["available_node_types"].items():
        node_config = node_type["node_config"]
        n_gpu = node_type["resources"].get("GPU", 0)
        if provider == "aws":
            assert node_config.get("InstanceType"), type_name
            family = node_config["InstanceType"].split(".")[0]
            assert (family in AWS_GPU_FAMILIES) == (n_gpu > 0), (type_name, family)
        else:
            # A compute VM (Ray's GCP provider treats a top-level acceleratorType as a TPU).
            assert node_config.get("machineType") and "acceleratorType" not in node_config
            accelerators = node_config.get("guestAccelerators", [])
            assert sum(a["acceleratorCount"] for a in accelerators) == n_gpu, type_name
            if n_gpu:
                assert all(a["acceleratorType"].startswith("nvidia-") for a in accelerators)
                assert node_config["scheduling"]["onHostMaintenance"] == "TERMINATE"


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_security_and_setup(name):
    config = prepared(name)
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for start in (head_start, worker_start):
        assert "RAY_AUTH_MODE=token" in start
        token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+?);?\s", start).group(1)
        remote = token_path.replace("$HOME", "~")
        assert remote in config["file_mounts"], "the token file reaches every node"
    setup = " ".join(config["setup_commands"])
    assert f"=={ray.__version__}" in setup  # Ray pinned to this client's version
    assert "torch" in setup and "pip install ~/distmeta" in setup
    assert "~/distmeta" in config["file_mounts"]


# --------------------------------------------------------------------------- KubeRay


def _containers(group):
    return group["template"]["spec"]["containers"]


def _check_ray_cluster_spec(spec):
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    groups = [head] + spec["workerGroupSpecs"]
    for group in groups:
        # KubeRay's rayStartParams is map[string]string
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group
        for c in _containers(group):
            image, tag = c["image"].rsplit(":", 1)
            assert image.endswith("/ray") or "distmeta" in image, c["image"]
            assert tag.split("-")[0] == ray.__version__, c["image"]
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = [c["resources"]["limits"].get("nvidia.com/gpu", 0) for c in _containers(group)]
        gpu_groups += any(int(n) >= 1 for n in limits)
    assert gpu_groups >= 1
    return head


def test_kuberay_raycluster():
    doc = load("kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    head = _check_ray_cluster_spec(doc["spec"])
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert doc["spec"]["enableInTreeAutoscaling"] is True
    gpus = sorted(int(c["resources"]["limits"]["nvidia.com/gpu"])
                  for g in doc["spec"]["workerGroupSpecs"] for c in _containers(g))
    assert gpus[0] == 1 and gpus[-1] > 1


def test_kuberay_rayjob_entrypoint_parses_with_distmeta_cli():
    from distmeta.cli import build_parser

    doc = load("kuberay/rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    _check_ray_cluster_spec(doc["spec"]["rayClusterSpec"])
    tokens = shlex.split(doc["spec"]["entrypoint"])
    assert tokens[0] == "distmeta"
    args = build_parser().parse_args(tokens[1:])
    assert args.command == "train"
    assert args.config == "experiments/omniglot_minimal_protonet.yaml"
    assert args.address == "auto" and args.resume == "auto"
    assert os.path.isabs(args.out), "--resume auto needs a persistent --out"


def test_kuberay_rayjob_experiment_validates():
    doc = load("kuberay/rayjob.yaml")
    config = shlex.split(doc["spec"]["entrypoint"])[2]
    if not (REPO / config).is_file():
        pytest.skip(f"{config} is not written yet")
    proc = subprocess.run([sys.executable, "-m", "distmeta.cli", "validate", config], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- local.sh


def test_local_sh_syntax():
    subprocess.run(["bash", "-n", str(CLUSTER / "local.sh")], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "error", str(CLUSTER / "local.sh")], check=True)
    assert os.access(CLUSTER / "local.sh", os.X_OK)


def _session_alive(sid: int) -> bool:
    return bool(session_pids(sid))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
def test_local_sh_two_node_cluster_and_spread_placement():
    """local.sh starts a head and a worker node (token auth, pids recorded), a driver
    sees both, a 2-worker run with engine.placement=SPREAD puts one worker on each
    node, and stop ends exactly the recorded sessions."""
    tmp = Path(tempfile.mkdtemp(prefix="dm_", dir="/tmp"))  # short: Ray's socket paths
    state = tmp / "state"
    script = str(CLUSTER / "local.sh")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    pids = []
    try:
        # 2 logical CPUs per node: PACK would put both workers on one node, SPREAD must not.
        start = subprocess.run(
            [script, "start", "--workers", "1", "--num-cpus", "2",
             "--object-store-memory", str(100 * 1024 ** 2), "--dashboard-port", str(_free_port()),
             "--state-dir", str(state), "--temp-dir", str(tmp / "r")],
            env=env, capture_output=True, text=True, timeout=240)
        assert start.returncode == 0, start.stdout + start.stderr
        pids = [int((state / f).read_text()) for f in ("head.pid", "worker-1.pid")]
        assert all(_session_alive(p) for p in pids)
        assert (state / "token").stat().st_mode & 0o077 == 0

        status = subprocess.run([script, "status", "--state-dir", str(state)], env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "Ray nodes: 2 alive" in status.stdout, status.stdout

        address = (state / "address").read_text().strip()
        dashboard = (state / "dashboard").read_text().strip()
        in_cluster = f"source {shlex.quote(str(state / 'env.sh'))} && "
        run = subprocess.run(
            ["bash", "-c", in_cluster + shlex.join([
                sys.executable, "-m", "distmeta.cli", "train", "experiments/sinusoid_maml.yaml",
                "--steps", "2", "--workers", "2", "--address", address,
                "--set", "engine.placement=SPREAD", "--set", "eval.final_episodes=5",
                "--set", "eval.episodes=5", "--no-progress", "--out", str(tmp / "run")])],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]

        # A driver (token from env.sh) sees both nodes; the run's workers sat on both.
        driver = (
            "import ray; from ray.util.state import list_actors\n"
            f"ray.init(address={address!r}, logging_level='ERROR')\n"
            "print('ALIVE', sum(n['Alive'] for n in ray.nodes()))\n"
            f"acts = list_actors(address={dashboard!r}, detail=True, limit=1000,\n"
            "                   filters=[('class_name', '=', 'TaskWorker')])\n"
            "print('WORKER_NODES', len(acts), len({a.node_id for a in acts}))\n")
        proc = subprocess.run(["bash", "-c", in_cluster + shlex.join([sys.executable, "-c", driver])],
                              env=env, capture_output=True, text=True, timeout=120)
        assert "ALIVE 2" in proc.stdout, proc.stdout + proc.stderr[-2000:]
        assert "WORKER_NODES 2 2" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    finally:
        stop = subprocess.run([script, "stop", "--state-dir", str(state)], env=env,
                              capture_output=True, text=True, timeout=120)
        deadline = time.monotonic() + 10
        while any(_session_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [p for p in pids if _session_alive(p)]
        shutil.rmtree(tmp, ignore_errors=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not alive, f"sessions still running after stop: {alive}"
