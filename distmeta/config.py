"""Typed, validated experiment configs.

Contract: ``load_config(path, overrides)`` reads a YAML file, applies
``key.sub=value`` overrides and returns an :class:`ExperimentConfig` or raises
:class:`ConfigError` whose message is one line naming the offending field and
the allowed values. Nothing is started before a config validates.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union


class ConfigError(ValueError):
    """A config field is missing, unknown, of the wrong type or out of range."""


@dataclass
class SplitSpec:
    """Which classes make a split: named source sets (e.g. ``background_small1``)
    restricted to / excluding named alphabets."""
    sets: List[str] = field(default_factory=list)
    alphabets: Optional[List[str]] = None
    exclude_alphabets: Optional[List[str]] = None


@dataclass
class DataConfig:
    dataset: str = "none"            # registry name: omniglot | miniimagenet | parquet | none | user's
    root: Optional[str] = None       # data root; else $DISTMETA_DATA_DIR; else the cache folder
    store: Optional[str] = None      # Parquet store path or URI (file://, s3://, gs://) instead of zips
    image_size: int = 28
    preset: Optional[str] = None     # omniglot: maml | official | minimal (overrides splits)
    download: bool = True
    base_url: Optional[str] = None
    seed: int = 0                    # seed of computed splits (the MAML split)
    train: SplitSpec = field(default_factory=SplitSpec)
    val: SplitSpec = field(default_factory=SplitSpec)
    test: SplitSpec = field(default_factory=SplitSpec)


@dataclass
class TaskConfig:
    kind: str = "sinusoid"           # sinusoid | classification | user's
    ways: int = 5
    train_ways: Optional[int] = None  # ProtoNets may train with more ways than it tests
    shots: int = 1
    queries: int = 15
    rotations: bool = False          # 90/180/270 rotations as new classes
    within_group: bool = False       # draw all classes of an episode from one alphabet
    amplitude: List[float] = field(default_factory=lambda: [0.1, 5.0])
    phase: List[float] = field(default_factory=lambda: [0.0, 3.141592653589793])
    x_range: List[float] = field(default_factory=lambda: [-5.0, 5.0])


@dataclass
class ModelConfig:
    name: str = "mlp"                # mlp | conv4 | resnet12 | user's
    hidden: List[int] = field(default_factory=lambda: [40, 40])
    channels: int = 64
    in_channels: int = 1
    batch_norm: bool = True


@dataclass
class AlgorithmConfig:
    name: str = "maml"               # maml | fomaml | reptile | protonet | siamese | user's
    inner_steps: int = 1
    inner_lr: float = 0.01
    eval_inner_steps: Optional[int] = None
    first_order: bool = False
    learn_inner_lr: bool = False     # Meta-SGD: per-parameter learned inner learning rates
    anil: bool = False               # adapt the head only
    executor: str = "auto"           # loop | vmap | auto (fastest per device)
    inner_optimizer: str = "sgd"     # reptile: sgd | adam
    epsilon: float = 1.0             # reptile outer step size (annealed linearly to epsilon_final)
    epsilon_final: float = 0.0
    loss: str = "contrastive"        # siamese: contrastive | verification
    margin: float = 1.0
    pairs: int = 64                  # siamese pairs per episode (half same, half different)


@dataclass
class OptimConfig:
    optimizer: str = "adam"          # adam | sgd
    lr: float = 0.001
    meta_batch: int = 4
    steps: int = 1000
    lr_decay: float = 1.0            # multiply lr by this every decay_every steps
    decay_every: int = 0
    grad_clip: float = 0.0


@dataclass
class EngineConfig:
    workers: int = 0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    learner_num_cpus: float = 1.0
    learner_num_gpus: float = 0.0
    placement: str = "PACK"          # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    address: Optional[str] = None    # None/"" embedded local Ray; "auto"; "HOST:PORT"
    device: str = "auto"             # auto | cpu | cuda
    dtype: str = "float32"           # float32 | float64
    shard_timeout_s: float = 300.0
    placement_timeout_s: float = 120.0
    max_worker_restarts: int = 8
    allreduce_threshold_mb: float = 0.0  # 0 disables collective allreduce
    compiled_graph: str = "auto"     # auto (parameters <= 64 KiB) | always | never: Ray compiled graphs per worker


@dataclass
class EvalConfig:
    every: int = 100
    episodes: int = 100              # periodic validation episodes
    final_episodes: int = 600
    split: str = "val"


@dataclass
class CheckpointConfig:
    every: int = 100
    keep_last: int = 3
    keep_best: bool = True


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    budget: str = ""                 # stated wall-clock budget, for humans
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log_every: int = 10
    rl: Dict[str, Any] = field(default_factory=dict)     # Meta-RL section, validated by distmeta.rl
    tune: Dict[str, Any] = field(default_factory=dict)   # Tune section, validated by distmeta.tune

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "algorithm.executor": ["loop", "vmap", "auto"],
    "algorithm.inner_optimizer": ["sgd", "adam"],
    "algorithm.loss": ["contrastive", "verification"],
    "optim.optimizer": ["adam", "sgd"],
    "engine.placement": ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
    "engine.device": ["auto", "cpu", "cuda"],
    "engine.dtype": ["float32", "float64"],
    "engine.compiled_graph": ["auto", "always", "never"],
    "eval.split": ["train", "val", "test"],
    "data.preset": [None, "maml", "official", "minimal"],
}
NON_NEGATIVE = [
    "algorithm.inner_steps", "algorithm.inner_lr", "algorithm.margin", "algorithm.epsilon",
    "algorithm.epsilon_final", "optim.lr", "optim.grad_clip", "optim.decay_every", "engine.workers",
    "engine.num_cpus", "engine.num_gpus", "engine.learner_num_cpus", "engine.learner_num_gpus",
    "engine.shard_timeout_s", "engine.placement_timeout_s", "task.queries", "eval.episodes",
    "eval.final_episodes", "engine.allreduce_threshold_mb",
]
POSITIVE = ["task.ways", "task.shots", "optim.meta_batch", "optim.steps", "data.image_size",
            "checkpoint.keep_last", "log_every", "algorithm.pairs"]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"{where + '.' if where else ''}{key}: unknown field; allowed: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _get(cfg: ExperimentConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Range and choice checks that types alone do not express; raises ConfigError."""
    from distmeta.registry import ALGORITHMS, MODELS, TASKS, DATASETS
    import distmeta.builtin  # noqa: F401  (registers the built-in components)

    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {_get(cfg, key)!r} is not one of {allowed}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {_get(cfg, key)!r}")
    for key in POSITIVE:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(cfg, key)!r}")
    if cfg.rl:  # Meta-RL experiments: the rl section is validated by distmeta.rl
        from distmeta.rl import validate_rl

        validate_rl(cfg)
        return cfg
    for key, reg in (("algorithm.name", ALGORITHMS), ("model.name", MODELS), ("task.kind", TASKS),
                     ("data.dataset", DATASETS)):
        if _get(cfg, key) not in reg:
            raise ConfigError(f"{key}: {_get(cfg, key)!r} is not one of {reg.names()}")
    if cfg.task.train_ways is not None and cfg.task.train_ways < cfg.task.ways:
        raise ConfigError(f"task.train_ways: must be >= task.ways ({cfg.task.ways}), got {cfg.task.train_ways}")
    for key in ("task.amplitude", "task.phase", "task.x_range"):
        lo_hi = _get(cfg, key)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise ConfigError(f"{key}: expected [low, high] with low <= high, got {lo_hi}")
    if cfg.engine.workers > 0 and cfg.engine.num_cpus <= 0 and cfg.engine.num_gpus <= 0:
        raise ConfigError("engine.num_cpus: a worker needs some CPU or GPU")
    if cfg.algorithm.learn_inner_lr and cfg.algorithm.name not in ("maml", "fomaml"):
        raise ConfigError("algorithm.learn_inner_lr: only MAML/FOMAML (Meta-SGD) learn inner learning rates")
    return cfg


def from_dict(data: Dict[str, Any]) -> ExperimentConfig:
    return validate(_build(ExperimentConfig, data, ""))


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
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
        node[parts[-1]] = _parse_value(text)
    return data


def load_config_dict(path: Union[str, Path], overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return apply_overrides(data, overrides or [])


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> ExperimentConfig:
    return from_dict(load_config_dict(path, overrides))
