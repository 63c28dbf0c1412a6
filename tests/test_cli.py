"""The command line: help for every subcommand, ``validate`` on every shipped
experiment, and a NON-editable install (wheel) that imports and runs."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from distmeta import cli

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


def subcommand_paths(parser: argparse.ArgumentParser, prefix=()):
    """Every (sub)command path of the parser tree, e.g. ("data", "prepare", "omniglot")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from subcommand_paths(sub, prefix + (name,))


def test_top_level_help_subprocess():
    script = Path(sys.executable).with_name("distmeta")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "distmeta.cli"]
    proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("train", "eval", "validate", "data"):
        assert name in proc.stdout


def test_version(capsys):
    import distmeta

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and distmeta.__version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: distmeta" in capsys.readouterr().out


PATHS = sorted(set(subcommand_paths(cli.build_parser())))


def test_core_subcommands_present():
    names = {p[0] for p in PATHS}
    assert {"train", "eval", "validate", "data"} <= names


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_subcommand_help(path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(list(path) + ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: distmeta " + " ".join(path))
    assert "%%" not in out   # argparse formats help strings, not descriptions: no doubled percent signs


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_validate_every_experiment(path, capsys):
    code = cli.main(["validate", str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.strip().endswith("valid")
    import yaml

    resolved = yaml.safe_load(captured.out)
    assert resolved["name"] == path.stem, "an experiment's name should be its file name"
    assert resolved["budget"], "every experiment states its budget"


def test_every_experiment_is_listed_in_the_experiments_readme():
    readme = (REPO / "experiments" / "README.md").read_text()
    unlisted = [p.name for p in EXPERIMENTS if f"`{p.name}`" not in readme]
    assert not unlisted, f"experiments/README.md does not list {unlisted}"


def test_experiments_exist():
    names = {p.stem for p in EXPERIMENTS}
    for method in ("protonet", "maml", "fomaml", "reptile", "siamese"):
        assert f"omniglot_minimal_{method}" in names
    for method in ("maml", "protonet", "reptile", "siamese"):
        for setting in ("5w1s", "20w1s"):
            assert f"omniglot_{method}_{setting}" in names


def _copy_source(dst: Path) -> Path:
    """The project files a wheel is built from, without venvs, runs or build leftovers."""
    ignore = shutil.ignore_patterns(".venv", ".ci-venv", ".git", "runs", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", "*.pyc", ".gl")
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py", "MANIFEST.in"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, dst / name)
    for name in ("distmeta", "envs"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    if not (dst / "README.md").exists():  # pyproject names a readme; the wheel needs one
        (dst / "README.md").write_text("distmeta\n")
    return dst


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, env=env,
                           timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list((tmp / "dist").glob("distmeta-*.whl"))
    assert len(wheels) == 1
    site = tmp / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                              str(site), str(wheels[0])], capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return wheels[0], site


def test_wheel_contents(wheel_site):
    wheel, _ = wheel_site
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    tops = {n.split("/")[0] for n in names}
    assert "envs" not in tops, "a bare top-level 'envs' package would clash with PyPI's envs"
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"distmeta"}
    assert "distmeta/envs/__init__.py" in names
    for sub in ("algorithms", "tasks", "data", "models", "engine", "rl", "jobs"):
        assert f"distmeta/{sub}/__init__.py" in names, sub
    assert "distmeta = distmeta.cli:main" in entry_points
    # the two official minimal Omniglot sets ship as package data, with their licence
    for name in ("images_background_small1.zip", "images_background_small2.zip", "LICENSE"):
        assert f"distmeta/data/omniglot_minimal/{name}" in names, name


def test_installed_wheel_reads_its_shipped_omniglot(wheel_site, tmp_path):
    _, site = wheel_site
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "DISTMETA_DATA_DIR": str(tmp_path)}
    code = ("import distmeta.builtin; from distmeta.data.omniglot import SHIPPED, load_set;"
            "d = load_set('background_small2', download=False); print(SHIPPED); print(d.num_classes);"
            "print(open(SHIPPED / 'LICENSE').read().splitlines()[0])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shipped, classes, licence = proc.stdout.strip().splitlines()
    assert shipped.startswith(str(site)) and classes == "156" and licence == "The MIT License (MIT)"


def test_non_editable_install_imports_and_runs(wheel_site, tmp_path):
    _, site = wheel_site
    assert not (site / "envs").exists()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    code = ("import importlib.util, distmeta, distmeta.envs, distmeta.cli, distmeta.api, distmeta.engine.trainer;"
            "import distmeta.builtin, distmeta.data, distmeta.rl;"
            "print(distmeta.__file__); print(distmeta.envs.__file__);"
            "print(importlib.util.find_spec('envs'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split()
    assert lines[0].startswith(str(site)) and lines[1].startswith(str(site / "distmeta" / "envs"))
    assert lines[2] == "None", "no top-level 'envs' module may be importable from the install"
    help_ = subprocess.run([sys.executable, "-m", "distmeta.cli", "--help"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)
    assert help_.returncode == 0 and "usage: distmeta" in help_.stdout, help_.stderr[-3000:]
    # and it trains: a 2-step sinusoid run from the installed package
    exp = REPO / "experiments" / "sinusoid_maml.yaml"
    run = subprocess.run([sys.executable, "-m", "distmeta.cli", "train", str(exp), "--steps", "2", "--out",
                          str(tmp_path / "run"), "--no-progress", "--set", "eval.final_episodes=2",
                          "--set", "eval.episodes=2"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
