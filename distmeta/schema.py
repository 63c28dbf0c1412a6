"""The experiment config schema: typed sections with their ranges, choices and meanings.

Contract: this module imports nothing of distmeta. Each section is a pydantic
model that rejects unknown fields, non-finite numbers and values out of range;
:func:`parse` turns a mapping into a model or raises :class:`ConfigError` whose
message is one line naming the field (``algorithm.inner_lrr: unknown field;
allowed: ...``). Which algorithm section applies is decided above this module,
by the registry layer (:mod:`distmeta.config`): every algorithm declares its own
subclass of :class:`AlgorithmConfig` next to its code, so a user's algorithm
brings its own fields. The config reference in ``docs/config.md`` is generated
from these models (``python -m distmeta.config_reference``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Type, TypeVar, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, StrictBool, ValidationError,
                      model_validator)
from typing_extensions import Annotated


class ConfigError(ValueError):
    """A config field is missing, unknown, of the wrong type or out of range."""


def _refuse_bool(what: str):
    def check(value: Any) -> Any:
        if isinstance(value, bool):  # YAML's true/false would otherwise pass as 1/0
            raise ValueError(f"expected {what}, got {value!r}")
        return value
    return check


Int = Annotated[int, BeforeValidator(_refuse_bool("an integer"))]
Float = Annotated[float, BeforeValidator(_refuse_bool("a number"))]
Bool = StrictBool


class Section(BaseModel):
    """Base of every section: unknown fields, NaN and infinity are errors; assignments are validated."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    def to_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="python")


# --------------------------------------------------------------------------- supervised sections
class SplitSpec(Section):
    """Which classes make a split: named source sets restricted to / excluding named alphabets."""
    sets: List[str] = Field(default_factory=list, description="source sets, e.g. background_small1")
    alphabets: Optional[List[str]] = Field(None, description="keep only these alphabets (groups)")
    exclude_alphabets: Optional[List[str]] = Field(None, description="drop these alphabets (groups)")


class DataConfig(Section):
    dataset: str = Field("none", description="registered dataset: omniglot, miniimagenet, parquet, none or a user's")
    root: Optional[str] = Field(None, description="data folder; else $DISTMETA_DATA_DIR, the shipped sets, the cache")
    store: Optional[str] = Field(None, description="Parquet store path or URI (file://, s3://, gs://) instead of zips")
    image_size: Int = Field(28, gt=0, description="images are resized to this many pixels a side")
    preset: Optional[Literal["maml", "official", "minimal"]] = Field(
        None, description="Omniglot split preset (overrides train/val/test)")
    download: Bool = Field(True, description="download missing files (MD5-checked)")
    verify_md5: Bool = Field(True, description="MD5-check existing official zips (once per file, cached)")
    base_url: Optional[str] = Field(None, description="mirror to download from")
    seed: Int = Field(0, description="seed of computed splits (the MAML split)")
    train: SplitSpec = Field(default_factory=SplitSpec, description="classes of the training split")
    val: SplitSpec = Field(default_factory=SplitSpec, description="classes of the validation split")
    test: SplitSpec = Field(default_factory=SplitSpec, description="classes of the test split")


class AugmentConfig(Section):
    """Affine jitter of training episodes' images (``distmeta/tasks/augment.py``)."""
    rotate: Float = Field(10.0, ge=0, le=180, description="rotation range +- degrees")
    shear: Float = Field(0.3, ge=0, le=1, description="shear range +-")
    scale: List[Float] = Field(default_factory=lambda: [0.8, 1.2], description="scale range [low, high] per axis")
    translate: Float = Field(2.0, ge=0, description="shift range +- pixels")

    @model_validator(mode="after")
    def _scale(self):
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale: expected [low, high] with 0 < low <= high, got {self.scale}")
        return self


class TaskConfig(Section):
    kind: str = Field("sinusoid", description="registered task distribution: sinusoid, classification or a user's")
    ways: Int = Field(5, gt=0, description="classes per episode")
    train_ways: Optional[Int] = Field(None, gt=0, description="ways while training (ProtoNets); default ways")
    shots: Int = Field(1, gt=0, description="support examples per class (points per task for regression)")
    train_shots: Optional[Int] = Field(None, gt=0, description="support examples per class while training "
                                                               "(classification; Reptile trains with more shots "
                                                               "than it is tested with); default shots")
    queries: Int = Field(15, ge=0, description="query examples per class (points per task for regression)")
    rotations: Bool = Field(False, description="90/180/270-degree rotations as new classes")
    within_group: Bool = Field(False, description="draw all classes of an episode from one alphabet")
    augment: Optional[AugmentConfig] = Field(
        None, description="affine jitter of training images, each image its own draw (none by default)")
    amplitude: List[Float] = Field(default_factory=lambda: [0.1, 5.0], description="sinusoid amplitude [low, high]")
    phase: List[Float] = Field(default_factory=lambda: [0.0, 3.141592653589793], description="sinusoid phase [low, high]")
    x_range: List[Float] = Field(default_factory=lambda: [-5.0, 5.0], description="sinusoid input range [low, high]")

    @model_validator(mode="after")
    def _ranges(self):
        for key in ("amplitude", "phase", "x_range"):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"{key}: expected [low, high] with low <= high, got {lo_hi}")
        if self.train_ways is not None and self.train_ways < self.ways:
            raise ValueError(f"train_ways: must be >= ways ({self.ways}), got {self.train_ways}")
        return self


class ModelConfig(Section):
    name: str = Field("mlp", description="registered backbone: mlp, conv4, resnet12 or a user's")
    hidden: List[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [40, 40], description="MLP layer sizes")
    channels: Int = Field(64, gt=0, description="convolution channels (conv4, resnet12 width)")
    in_channels: Int = Field(1, gt=0, description="input image channels")
    batch_norm: Bool = Field(True, description="batch norm in the backbone")


class AlgorithmConfig(Section):
    """Fields every algorithm has; each algorithm extends it with its own (see its module)."""
    name: str = Field("maml", description="registered algorithm: maml, fomaml, reptile, protonet, siamese or a user's")
    executor: Literal["loop", "vmap", "auto"] = Field(
        "auto", description="per-task loop or one vmap over tasks; auto picks the faster one per device")


class OptimConfig(Section):
    optimizer: Literal["adam", "sgd"] = Field("adam", description="outer optimizer")
    lr: Float = Field(0.001, ge=0, description="outer learning rate")
    meta_batch: Int = Field(4, gt=0, description="tasks per meta-step")
    steps: Int = Field(1000, gt=0, description="meta-steps to train")
    lr_decay: Float = Field(1.0, gt=0, description="multiply lr by this every decay_every steps")
    decay_every: Int = Field(0, ge=0, description="steps between lr decays (0: constant)")
    grad_clip: Float = Field(0.0, ge=0, description="clip the meta-gradient norm (0: off)")


def _workers(value: Any) -> Any:
    """``engine.workers``: an integer >= 0 or ``auto`` (YAML's true/false and fractions refused)."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected an integer >= 0 or auto, got {value!r}")
    try:
        number = int(value)
    except (ValueError, OverflowError):
        raise ValueError(f"expected an integer >= 0 or auto, got {value!r}") from None
    if number != value and str(number) != value:
        raise ValueError(f"expected an integer >= 0 or auto, got {value!r}")
    if number < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return number


Workers = Annotated[Union[Annotated[int, Field(ge=0)], Literal["auto"]], BeforeValidator(_workers)]


class EngineConfig(Section):
    workers: Workers = Field(0, description="Ray task workers (0: in-process, no Ray; auto: in-process when an "
                                            "in-process meta-step takes under auto_step_ms or fewer than 2 "
                                            "workers fit, else as many workers as fit the CPUs)")
    auto_step_ms: Float = Field(25.0, gt=0, description="workers: auto: in-process meta-step time (ms) from which "
                                                        "workers pay off; below it Ray's per-step round trip costs "
                                                        "more than sharding saves")
    num_cpus: Float = Field(1.0, ge=0, description="CPUs per task worker")
    num_gpus: Float = Field(0.0, ge=0, description="GPUs per task worker (fractions share a GPU)")
    learner_num_cpus: Float = Field(1.0, ge=0, description="CPUs of the learner (the driver)")
    learner_num_gpus: Float = Field(0.0, ge=0, description="GPUs of the learner")
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement-group strategy of the workers")
    address: Optional[str] = Field(None, description="Ray cluster: empty/local embedded, auto, HOST:PORT, ray://")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where meta-gradients are computed")
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter and task dtype")
    shard_timeout_s: Float = Field(300.0, gt=0, description="a shard not back after this is re-run elsewhere")
    placement_timeout_s: Float = Field(120.0, gt=0, description="wait this long for the workers' resources")
    max_worker_restarts: Int = Field(8, ge=0, description="replaced workers before the run fails")
    allreduce_threshold_mb: Float = Field(0.0, ge=0, description="collective allreduce above this gradient size (0: off)")
    compiled_graph: Literal["auto", "always", "never"] = Field(
        "auto", description="Ray compiled graphs per worker (auto: parameters <= 64 KiB)")

    @model_validator(mode="after")
    def _worker_resources(self):
        if self.workers != 0 and self.num_cpus <= 0 and self.num_gpus <= 0:
            raise ValueError("num_cpus: a worker needs some CPU or GPU")
        return self


class EvalConfig(Section):
    """Every method: validation tasks during training (best.pt, Tune), test tasks at the end."""
    every: Int = Field(100, gt=0, description="iterations between validation evaluations")
    episodes: Int = Field(100, gt=0, description="validation tasks (episodes) per evaluation")
    final_episodes: Int = Field(600, gt=0, description="test tasks (episodes) of the final evaluation")
    test_time_augment: Int = Field(0, ge=0, description="image classification, test tasks only: adapt on the "
                                   "support and this many jittered copies of it, average the scores over as "
                                   "many jittered copies of each query (task.augment's ranges); 0: off")


class CheckpointConfig(Section):
    every: Int = Field(100, gt=0, description="iterations between checkpoints")
    keep_last: Int = Field(3, gt=0, description="latest checkpoints kept")
    keep_best: Bool = Field(True, description="keep best.pt, selected on validation")


class TrackingConfig(Section):
    """Where metrics go besides metrics.csv and TensorBoard."""
    mlflow_uri: Optional[str] = Field(None, description="MLflow tracking URI (needs the mlflow extra); None: off")
    mlflow_experiment: Optional[str] = Field(None, description="MLflow experiment name (default: the run name)")


# --------------------------------------------------------------------------- Meta-RL sections
class RL2Section(Section):
    episodes_per_trial: Int = Field(10, gt=0, description="K episodes of one task joined into one RLlib episode")
    trial_progress: Bool = Field(False, description="append k/K (fraction of the trial done) to the observation")
    prev_obs: Bool = Field(False, description="also feed the previous observation: one input holds the transition")
    recurrent: Literal["lstm", "gru", "attention"] = Field(
        "lstm", description="memory of the PPO RLModule: RLlib's LSTM, a GRU, or attention over the trial's last inputs")
    cell_size: Int = Field(64, gt=0, description="recurrent state size (attention: the attention's width)")
    hidden: List[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64], description="encoder layers")
    head_hidden: List[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="gru, attention: policy and value heads are MLPs over [h_t, x_t] (empty: linear)")
    chrono: Int = Field(0, ge=0, description="gru only: chrono-initialise the update gate for memory spans up to N steps (0: off)")
    memory: Int = Field(0, ge=0, description="attention only: inputs attended to, the current one included (0: max_seq_len)")
    heads: Int = Field(4, gt=0, description="attention only: attention heads (cell_size must divide by it)")
    max_seq_len: Int = Field(20, gt=0, description="BPTT chunk length")
    train_batch_size: Int = Field(4000, gt=0, description="env steps per PPO update")
    minibatch_size: Int = Field(1000, gt=0, description="PPO minibatch")
    num_epochs: Int = Field(5, gt=0, description="PPO epochs per update")
    lr: Float = Field(0.0005, gt=0, description="PPO learning rate")
    lr_final: Optional[Float] = Field(None, gt=0, description="anneal lr linearly to this over env_steps (None: constant)")
    gamma: Float = Field(0.99, ge=0, le=1, description="discount")
    gae_lambda: Float = Field(0.3, ge=0, le=1, description="GAE lambda")
    clip_param: Float = Field(0.2, ge=0, description="PPO clip")
    entropy_coeff: Float = Field(0.01, ge=0, description="entropy bonus")
    vf_loss_coeff: Float = Field(0.5, ge=0, description="value loss weight")
    grad_clip: Float = Field(10.0, ge=0, description="gradient norm clip (0: off)")

    @model_validator(mode="after")
    def _batches(self):
        if self.chrono and self.recurrent != "gru":
            raise ValueError(f"chrono: needs recurrent: gru, got recurrent: {self.recurrent}")
        if self.chrono and self.chrono < 3:
            raise ValueError(f"chrono: memory spans up to N steps need N >= 3 (0: off), got {self.chrono}")
        if self.head_hidden and self.recurrent == "lstm":
            raise ValueError("head_hidden: needs recurrent: gru or attention (RLlib's LSTM module has its own heads)")
        if self.recurrent == "attention" and self.cell_size % self.heads:
            raise ValueError(f"heads: cell_size ({self.cell_size}) must divide by it, got {self.heads}")
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size: must be <= train_batch_size ({self.train_batch_size}), "
                             f"got {self.minibatch_size}")
        return self


class MAMLSection(Section):
    meta_batch: Int = Field(20, gt=0, description="tasks per meta-iteration")
    episodes_per_task: Int = Field(20, gt=0, description="episodes per task before and after each inner step")
    inner_steps: Int = Field(1, ge=1, description="policy-gradient inner steps")
    inner_lr: Float = Field(0.1, ge=0, description="inner step size")
    first_order: Bool = Field(False, description="drop the second-order terms of the inner step")
    outer: Literal["promp", "vpg"] = Field("promp", description="outer objective: PPO-clip (ProMP) or plain PG")
    outer_lr: Float = Field(0.001, gt=0, description="outer Adam learning rate")
    outer_epochs: Int = Field(5, gt=0, description="ProMP gradient steps per meta-iteration")
    clip_param: Float = Field(0.2, ge=0, description="ProMP clip")
    kl_coeff: Float = Field(0.0, ge=0, description="ProMP inner-KL penalty")
    baseline: Literal["linear", "none"] = Field("linear", description="value baseline of the advantages")
    gamma: Float = Field(0.99, ge=0, le=1, description="discount")
    hidden: List[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [100, 100], description="policy layers")
    init_log_std: Float = Field(-1.0, description="initial log standard deviation of Gaussian actions")
    eval_inner_steps: Int = Field(3, ge=0, description="evaluate after 0..eval_inner_steps inner steps")


class RLConfig(Section):
    algorithm: Literal["rl2", "maml_rl"] = Field("rl2", description="Meta-RL method")
    env: str = Field("bandit", description="env short name (bandit, point_nav, ...) or gymnasium id")
    env_config: Dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the env")
    env_steps: Int = Field(100000, gt=0, description="training budget in environment steps")
    num_env_runners: Int = Field(0, ge=0, description="remote EnvRunners (0: sample in the driver)")
    num_envs_per_env_runner: Int = Field(8, gt=0, description="vectorised sub-environments per EnvRunner")
    num_learners: Int = Field(0, ge=0, description="remote Learners (0: learn in the driver)")
    train_tasks: Int = Field(0, ge=0, description="0: a fresh task per trial; N: a fixed set of N training tasks")
    task_seed: Int = Field(0, description="seed of the train/validation/test task split")
    baselines: Bool = Field(True, description="compute the same-run baselines at evaluation")
    rl2: RL2Section = Field(default_factory=RL2Section, description="RL^2 (PPO, recurrent policy) settings")
    maml: MAMLSection = Field(default_factory=MAMLSection, description="MAML-RL settings")

    @model_validator(mode="after")
    def _learners(self):
        if self.num_learners > 1 and self.algorithm == "maml_rl" and self.maml.meta_batch < self.num_learners:
            raise ValueError(f"maml.meta_batch: must be >= num_learners ({self.num_learners}) so every learner "
                             f"gets a task, got {self.maml.meta_batch}")
        return self


# --------------------------------------------------------------------------- Tune
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")


class TuneConfig(Section):
    space: Dict[str, Dict[str, Any]] = Field(default_factory=dict, description="dotted field -> {distribution: args}")
    num_samples: Int = Field(1, gt=0, description="samples of the space (repeats of a grid)")
    metric: Optional[str] = Field(None, description="reported metric to select on (default by method)")
    mode: Optional[Literal["max", "min"]] = Field(None, description="maximise or minimise metric")
    scheduler: Literal["asha", "pbt", "median", "fifo"] = Field("fifo", description="trial scheduler")
    scheduler_options: Dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the scheduler")
    search: Literal["random", "grid", "optuna", "hyperopt"] = Field("random", description="search algorithm")
    max_concurrent: Int = Field(0, ge=0, description="trials at once (0: as resources allow)")
    stop: Dict[str, Any] = Field(default_factory=dict, description="Tune stop criteria")

    @model_validator(mode="after")
    def _space(self):
        if not self.space:
            raise ValueError("space: give at least one field to search")
        for key, spec in self.space.items():
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ValueError(f"space.{key}: expected one of {list(DISTRIBUTIONS)} with its arguments, got {spec!r}")
            kind, args = next(iter(spec.items()))
            if kind in ("loguniform", "uniform", "randint") and (not isinstance(args, list) or len(args) != 2):
                raise ValueError(f"space.{key}.{kind}: expected [low, high], got {args!r}")
            if kind in ("choice", "grid") and (not isinstance(args, list) or not args):
                raise ValueError(f"space.{key}.{kind}: expected a non-empty list, got {args!r}")
        if self.search == "grid" and any(next(iter(s)) not in ("grid", "choice") for s in self.space.values()):
            raise ValueError("search: grid needs every space entry to be grid or choice")
        return self


# --------------------------------------------------------------------------- the experiment
class ExperimentConfig(Section):
    name: str = Field("experiment", description="run name (run folders are named after it)")
    seed: Int = Field(0, description="seed of parameters and task sampling")
    budget: str = Field("", description="stated wall-clock budget, for humans")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset and splits")
    task: TaskConfig = Field(default_factory=TaskConfig, description="task distribution")
    model: ModelConfig = Field(default_factory=ModelConfig, description="backbone")
    algorithm: SerializeAsAny[AlgorithmConfig] = Field(default_factory=AlgorithmConfig,
                                                       description="meta-learning method and its own fields")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="outer optimisation")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="who computes meta-gradients, where")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="validation during training, final test")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpoint cadence")
    log_every: Int = Field(10, gt=0, description="iterations between metric rows")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow, besides TensorBoard")
    rl: Optional[RLConfig] = Field(None, description="Meta-RL section (RL^2, MAML-RL); replaces data/task/model")
    tune: Optional[TuneConfig] = Field(None, description="Ray Tune search over this experiment's fields")


# --------------------------------------------------------------------------- parsing and errors
M = TypeVar("M", bound=BaseModel)

_PHRASES = {
    "int_parsing": "expected an integer", "int_from_float": "expected an integer", "int_type": "expected an integer",
    "float_parsing": "expected a number", "float_type": "expected a number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
    "list_type": "expected a list", "dict_type": "expected a mapping", "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping", "string_type": "expected a string",
    "finite_number": "expected a finite number",
}


def _where(loc, prefix: str) -> str:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f"{'.' if text else ''}{part}"
    return text or "config"


def _model_at(model: Type[BaseModel], loc) -> Optional[Type[BaseModel]]:
    """The section model at ``loc`` (None past a non-model field)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        ann = inner[0] if inner else ann
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def error_line(exc: ValidationError, model: Type[BaseModel], prefix: str = "") -> str:
    """One line for the first error of ``exc``: the dotted field, then what is wrong."""
    err = exc.errors(include_url=False)[0]
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    where = _where(loc, prefix)
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = ", ".join(sorted(owner.model_fields)) if owner else "?"
        return f"{where}: unknown field; allowed: {allowed}"
    if kind == "literal_error":
        return f"{where}: {value!r} is not one of [{err['ctx']['expected'].replace(' or ', ', ')}]"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(err["ctx"].values()))
        return f"{where}: must be {bounds[kind]} {limit}, got {value!r}"
    if kind in _PHRASES:
        return f"{where}: {_PHRASES[kind]}, got {value!r}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind == "value_error" and ":" in message.split(" ")[0]:  # a validator naming its own field
        return f"{_where(loc, prefix) + '.' if loc else (prefix + '.' if prefix else '')}{message}"
    return f"{where}: {message}"


def parse(model: Type[M], data: Any, prefix: str = "") -> M:
    """``model`` validated from ``data`` (None: all defaults), or ConfigError with one line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(error_line(exc, model, prefix)) from None
