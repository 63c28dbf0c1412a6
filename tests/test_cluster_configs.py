"""The cluster/ folder: launcher YAMLs against Ray's own schema, the image
(cluster/Dockerfile, parsed: Docker is not needed), the KubeRay manifests (against
KubeRay's CRDs when $DISTMETA_KUBERAY_CRDS names a folder holding them), and
cluster/local.sh starting and stopping a real 2-node cluster."""
from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import importlib.util
import os
import posixpath
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


def _yaml_load(path):
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


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


def _rays_default_amis() -> dict:
    """DEFAULT_AMI of the installed Ray's AWS provider (read from its source: importing
    the module needs boto3)."""
    origin = importlib.util.find_spec("ray.autoscaler._private.aws.config").origin
    for node in ast.parse(Path(origin).read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULT_AMI" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no DEFAULT_AMI in {origin}")


def test_aws_image_id_is_explicit_and_not_rays_default():
    """Every AWS node type names its own ImageId: without one `ray up` silently uses
    Ray's default AMI (an Ubuntu 18.04 Deep Learning AMI)."""
    defaults = _rays_default_amis()
    assert len(defaults) > 5 and all(v.startswith("ami-") for v in defaults.values())
    config = prepared("aws.yaml")
    for type_name, node_type in config["available_node_types"].items():
        image_id = node_type["node_config"].get("ImageId", "")
        assert image_id.startswith("ami-"), (type_name, image_id)
        # "" and "latest_dlami" make Ray substitute its default
        assert image_id.lower() not in ("", "latest_dlami"), type_name
        assert image_id not in defaults.values(), (type_name, image_id)

    # And Ray's own fill-in step keeps them (it only replaces missing ones).
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws.config import _check_ami

    before = {k: t["node_config"]["ImageId"] for k, t in config["available_node_types"].items()}
    _check_ami(config)
    assert {k: t["node_config"]["ImageId"] for k, t in config["available_node_types"].items()} == before


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
            assert image.endswith("/distmeta"), c["image"]  # cluster/Dockerfile's image
            assert tag.split("-")[0] == ray.__version__, c["image"]
            # the image's WORKDIR is where the entrypoint's relative paths resolve
            assert "workingDir" not in c, c["name"]
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


def test_kuberay_rayjob_experiment_validates_in_image_workdir(tmp_path):
    """The entrypoint's config, run from a copy of the image's WORKDIR (what
    cluster/Dockerfile copies there, nothing else of the repository), validates."""
    doc = load("kuberay/rayjob.yaml")
    config = shlex.split(doc["spec"]["entrypoint"])[2]
    assert not os.path.isabs(config)
    image = _dockerfile()
    staged = tmp_path / "workdir"
    staged.mkdir()
    _stage(image, image["workdir"], staged)
    assert (staged / config).is_file(), f"{config} is not under the image's WORKDIR {image['workdir']}"
    proc = subprocess.run([sys.executable, "-m", "distmeta.cli", "validate", config], cwd=staged,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the image

DOCKERFILE = CLUSTER / "Dockerfile"


def _dockerfile_instructions(text):
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        instruction, _, args = buf.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def _substitute(value, variables):
    def repl(m):
        name, default = m.group(1) or m.group(3), m.group(2)
        return variables.get(name) or (default or "")
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", repl, value)


@functools.lru_cache(maxsize=None)
def _dockerfile(variant=None):
    """cluster/Dockerfile evaluated the way `docker build` does for --build-arg
    VARIANT=<variant> (None: the default): base image, args, COPYs, RUNs, WORKDIR."""
    instructions = _dockerfile_instructions(DOCKERFILE.read_text())
    global_args, args = {}, {}
    base, workdir, copies, runs, froms = None, "/", [], [], 0
    for instruction, rest in instructions:
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            scope = args if froms else global_args
            if froms and name in global_args and not default:
                scope[name] = global_args[name]  # re-declared after FROM: the global value
            else:
                scope[name] = default
            if name == "VARIANT" and variant is not None:
                scope[name] = variant
        elif instruction == "FROM":
            froms += 1
            base = _substitute(rest, global_args)
        elif instruction == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, _substitute(rest, args)))
        elif instruction in ("COPY", "ADD"):
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            assert not any(p.startswith("--from") for p in shlex.split(rest)), rest
            *sources, dest = parts
            dest = posixpath.join(workdir, dest)
            for src in sources:
                target = posixpath.join(dest, posixpath.basename(src.rstrip("/"))) \
                    if dest.endswith("/") and (REPO / src).is_file() else dest
                copies.append((src.rstrip("/"), posixpath.normpath(target)))
        elif instruction == "RUN":
            runs.append((workdir, _substitute(rest, args), rest))
    return {"froms": froms, "base": base, "global_args": global_args, "args": args,
            "workdir": workdir, "copies": copies, "runs": runs}


def test_dockerfile_builds_on_ray_image_in_cpu_and_gpu_variants():
    default = _dockerfile()
    assert default["froms"] == 1
    assert default["global_args"]["VARIANT"] == "cpu"
    for variant in ("cpu", "gpu"):
        base = _dockerfile(variant)["base"]
        assert re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-py3\d+-{variant}", base), base
    # torch: PyTorch's CPU index for cpu, a CUDA 12 index for gpu, a version distmeta accepts
    torch_run = " ".join(raw for _, _, raw in default["runs"] if "torch==" in raw)
    indexes = dict(re.findall(r"(\w+)\)\s*index=\"\$\{TORCH_INDEX:-(\S+?)\}\"", torch_run))
    assert indexes["cpu"] == "https://download.pytorch.org/whl/cpu", indexes
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", indexes["gpu"]), indexes
    assert '--index-url "${index}"' in torch_run and '"torch==${TORCH_VERSION}"' in torch_run
    from packaging.requirements import Requirement

    pyproject = (REPO / "pyproject.toml").read_text()
    torch_req = next(Requirement(r) for r in re.findall(r'"(torch[^"]*)"', pyproject))
    assert default["args"]["TORCH_VERSION"] in torch_req.specifier, (default["args"], torch_req)


def _pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _dockerignored(path):
    """Whether cluster/Dockerfile.dockerignore leaves the top-level `path` out of the
    build context (last matching pattern wins)."""
    ignore = CLUSTER / "Dockerfile.dockerignore"
    if not ignore.is_file():
        return False
    ignored = False
    for pattern in ignore.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(path, pattern[3:])):
            ignored = not negate
    return ignored


def test_dockerfile_installs_distmeta_from_the_repository():
    image = _dockerfile()
    copies = image["copies"]
    for src, _ in copies:
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
        assert not _dockerignored(src), f"COPY {src}: excluded by Dockerfile.dockerignore"
    installs = [(wd, cmd) for wd, cmd, _ in image["runs"] if re.search(r"pip install [^&]*\s\.(\s|$)", cmd)]
    assert len(installs) == 1, image["runs"]
    src_dir, cmd = installs[0]
    assert "[test]" not in cmd and " -e " not in cmd
    # pip install . needs pyproject.toml, the readme it names and every package folder
    project = _pyproject()
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    copied_to_src = {src for src, dest in copies if dest == posixpath.join(src_dir, src)}
    assert needed <= copied_to_src, (needed - copied_to_src, src_dir)


def _stage(image, under, dest_dir):
    """Copy what the Dockerfile COPYs below the image path `under` into dest_dir."""
    for src, dest in image["copies"]:
        rel = posixpath.relpath(dest, under)
        if rel.startswith(".."):
            continue
        target = dest_dir / rel
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, target)


def test_dockerfile_source_copy_builds_the_package(tmp_path):
    """What the image copies for `pip install .` is enough to build distmeta (a wheel
    with every package and the `distmeta` command), offline with the local setuptools."""
    import zipfile

    image = _dockerfile()
    (src_dir,) = [wd for wd, cmd, _ in image["runs"] if re.search(r"pip install [^&]*\s\.(\s|$)", cmd)]
    staged = tmp_path / "src"
    _stage(image, src_dir, staged)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "wheel"), str(staged)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("distmeta-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in _pyproject()["tool"]["setuptools"]["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "distmeta = distmeta.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_dockerfile_workdir_holds_the_experiments():
    image = _dockerfile()
    workdir = image["workdir"]
    assert posixpath.isabs(workdir)
    assert ("experiments", posixpath.join(workdir, "experiments")) in image["copies"]
    # no source tree in the WORKDIR that would shadow the installed package
    assert posixpath.join(workdir, "distmeta") not in {dest for _, dest in image["copies"]}
    # the RayJob entrypoint's config path resolves there
    config = shlex.split(load("kuberay/rayjob.yaml")["spec"]["entrypoint"])[2]
    assert not os.path.isabs(config) and (REPO / config).is_file()


def _manifest_images():
    images = {}
    for name in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        doc = load(name)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        for group in [spec["headGroupSpec"]] + spec["workerGroupSpecs"]:
            for c in _containers(group):
                images.setdefault(c["image"], []).append(f"{name}:{group.get('groupName', 'head')}")
    return images


def test_kuberay_manifests_use_one_distmeta_image_and_readme_tells_how_to_push_it():
    images = _manifest_images()
    assert len(images) == 1, f"both manifests should run the same image: {images}"
    image = next(iter(images))
    name, tag = image.rsplit(":", 1)
    assert name.split("/")[-1] == "distmeta" and "/" in name, image  # REGISTRY/distmeta
    assert tag.startswith(ray.__version__) and tag.endswith("-gpu"), image  # the GPU workers need CUDA torch
    readme = (CLUSTER / "README.md").read_text()
    assert "docker build -f cluster/Dockerfile -t distmeta:cpu ." in readme
    gpu_builds = [line for line in readme.splitlines()
                  if line.startswith("docker build -f cluster/Dockerfile") and "VARIANT=gpu" in line]
    assert gpu_builds, "README: the GPU variant's build command"
    assert any(f"-t {image} ." in line for line in gpu_builds), (image, gpu_builds)
    assert f"docker push {image}" in readme
    assert "REGISTRY" in name and "REGISTRY" in readme  # a placeholder the README explains


# --------------------------------------------------------------------------- KubeRay CRDs
# Kubernetes prunes fields a CRD's structural schema does not know, without an error, so
# a misspelled field (rayStartParam) would just vanish. Here every object schema with
# `properties` is closed, which turns such a field into a failure.

_IGNORED_KEYWORDS = {  # annotations, defaults, CEL rules (x-kubernetes-validations: not evaluated)
    "description", "default", "example", "externalDocs", "format", "nullable", "title",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations",
    "x-kubernetes-embedded-resource",
}
_PLAIN_KEYWORDS = {
    "type", "enum", "required", "pattern", "minimum", "maximum", "minLength", "maxLength",
    "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "multipleOf",
}
_INT_BOUNDS = {"int32": (-2 ** 31, 2 ** 31 - 1), "int64": (-2 ** 63, 2 ** 63 - 1)}

# ObjectMeta of the manifest itself (the CRD says only `type: object`): the fields a user
# sets, checked loosely.
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253,
                 "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def openapi_to_json_schema(node):
    """A CRD's OpenAPI v3 (structural) schema as a strict JSON Schema (draft 7)."""
    unknown = set(node) - _IGNORED_KEYWORDS - _PLAIN_KEYWORDS - {
        "properties", "items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"}
    assert not unknown, f"schema keyword(s) this converter does not handle: {unknown}"
    out = {k: copy.deepcopy(v) for k, v in node.items() if k in _PLAIN_KEYWORDS}
    if "properties" in node:
        out["properties"] = {k: openapi_to_json_schema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = openapi_to_json_schema(node["items"])
    if "additionalProperties" in node:
        extra = node["additionalProperties"]
        out["additionalProperties"] = extra if isinstance(extra, bool) else openapi_to_json_schema(extra)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [openapi_to_json_schema(v) for v in node[key]]
    if "not" in node:
        out["not"] = openapi_to_json_schema(node["not"])
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("format") in _INT_BOUNDS and out.get("type") == "integer":
        low, high = _INT_BOUNDS[node["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)  # anything goes beyond the known properties
    elif out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False  # the API server would prune unknown fields
    return out


@pytest.fixture(scope="module")
def kuberay_crds():
    """{kind: CRD document} from $DISTMETA_KUBERAY_CRDS (KubeRay's ray.io_*.yaml)."""
    folder = os.environ.get("DISTMETA_KUBERAY_CRDS")
    if not folder:
        pytest.skip("DISTMETA_KUBERAY_CRDS is not set (a folder with KubeRay's RayCluster "
                    "and RayJob CRD YAMLs, ray-operator/config/crd/bases/ in KubeRay's repository)")
    crds = {}
    for path in sorted(Path(folder).glob("*.y*ml")):
        doc = _yaml_load(path)
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            crds[doc["spec"]["names"]["kind"]] = doc
    missing = {"RayCluster", "RayJob"} - set(crds)
    assert not missing, f"no CRD for {missing} in DISTMETA_KUBERAY_CRDS={folder}"
    return crds


_VALIDATORS = {}


def _crd_validator(crds, kind):
    import jsonschema

    if kind not in _VALIDATORS:
        crd = crds[kind]
        assert crd["spec"]["group"] == "ray.io"
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = openapi_to_json_schema(version["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = copy.deepcopy(_OBJECT_META)
        schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
        schema["properties"]["kind"] = {"const": kind}
        schema["properties"].pop("status")  # set by the operator, never in a manifest
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        jsonschema.Draft7Validator.check_schema(schema)
        _VALIDATORS[kind] = jsonschema.Draft7Validator(schema)
    return _VALIDATORS[kind]


def crd_errors(crds, doc):
    validator = _crd_validator(crds, doc["kind"])
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(doc))


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_kuberay_manifest_validates_against_crd(kuberay_crds, name):
    errors = crd_errors(kuberay_crds, load(name))
    assert not errors, "\n".join(errors)


def test_crd_validation_is_not_vacuous(kuberay_crds):
    job = load("kuberay/rayjob.yaml")
    assert not crd_errors(kuberay_crds, job)

    def fails(mutate, where):
        doc = copy.deepcopy(job)
        mutate(doc)
        errors = crd_errors(kuberay_crds, doc)
        assert any(e.startswith(where) for e in errors), (where, errors)

    head = lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]  # noqa: E731
    worker = lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]  # noqa: E731
    # a misspelled field (Kubernetes would drop it silently)
    fails(lambda d: head(d).__setitem__("rayStartParam", head(d).pop("rayStartParams")),
          "spec.rayClusterSpec.headGroupSpec: Additional properties are not allowed ('rayStartParam'")
    # deep in the pod template, and at the top level of spec
    fails(lambda d: worker(d)["template"]["spec"]["containers"][0].__setitem__("resource", {}),
          "spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0: Additional properties")
    fails(lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True), "spec: Additional properties")
    # wrong types
    fails(lambda d: worker(d).__setitem__("replicas", "2"), "spec.rayClusterSpec.workerGroupSpecs.0.replicas")
    fails(lambda d: head(d)["rayStartParams"].__setitem__("num-cpus", 0),  # map[string]string
          "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus")
    fails(lambda d: d["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mode", "Token"),  # enum
          "spec.rayClusterSpec.authOptions.mode")
    # int-or-string quantities: 4 and "4" pass, a list does not
    limits = lambda d: worker(d)["template"]["spec"]["containers"][0]["resources"]["limits"]  # noqa: E731
    for ok in (4, "4", "3500m"):
        doc = copy.deepcopy(job)
        limits(doc)["cpu"] = ok
        assert not crd_errors(kuberay_crds, doc), ok
    fails(lambda d: limits(d).__setitem__("cpu", [4]),
          "spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.cpu")
    # metadata and the parts a manifest never sets
    fails(lambda d: d["metadata"].__setitem__("lables", {}), "metadata")
    fails(lambda d: d["metadata"]["labels"].__setitem__("replicas", 2), "metadata.labels.replicas")
    fails(lambda d: d.__setitem__("status", {}), "<root>")
    fails(lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"), "apiVersion")

    cluster = load("kuberay/raycluster.yaml")
    cluster["spec"]["headGroupSpec"]["rayStartParam"] = cluster["spec"]["headGroupSpec"].pop("rayStartParams")
    assert any("'rayStartParam'" in e for e in crd_errors(kuberay_crds, cluster))


def test_openapi_conversion():
    schema = openapi_to_json_schema({
        "type": "object",
        "properties": {
            "q": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
            "n": {"type": "integer", "format": "int32", "nullable": True},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"a": {"type": "string"}}},
        },
    })
    import jsonschema

    v = jsonschema.Draft7Validator(schema)
    assert v.is_valid({"q": 1, "n": None, "free": {"a": "x", "anything": [1]}})
    assert v.is_valid({"q": "1Gi", "n": 2 ** 31 - 1})
    assert not v.is_valid({"q": 1.5}) and not v.is_valid({"n": 2 ** 31}) and not v.is_valid({"x": 1})
    with pytest.raises(AssertionError, match="does not handle"):
        openapi_to_json_schema({"type": "object", "x-kubernetes-something-new": True})


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
