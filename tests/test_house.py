"""The house rules: no import cycle among distmeta's modules (imports inside
functions included), a schema that imports nothing of distmeta, a generated
config reference that is current, and config-level bad input caught by
``distmeta validate`` with one line naming the field."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from distmeta import cli
from distmeta.config import ConfigError, from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "distmeta"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """distmeta module -> the distmeta modules it imports anywhere (module level or inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "distmeta":
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_distmeta_modules():
    graph = import_graph()
    assert len(graph) > 40 and "distmeta.config" in graph["distmeta.engine.trainer"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_schema_imports_no_distmeta_module():
    assert import_graph()["distmeta.schema"] == set()


def test_config_reference_is_current():
    from distmeta.config_reference import main

    assert main(["--check", str(REPO / "docs" / "config.md")]) == 0, \
        "docs/config.md is stale: python -m distmeta.config_reference > docs/config.md"


# --------------------------------------------------------------------------- bad input, one line each
def _validate(tmp_path, text, *extra):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return cli.main(["validate", str(path), *extra])


SIN = "task: {kind: sinusoid}\nmodel: {name: mlp}\n"


def test_yaml_exponent_floats_are_numbers(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text(SIN + "optim: {lr: 1e-3}\n")
    assert load_config(path).optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("text, needle", [
    (SIN + "optim: {lr: .nan}\n", "optim.lr: expected a finite number"),
    (SIN + "optim: {lr: .inf}\n", "optim.lr: expected a finite number"),
    ("", "the file is empty"),
    (SIN + "optim: {lr: 0.1}\noptim: {lr: 0.2}\n", "duplicate key 'optim'"),
    (SIN + "tune: {space: {optim.lr: {grid: [0.1]}}, metric: acuracy}\n", "tune.metric: 'acuracy' is not reported"),
    ("task: {kind: sinusoid}\nalgorithm: {name: protonet}\n", "algorithm.name: protonet works on classification"),
    ("task: {kind: sinusoid}\nalgorithm: {name: siamese}\n", "algorithm.name: siamese works on classification"),
    ("task: {kind: sinusoid}\nmodel: {name: conv4}\n", "model.name: conv4 takes images"),
    (SIN + "algorithm: {name: maml, margin: 1.0}\n", "algorithm.margin: unknown field; allowed: anil"),
    (SIN + "algorithm: {name: reptile, learn_inner_lr: true}\n", "algorithm.learn_inner_lr: unknown field"),
    (SIN + "algorithm: {name: maml, inner_lrr: 0.1}\n", "algorithm.inner_lrr: unknown field"),
])
def test_validate_rejects_with_one_line(tmp_path, capsys, text, needle):
    assert _validate(tmp_path, text) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err


def test_malformed_set_value_is_one_line(tmp_path, capsys):
    assert _validate(tmp_path, SIN, "--set", "optim.lr=[1,") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--set optim.lr: not valid YAML" in err, err


def test_typed_cli_flag_is_validated(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text(SIN)
    assert cli.main(["train", str(path), "--workers", "-1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "engine.workers: must be >= 0, got -1" in err and not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):  # argparse: neither an integer nor auto
        cli.main(["train", str(path), "--workers", "two", "--out", str(tmp_path / "run")])
    assert "--workers: expected an integer or auto, got 'two'" in capsys.readouterr().err


def test_workers_flag_accepts_auto():
    from distmeta.commands import _workers_flag

    assert _workers_flag("auto") == "auto" and _workers_flag("3") == 3


def test_user_algorithm_brings_its_own_fields():
    from pydantic import Field

    from distmeta.algorithms.protonet import ProtoNet
    from distmeta.registry import ALGORITHMS
    from distmeta.schema import AlgorithmConfig, Float

    class TemperatureConfig(AlgorithmConfig):
        temperature: Float = Field(1.0, gt=0, description="softmax temperature")

    @ALGORITHMS.register("test_tempered_protonet", overwrite=True)
    class Tempered(ProtoNet):
        name = "test_tempered_protonet"
        config_class = TemperatureConfig

    data = {"task": {"kind": "classification"}, "model": {"name": "conv4"}, "data": {"dataset": "none"},
            "algorithm": {"name": "test_tempered_protonet", "temperature": 0.5}}
    assert from_dict(data).algorithm.temperature == 0.5
    with pytest.raises(ConfigError, match=r"algorithm.temperature: must be > 0"):
        from_dict({**data, "algorithm": {"name": "test_tempered_protonet", "temperature": 0}})
