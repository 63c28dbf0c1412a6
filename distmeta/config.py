"""Experiment configs: YAML in, one typed :class:`~distmeta.schema.ExperimentConfig` out.

This is the registry layer above :mod:`distmeta.schema`: it reads YAML strictly
(duplicate keys are errors; ``1e-3`` is a number, as in YAML 1.2), applies
``--set key=value`` overrides, picks the algorithm's own config model from the
algorithm registry, and checks what needs the registries (names, a method or a
model that does not fit the task, Meta-RL env ids, Tune's searched fields and
metric). Contract: :func:`from_dict` and :func:`load_config` return a validated
config or raise :class:`ConfigError` with one line naming the field. Nothing is
started before a config validates; the typed result is passed along, never
re-parsed.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

import distmeta.builtin  # noqa: F401  (registers the built-in components)
from distmeta.registry import ALGORITHMS, DATASETS, MODELS, TASKS
from distmeta.schema import (AlgorithmConfig, CheckpointConfig, ConfigError, DataConfig, EngineConfig,  # noqa: F401
                             EvalConfig, ExperimentConfig, ModelConfig, OptimConfig, RLConfig, SplitSpec, TaskConfig,
                             TuneConfig, parse)


# --------------------------------------------------------------------------- YAML
class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (``1e-3``) and duplicate keys as errors."""


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def _mapping_without_duplicates(loader: StrictLoader, node: yaml.MappingNode) -> Dict[Any, Any]:
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1})")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> Python value, or ConfigError with one line naming ``where``."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None


def apply_overrides(data: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = parse_yaml(text, f"--set {key}") if text != "" else ""
    return data


def load_config_dict(path: Union[str, Path], overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = parse_yaml(path.read_text(), str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty; an experiment needs at least a name and a task or rl section")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return apply_overrides(data, overrides)


# --------------------------------------------------------------------------- parsing
DEFAULT_ALGORITHM = AlgorithmConfig.model_fields["name"].default


def algorithm_config(data: Any) -> AlgorithmConfig:
    """The ``algorithm`` section, parsed by the config model its algorithm registered."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"algorithm: expected a mapping, got {data!r}")
    name = data.get("name", DEFAULT_ALGORITHM)
    if name not in ALGORITHMS:
        raise ConfigError(f"algorithm.name: {name!r} is not one of {ALGORITHMS.names()}")
    return parse(algorithm_model(name), data, "algorithm")


def algorithm_model(name: str) -> type:
    """The config model a registered algorithm declares (its ``config_class``)."""
    return getattr(ALGORITHMS.get(name), "config_class", AlgorithmConfig)


def from_dict(data: Dict[str, Any]) -> ExperimentConfig:
    """A validated experiment config from a plain mapping (a YAML file's content)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {data!r}")
    algorithm = algorithm_config(data.get("algorithm"))
    cfg = parse(ExperimentConfig, {**data, "algorithm": algorithm})
    check_registered(cfg)
    if cfg.rl is not None:
        check_env(cfg.rl)
    if cfg.tune is not None:
        check_tune(cfg, data)
    return cfg


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> ExperimentConfig:
    return from_dict(load_config_dict(path, overrides))


def fields_not_in_schema(data: Dict[str, Any]) -> List[tuple]:
    """The locations (key tuples) of the fields in a config mapping that this distmeta's
    schema does not have, found in one validation pass; other problems are left to
    :func:`from_dict`."""
    from pydantic import ValidationError

    def extra(model, section) -> List[tuple]:
        try:
            model.model_validate(section)
        except ValidationError as exc:
            return [tuple(e["loc"]) for e in exc.errors(include_url=False) if e["type"] == "extra_forbidden"]
        return []

    found = extra(ExperimentConfig, {k: v for k, v in data.items() if k != "algorithm"})
    algorithm = data.get("algorithm")
    name = algorithm.get("name", DEFAULT_ALGORITHM) if isinstance(algorithm, dict) else None
    if isinstance(name, str) and name in ALGORITHMS:
        found += [("algorithm",) + loc for loc in extra(algorithm_model(name), algorithm)]
    return found


def without_removed_fields(data: Dict[str, Any], where: str, warn: bool = True) -> Dict[str, Any]:
    """A saved config (a run folder's ``config.yaml``, a checkpoint's config) as this distmeta
    reads it: a copy without the fields its schema no longer has, with one warning naming them.
    A saved run stays loadable after an upgrade; a dropped field that changed the model shows up
    as parameters that do not fit it. User input is never read this way: there an unknown field
    is an error (:func:`from_dict`)."""
    import warnings

    data = copy.deepcopy(data)
    dropped = []
    for loc in fields_not_in_schema(data):
        node = data
        for part in loc[:-1]:   # skips what is not a key, such as a union member's tag
            node = node[part] if isinstance(node, dict) and part in node else node
        if isinstance(node, dict) and loc[-1] in node:
            del node[loc[-1]]
            dropped.append(".".join(str(p) for p in loc))
    if dropped and warn:
        warnings.warn(f"{where}: written by a distmeta whose config had fields this version does not; "
                      f"ignoring {', '.join(dropped)}", stacklevel=2)
    return data


def set_field(cfg: ExperimentConfig, dotted: str, value: Any) -> None:
    """Set one typed field (CLI flags); the assignment is validated like the YAML."""
    *sections, name = dotted.split(".")
    owner = cfg
    for part in sections:
        owner = getattr(owner, part)
    try:
        setattr(owner, name, value)
    except Exception as exc:  # pydantic's ValidationError, formatted like parse errors
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        from distmeta.schema import error_line

        raise ConfigError(error_line(exc, type(owner), ".".join(sections))) from None


# --------------------------------------------------------------------------- checks that need the registries
def check_registered(cfg: ExperimentConfig) -> None:
    """Registered names, and a method or model that does not fit the task."""
    if cfg.rl is not None:
        if cfg.eval.test_time_augment:
            raise ConfigError("eval.test_time_augment: needs image classification tasks, not a Meta-RL experiment")
        return  # a Meta-RL experiment: data, task and model are not used
    for key, reg, value in (("model.name", MODELS, cfg.model.name), ("task.kind", TASKS, cfg.task.kind),
                            ("data.dataset", DATASETS, cfg.data.dataset)):
        if value not in reg:
            raise ConfigError(f"{key}: {value!r} is not one of {reg.names()}")
    task = TASKS.get(cfg.task.kind)
    kind = getattr(task, "kind", None)
    kinds = getattr(ALGORITHMS.get(cfg.algorithm.name), "task_kinds", None)
    if kind and kinds and kind not in kinds:
        raise ConfigError(f"algorithm.name: {cfg.algorithm.name} works on {' or '.join(kinds)} tasks; "
                          f"task.kind {cfg.task.kind!r} is {kind}")
    needs = getattr(MODELS.get(cfg.model.name), "inputs", "any")
    gives = getattr(task, "inputs", None)
    if needs != "any" and gives and needs != gives:
        raise ConfigError(f"model.name: {cfg.model.name} takes {needs}; task.kind {cfg.task.kind!r} gives {gives}")
    if kind and kind != "classification":
        for key in ("train_ways", "train_shots"):
            if getattr(cfg.task, key) is not None:
                raise ConfigError(f"task.{key}: applies to classification tasks; task.kind {cfg.task.kind!r} is {kind}")
        if getattr(cfg.algorithm, "head_init", "trained") == "prototypes":
            raise ConfigError(f"algorithm.head_init: prototypes needs classification tasks; task.kind "
                              f"{cfg.task.kind!r} is {kind}")
    if cfg.eval.test_time_augment and (kind, gives) != ("classification", "images"):
        raise ConfigError(f"eval.test_time_augment: needs image classification tasks; task.kind "
                          f"{cfg.task.kind!r} gives {kind} on {gives}")


def check_env(rl: RLConfig) -> None:
    from distmeta.envs import ENV_IDS, SHORT_NAMES, resolve_env_id

    env_id = resolve_env_id(rl.env)
    if env_id in ENV_IDS:
        return
    import gymnasium as gym

    if env_id not in gym.registry:
        raise ConfigError(f"rl.env: {rl.env!r} is not one of {sorted(SHORT_NAMES)} or a registered gymnasium id")


def reported_metrics(cfg: ExperimentConfig) -> List[str]:
    """What a run reports at each evaluation (the names Tune may select on)."""
    if cfg.rl is not None:
        return ["mean_return"]
    kind = getattr(TASKS.get(cfg.task.kind), "kind", "classification")
    return ["accuracy" if kind == "classification" else "mse", "loss"]


def check_tune(cfg: ExperimentConfig, data: Dict[str, Any]) -> None:
    """Every searched field exists and accepts a value of its distribution; the metric is reported."""
    tc = cfg.tune
    metrics = reported_metrics(cfg)
    if tc.metric is not None and tc.metric not in metrics:
        raise ConfigError(f"tune.metric: {tc.metric!r} is not reported by this experiment; reported: {metrics}")
    base = {k: v for k, v in data.items() if k != "tune"}
    for key, spec in tc.space.items():
        sample = next(iter(spec.values()))[0]
        try:
            from_dict(apply_overrides(copy.deepcopy(base), [f"{key}={json.dumps(sample)}"]))
        except ConfigError as exc:
            raise ConfigError(f"tune.space.{key}: {exc}") from None
