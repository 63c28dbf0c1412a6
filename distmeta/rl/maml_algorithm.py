"""MAML-RL as an RLlib ``Algorithm`` on the new API stack: the one MAML-RL training path.

Usage, like any RLlib algorithm (``tune.Tuner(MAMLRL, param_space=config)`` too)::

    config = (MAMLRLConfig()
              .environment("distmeta/PointNav-v0", env_config={"horizon": 100})
              .env_runners(num_env_runners=2, num_envs_per_env_runner=200)
              .learners(num_learners=2)
              .training(meta_batch=20, episodes_per_task=10, inner_lr=0.1, outer_lr=0.003))
    algo = config.build_algo()
    algo.train()

or ``MAMLRLConfig.from_distmeta(rl, seed, train_tasks)`` from distmeta's typed ``rl:`` section.

One meta-iteration (:meth:`MAMLRL.training_step`):

1. **Tasks**: the meta-batch of iteration ``t`` is a pure function of (run seed, t): drawn
   from ``train_tasks`` when given, else fresh from the env's task distribution. Task ``i``
   gets the seed ``seed_for(run seed, t, 1, i)``.
2. **Sampling** (:class:`MAMLEnvRunner`, RLlib EnvRunners): the meta-batch is split into one
   contiguous shard per healthy remote EnvRunner (the local EnvRunner when there are none).
   A runner samples its shard with :func:`distmeta.rl.maml_rl.sample_tasks`: per task,
   episodes with theta, the inner step on the runner (no graph), episodes with the adapted
   parameters. Its sub-environments of several tasks step together with one batched
   forward holding per-task parameters; no RLlib connectors run. Results carry their task
   indices and are reassembled in task order; a shard lost with its runner (RLlib's
   ``foreach_env_runner`` drops a dead runner's result) is detected by its missing indices,
   the runners are restored (:meth:`Algorithm.restore_env_runners`) and the shard is sent
   again. Seeds depend on the task, never on the runner: any runner count gives the same data.
3. **Learning** (:class:`MAMLRLTorchLearner`, RLlib Learners): every Learner got a rank at
   setup through ``learner_group.foreach_learner``; each takes its shard of the tasks and
   returns the sum of its per-task meta-gradients (second order through the inner step,
   ProMP's PPO-clip outer objective); the driver averages them over all tasks and every
   Learner applies the same average with its Adam, ``outer_epochs`` times. (torch DDP cannot
   carry ``torch.autograd.grad``; the copies stay identical because they apply the same
   numbers.)

Same-run baselines live in the same Algorithm as extra parameter slots on the Learners
(:meth:`MAMLRL.add_baseline`, :meth:`MAMLRL.train_baseline`): "pretrained" is PPO-clip policy
gradient on the task mixture (``inner_steps=0``), "oracle" the same with the env's
``oracle: True`` observation. Evaluation (:meth:`MAMLRL.evaluate_tasks`) samples through the
same EnvRunner code and returns, per task, the mean episode return after 0..K inner steps (and,
for envs that report ``info["success"]`` such as Meta-World, the fraction of successful episodes;
:class:`SuccessRecorder`).
"""
from __future__ import annotations

import copy
import time
import uuid
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch

from ray.rllib.algorithms import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

import distmeta.envs as distmeta_envs  # registers the distmeta env ids in every process that loads this
from distmeta.rl import maml_rl as core

DEFAULT = DEFAULT_MODULE_ID
STATE_KEY = "distmeta_maml_rl"
# Same-run baselines: slot name -> (env_config override, seed offset). The oracle only where the
# env has an ``oracle`` observation (point navigation).
BASELINES = {"pretrained": ({}, 101), "oracle": ({"oracle": True}, 202)}
ORACLE_ENVS = ("distmeta/PointNav-v0",)


def _key(name: str) -> str:
    return name.replace(".", "__")


# -- the RLModule -----------------------------------------------------------------------------
class MAMLPolicyModule(TorchRLModule):
    """The functional core's MLP policy as an RLModule (Gaussian or categorical head)."""

    def setup(self):
        mc = self.model_config
        self._discrete = hasattr(self.action_space, "n")
        act_dim = int(self.action_space.n) if self._discrete else int(np.prod(self.action_space.shape))
        spec = core.PolicySpec(int(np.prod(self.observation_space.shape)), act_dim, list(mc.get("hidden", [32, 32])),
                               self._discrete, float(mc.get("init_log_std", -1.0)))
        init = core.init_policy(spec, int(mc.get("seed", 0)))
        self._names = list(init)
        self.policy = torch.nn.ParameterDict({_key(k): torch.nn.Parameter(v) for k, v in init.items()})

    def functional_params(self) -> core.Params:
        return {k: self.policy[_key(k)] for k in self._names}

    @torch.no_grad()
    def load_functional(self, params: core.Params) -> None:
        for k in self._names:
            self.policy[_key(k)].copy_(torch.as_tensor(params[k]))

    def _forward(self, batch, **kwargs):
        p = self.functional_params()
        out = core._mlp(p, batch[Columns.OBS].float())
        if not self._discrete:
            out = torch.cat([out, p["log_std"].expand_as(out)], dim=-1)
        return {Columns.ACTION_DIST_INPUTS: out}

    def get_inference_action_dist_cls(self):
        return self.get_exploration_action_dist_cls()

    def get_exploration_action_dist_cls(self):
        from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical, TorchDiagGaussian

        return TorchCategorical if self._discrete else TorchDiagGaussian

    def get_train_action_dist_cls(self):
        return self.get_exploration_action_dist_cls()


def _single(module):
    """The policy RLModule inside a MultiRLModule, unwrapped from DDP (several Learners)."""
    m = module[DEFAULT] if isinstance(module, MultiRLModule) else module
    return m.unwrapped() if hasattr(m, "unwrapped") else m


# -- success (Meta-World's info["success"]) ----------------------------------------------------
class SuccessRecorder(gym.Wrapper):
    """Records, per episode, whether the env's ``info["success"]`` was true at any step, keyed by
    the episode's reset seed (``log[seed]``: 1.0 / 0.0; nothing for envs without ``success``).
    Reset seeds are a pure function of (task seed, phase, episode) in
    :func:`distmeta.rl.maml_rl.sample_tasks`, so they name episodes whatever the chunking."""

    def __init__(self, env):
        super().__init__(env)
        self.log: Dict[int, float] = {}
        self._seed: Optional[int] = None
        self._success: Optional[float] = None

    def reset(self, *, seed=None, options=None):
        self._seed, self._success = seed, None
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "success" in info:
            self._success = max(self._success or 0.0, float(bool(info["success"])))
        if (terminated or truncated) and self._success is not None and self._seed is not None:
            self.log[int(self._seed)] = self._success
        return obs, reward, terminated, truncated, info


class SuccessPool(core.TaskEnvPool):
    """A :class:`~distmeta.rl.maml_rl.TaskEnvPool` whose envs record ``info["success"]``."""

    def get(self, n: int) -> List[Any]:
        envs = super().get(n)
        for j, env in enumerate(envs):
            if not isinstance(env, SuccessRecorder):
                self.envs[j] = SuccessRecorder(env)
        return self.envs[:n]

    def clear(self) -> None:
        for env in self.envs:
            if isinstance(env, SuccessRecorder):
                env.log.clear()

    def success(self, seeds: Sequence[int], episodes: int, inner_steps: int) -> Optional[np.ndarray]:
        """``[len(seeds), inner_steps + 1]``: per task the fraction of its episodes after 0..K inner
        steps with success (None when the env never reported ``success``)."""
        log: Dict[int, float] = {}
        for env in self.envs:
            if isinstance(env, SuccessRecorder):
                log.update(env.log)
        if not log:
            return None
        out = np.full((len(seeds), inner_steps + 1), np.nan)
        for i, s in enumerate(seeds):
            for phase in range(inner_steps + 1):
                got = [log[k] for k in (core.seed_for(s, phase, 1 + e) for e in range(episodes)) if k in log]
                if got:
                    out[i, phase] = float(np.mean(got))
        return out


def success_by_step(results: Sequence[core.TaskResult]) -> Optional[np.ndarray]:
    """The tasks' success fractions ``[tasks, K+1]`` (see :class:`SuccessPool`), None if the env
    does not report ``success``."""
    rows = [getattr(r, "success", None) for r in results]
    return None if any(x is None for x in rows) else np.stack(rows)


# -- the EnvRunner ------------------------------------------------------------------------------
class MAMLEnvRunner(SingleAgentEnvRunner):
    """An RLlib EnvRunner that samples meta-batch shards (:meth:`sample_tasks`).

    Its sub-environments are those of RLlib's vector env (``num_envs_per_env_runner`` of
    them: the lock-step width) plus more when a shard needs them; an ``env_config`` override
    (the oracle baseline) gets its own envs. RLlib's ``sample()`` is not used by MAML-RL.
    """

    def __init__(self, *args, **kwargs):
        distmeta_envs.register_all()  # a remote runner builds distmeta envs by gymnasium id
        super().__init__(*args, **kwargs)
        self._pools: Dict[str, core.TaskEnvPool] = {}

    def _pool(self, env_config: Optional[Dict[str, Any]]) -> core.TaskEnvPool:
        key = core.env_key(env_config)
        if key not in self._pools:
            vec = getattr(self.env, "unwrapped", None) if self.env is not None else None
            own = list(getattr(vec, "envs", ())) if not env_config else []
            self._pools[key] = SuccessPool(self.config.env, {**dict(self.config.env_config),
                                                             **(env_config or {})}, own)
        return self._pools[key]

    def sample_tasks(self, params: core.Params, tasks: Sequence[Dict[str, Any]], task_indices: Sequence[int],
                     seeds: Sequence[int], episodes: int, inner_steps: int, inner_lr: float, gamma: float = 0.99,
                     baseline: str = "linear", keep_data: bool = True,
                     env_config: Optional[Dict[str, Any]] = None) -> List[core.TaskResult]:
        """Sample a shard: for each task, ``episodes`` episodes with ``params``, an inner step,
        episodes with the adapted parameters (``inner_steps`` times). Returns one
        :class:`~distmeta.rl.maml_rl.TaskResult` per task, tagged with its index."""
        spec = core.SampleSpec(episodes, inner_steps, inner_lr, gamma, baseline, keep_data)
        pool = self._pool(env_config)
        pool.clear()
        out = core.sample_tasks(pool, params, list(tasks), list(task_indices), list(seeds),
                                spec, width=int(self.config.num_envs_per_env_runner))
        success = pool.success(list(seeds), episodes, inner_steps)
        if success is not None:  # Meta-World: per task, the success fraction after 0..K inner steps
            for r, row in zip(out, success):
                r.success = row
        return out


# -- the Learner ----------------------------------------------------------------------------------
class MAMLRLTorchLearner(TorchLearner):
    """Owns the meta-parameters (the RLModule's, with RLlib's Adam) and the baselines' (extra
    slots with their own Adam); computes its shard's meta-gradient and applies averages."""

    def compute_loss_for_module(self, **kwargs):  # the meta-loss is computed in distmeta_grad
        raise NotImplementedError("MAMLRLTorchLearner is driven by MAMLRL.training_step")

    def distmeta_token(self) -> str:
        if not hasattr(self, "_distmeta_token"):
            self._distmeta_token = uuid.uuid4().hex
        return self._distmeta_token

    def distmeta_set_rank(self, ranks: Dict[str, int]) -> None:
        self._distmeta_rank = ranks[self.distmeta_token()]

    def _slot(self, slot: str):
        if slot == DEFAULT:
            return _single(self.module).functional_params(), self.get_optimizer()
        return self._distmeta_slots[slot]

    def distmeta_add_slot(self, slot: str, params: core.Params, lr: float) -> None:
        device = next(iter(_single(self.module).functional_params().values())).device
        leaves = {k: v.detach().clone().to(device).requires_grad_(True) for k, v in params.items()}
        self.__dict__.setdefault("_distmeta_slots", {})[slot] = (leaves, torch.optim.Adam(list(leaves.values()), lr=lr))

    def distmeta_params(self, slot: str = DEFAULT) -> core.Params:
        return {k: v.detach().cpu().clone() for k, v in self._slot(slot)[0].items()}

    def distmeta_set_data(self, shards: Sequence[Any], slot: str, maml: Dict[str, Any], discrete: bool) -> None:
        """Keep this Learner's shard (``shards[rank]``, an ObjectRef on remote Learners)."""
        import ray

        shard = shards[getattr(self, "_distmeta_rank", 0)]
        shard = ray.get(shard) if isinstance(shard, ray.ObjectRef) else shard
        device = next(iter(self._slot(slot)[0].values())).device
        self._distmeta_data = ([_task_to(td, device) for td in shard], slot, SimpleNamespace(**maml), discrete)

    def distmeta_grad(self):
        """(n, g): the number of tasks of this shard and the sum over them of the per-task
        meta-gradients ``d/dtheta [-J_outer(adapt(theta, inner_i), outer_i)]`` (flat)."""
        data, slot, m, discrete = self._distmeta_data
        params = self._slot(slot)[0]
        if not data:
            return 0, torch.zeros(sum(p.numel() for p in params.values()))
        loss = core.meta_loss(params, data, m, discrete) * len(data)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params.values())])
        return len(data), flat.detach().cpu()

    def distmeta_apply(self, flat: torch.Tensor, slot: str = DEFAULT) -> None:
        """One Adam step with the averaged meta-gradient ``flat`` (the same on every Learner)."""
        params, opt = self._slot(slot)
        opt.zero_grad()
        for p, g in zip(params.values(), core.unflatten(flat, params).values()):
            p.grad = g.to(p.device).clone()
        opt.step()

    def distmeta_state(self, slot: str = DEFAULT) -> Dict[str, Any]:
        # deep copies: an optimizer's state_dict() and load_state_dict() share the moment tensors
        return {"params": self.distmeta_params(slot), "optimizer": copy.deepcopy(self._slot(slot)[1].state_dict())}

    def distmeta_load(self, slot: str, state: Dict[str, Any]) -> None:
        params, opt = self._slot(slot)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(torch.as_tensor(state["params"][k]).to(p.device))
        if state.get("optimizer"):
            opt.load_state_dict(copy.deepcopy(state["optimizer"]))


def _task_to(td: core.TaskData, device) -> core.TaskData:
    def move(b: core.Batch) -> core.Batch:
        return core.Batch(b.obs.to(device), b.act.to(device), b.adv.to(device), b.logp_old.to(device),
                          b.episode_returns)

    return core.TaskData([move(b) for b in td.inner], move(td.outer))


# -- the config ------------------------------------------------------------------------------------
MAML_FIELDS = ("meta_batch", "episodes_per_task", "inner_steps", "inner_lr", "first_order", "outer",
               "outer_epochs", "clip_param", "kl_coeff", "baseline", "hidden", "init_log_std", "eval_inner_steps",
               "train_tasks")


class MAMLRLConfig(AlgorithmConfig):
    """RLlib config of :class:`MAMLRL`. ``training()`` takes the MAML fields of
    :class:`distmeta.schema.MAMLSection` (``outer_lr`` is RLlib's ``lr``) and ``train_tasks``
    (a fixed list of task dicts; None: fresh tasks every iteration)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or MAMLRL)
        self.meta_batch, self.episodes_per_task, self.inner_steps, self.inner_lr = 20, 20, 1, 0.1
        self.first_order, self.outer, self.outer_epochs, self.clip_param, self.kl_coeff = False, "promp", 5, 0.2, 0.0
        self.baseline, self.hidden, self.init_log_std, self.eval_inner_steps = "linear", [100, 100], -1.0, 3
        self.train_tasks: Optional[List[Dict[str, Any]]] = None
        self.lr, self.gamma = 0.001, 0.99
        self.env_runner_cls = MAMLEnvRunner

    def training(self, *, outer_lr=NotProvided, **kwargs) -> "MAMLRLConfig":
        for name in MAML_FIELDS:
            value = kwargs.pop(name, NotProvided)
            if value is not NotProvided:
                setattr(self, name, list(value) if name in ("hidden",) else value)
        if outer_lr is not NotProvided:
            kwargs["lr"] = outer_lr
        super().training(**kwargs)
        return self

    def environment(self, env=NotProvided, **kwargs) -> "MAMLRLConfig":
        """As RLlib's; a distmeta short name (``point_nav``) becomes its gymnasium id."""
        if isinstance(env, str):
            env = distmeta_envs.resolve_env_id(env)
        return super().environment(env, **kwargs)

    def get_default_rl_module_spec(self):
        return RLModuleSpec(module_class=MAMLPolicyModule,
                            model_config={"hidden": list(self.hidden), "init_log_std": float(self.init_log_std),
                                          "seed": int(self.seed or 0)})

    def get_default_learner_class(self):
        return MAMLRLTorchLearner

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.env, str):
            raise ValueError("MAMLRLConfig.environment: a gymnasium id or distmeta short name (task-settable env)")
        if self.outer not in ("promp", "vpg") or self.baseline not in ("linear", "none"):
            raise ValueError(f"MAMLRLConfig: outer {self.outer!r} / baseline {self.baseline!r} unknown")
        if self.meta_batch < max(1, self.num_learners) or self.episodes_per_task < 1:
            raise ValueError(f"MAMLRLConfig: meta_batch ({self.meta_batch}) must be >= num_learners and "
                             f"episodes_per_task >= 1")

    @classmethod
    def from_distmeta(cls, rl, seed: int, train_tasks: Optional[List[Dict[str, Any]]] = None) -> "MAMLRLConfig":
        """The config of distmeta's typed ``rl:`` section (:class:`distmeta.schema.RLConfig`)."""
        m = rl.maml
        return (
            cls()
            .environment(rl.env, env_config=dict(rl.env_config))
            .env_runners(num_env_runners=rl.num_env_runners,
                         num_envs_per_env_runner=max(rl.num_envs_per_env_runner, m.episodes_per_task))
            .learners(num_learners=rl.num_learners)
            .training(meta_batch=m.meta_batch, episodes_per_task=m.episodes_per_task, inner_steps=m.inner_steps,
                      inner_lr=m.inner_lr, first_order=m.first_order, outer=m.outer, outer_lr=m.outer_lr,
                      outer_epochs=m.outer_epochs, clip_param=m.clip_param, kl_coeff=m.kl_coeff,
                      baseline=m.baseline, gamma=m.gamma, hidden=list(m.hidden), init_log_std=m.init_log_std,
                      eval_inner_steps=m.eval_inner_steps, train_tasks=list(train_tasks) if train_tasks else None)
            .fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=1.0)
            .debugging(seed=int(seed), log_level="ERROR")
        )


# -- the Algorithm ----------------------------------------------------------------------------------
class MAMLRL(Algorithm):
    """MAML-RL (ProMP outer step). See the module docstring for who samples, adapts and aggregates."""

    @classmethod
    def get_default_config(cls) -> MAMLRLConfig:
        return MAMLRLConfig()

    def setup(self, config):
        super().setup(config)
        self._meta_iter: Dict[str, int] = {DEFAULT: 0}
        self._env_steps = 0
        self._resampled_tasks = 0
        self._baselines: Dict[str, Dict[str, Any]] = {}
        self._probes: Dict[str, Any] = {}
        tokens = self._learners(lambda learner: learner.distmeta_token())
        ranks = {token: rank for rank, token in enumerate(tokens)}
        self._world = len(tokens)
        self._learners(lambda learner: learner.distmeta_set_rank(ranks))

    # -- plumbing ---------------------------------------------------------------------------
    def _learners(self, func: Callable) -> List[Any]:
        """``func(learner)`` on every Learner (public ``foreach_learner``), results in Learner order."""
        out = []
        for r in self.learner_group.foreach_learner(func).result_or_errors:
            if not r.ok:
                raise RuntimeError(f"MAML-RL Learner call failed: {r.get()}")
            out.append(r.get())
        return out

    def _probe(self, env_config: Optional[Dict[str, Any]]):
        """A driver-side env (task draws, spaces) for ``config.env_config`` + the override."""
        key = core.env_key(env_config)
        if key not in self._probes:
            self._probes[key] = distmeta_envs.make(self.config.env, **{**dict(self.config.env_config),
                                                                         **(env_config or {})}).unwrapped
        return self._probes[key]

    def _discrete(self, env_config=None) -> bool:
        return hasattr(self._probe(env_config).action_space, "n")

    def get_params(self, slot: str = DEFAULT) -> core.Params:
        """The parameters of ``slot`` (the meta-parameters, or a baseline's): Learner copies are equal."""
        return self._learners(lambda learner: learner.distmeta_params(slot))[0]

    # -- one meta-iteration ----------------------------------------------------------------------
    def meta_batch_tasks(self, seed: int, iteration: int, env_config=None) -> List[Dict[str, Any]]:
        """The meta-batch of ``iteration``: a pure function of (seed, iteration)."""
        c = self.config
        if c.train_tasks:
            rng = np.random.default_rng(core.seed_for(seed, iteration, 0))
            return [dict(c.train_tasks[i]) for i in rng.integers(len(c.train_tasks), size=c.meta_batch)]
        return self._probe(env_config).sample_tasks(c.meta_batch, core.seed_for(seed, iteration, 0))

    def training_step(self) -> None:
        stats = self.meta_step(DEFAULT)
        self._env_steps += stats["env_steps"]
        for key, value in {**stats, "env_steps_lifetime": self._env_steps,
                           "resampled_tasks_lifetime": self._resampled_tasks}.items():
            self.metrics.log_value(key, value, window=1)
        self.metrics.log_value((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), stats["env_steps"],
                               reduce="lifetime_sum")
        # RLlib-side users (algo.get_module(), RLlib evaluation) see the current meta-parameters
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    def meta_step(self, slot: str = DEFAULT, inner_steps: Optional[int] = None) -> Dict[str, float]:
        """One meta-iteration of ``slot``: tasks, sharded sampling, the averaged outer step."""
        c = self.config
        K = c.inner_steps if inner_steps is None else inner_steps
        env_config, offset = self._baselines.get(slot, {}).get("env_config"), self._baselines.get(slot, {}).get("seed", 0)
        seed, it = int(c.seed or 0) + offset, self._meta_iter.get(slot, 0)
        tasks = self.meta_batch_tasks(seed, it, env_config)
        seeds = [core.seed_for(seed, it, 1, i) for i in range(len(tasks))]
        t0 = time.perf_counter()
        results = self.sample(self.get_params(slot), tasks, seeds, K, keep_data=True, env_config=env_config)
        t1 = time.perf_counter()
        self._learn(slot, [r.data for r in results], self._discrete(env_config))
        self._meta_iter[slot] = it + 1
        returns = np.stack([r.returns for r in results])
        steps = int(sum(r.env_steps for r in results))
        return {"pre_adapt_return": float(returns[:, 0].mean()), "post_adapt_return": float(returns[:, -1].mean()),
                "env_steps": steps, "sample_time_s": t1 - t0, "learn_time_s": time.perf_counter() - t1,
                "sample_env_steps_per_s": steps / max(t1 - t0, 1e-9), "meta_iteration": it + 1}

    # -- sampling on the EnvRunners ----------------------------------------------------------------
    def sample(self, params: core.Params, tasks: Sequence[Dict[str, Any]], seeds: Sequence[int], inner_steps: int, *,
               keep_data: bool = True, env_config=None, inner_lr: Optional[float] = None) -> List[core.TaskResult]:
        """Every task sampled once, results in task order. Shards lost with a runner are detected
        by their missing task indices and sent again after restoring the runners."""
        c = self.config
        spec = {"episodes": c.episodes_per_task, "inner_steps": int(inner_steps), "gamma": c.gamma,
                "inner_lr": c.inner_lr if inner_lr is None else float(inner_lr), "baseline": c.baseline,
                "keep_data": keep_data, "env_config": env_config}
        got: Dict[int, core.TaskResult] = {}
        pending = list(range(len(tasks)))
        for _ in range(3 + 2 * max(1, self.env_runner_group.num_remote_env_runners())):
            for r in self._sample_round(pending, params, tasks, seeds, spec):
                got[r.index] = r
            pending = [i for i in pending if i not in got]
            if not pending:
                return [got[i] for i in range(len(tasks))]
            self._resampled_tasks += len(pending)
            self.restore_env_runners(self.env_runner_group)  # public: probe and bring back dead runners
        raise RuntimeError(f"MAML-RL: tasks {pending} could not be sampled (EnvRunners keep failing)")

    def _sample_round(self, pending: List[int], params, tasks, seeds, spec) -> List[core.TaskResult]:
        group = self.env_runner_group
        ids = group.healthy_env_runner_ids() if group.num_remote_env_runners() > 0 else []
        if not ids:  # no remote runners, or none healthy now: the local EnvRunner samples
            return group.local_env_runner.sample_tasks(params, [tasks[i] for i in pending], pending,
                                                       [seeds[i] for i in pending], **spec)
        import ray

        shards = [list(s) for s in np.array_split(np.asarray(pending, dtype=np.int64), len(ids)) if len(s)]
        ref = ray.put(params)
        kwargs = [{"params": ref, "tasks": [tasks[i] for i in s], "task_indices": [int(i) for i in s],
                   "seeds": [seeds[i] for i in s], **spec} for s in shards]
        out = group.foreach_env_runner("sample_tasks", kwargs=kwargs, remote_worker_ids=ids[:len(shards)],
                                       local_env_runner=False)
        return [r for chunk in out for r in chunk]

    # -- learning on the Learners ---------------------------------------------------------------------
    def _learn(self, slot: str, data: List[core.TaskData], discrete: bool) -> None:
        """``outer_epochs`` Adam steps with ``g = (1/n) sum_i grad_i`` over all ``n`` tasks, where
        Learner ``r`` sums ``grad_i`` over its shard ``array_split(range(n), world)[r]``."""
        c = self.config
        parts = np.array_split(np.arange(len(data)), self._world)
        shards: List[Any] = [[data[i] for i in p] for p in parts]
        if not self.learner_group.is_local:
            import ray

            shards = [ray.put(s) for s in shards]
        maml = {"inner_lr": c.inner_lr, "first_order": c.first_order, "clip_param": c.clip_param,
                "outer": c.outer, "kl_coeff": c.kl_coeff}
        self._learners(lambda learner: learner.distmeta_set_data(shards, slot, maml, discrete))
        for _ in range(c.outer_epochs if c.outer == "promp" else 1):
            grads = self._learners(lambda learner: learner.distmeta_grad())
            avg = sum(g for _, g in grads) / max(1, sum(n for n, _ in grads))
            self._learners(lambda learner: learner.distmeta_apply(avg, slot))

    # -- evaluation and baselines -------------------------------------------------------------------
    def evaluate_tasks(self, tasks: Sequence[Dict[str, Any]], inner_steps: int, seed: int, *, slot: str = DEFAULT,
                       params: Optional[core.Params] = None, inner_lr: Optional[float] = None,
                       return_success: bool = False):
        """Mean episode return per (task, inner steps 0..``inner_steps``), ``[len(tasks), K+1]``.
        Task ``i`` uses seed ``seed_for(seed, 2, i)`` whatever the policy: paired comparisons.
        ``return_success=True``: ``(returns, success)``, ``success`` the same shape, the fraction of
        the task's episodes in which ``info["success"]`` was true at some step (Meta-World), or
        None when the env does not report ``success``."""
        params = params if params is not None else self.get_params(slot)
        seeds = [core.seed_for(seed, 2, i) for i in range(len(tasks))]
        env_config = self._baselines.get(slot, {}).get("env_config")
        res = self.sample(params, list(tasks), seeds, inner_steps, keep_data=False, env_config=env_config,
                          inner_lr=inner_lr)
        returns = np.stack([r.returns for r in res])
        return (returns, success_by_step(res)) if return_success else returns

    def baseline_names(self) -> List[str]:
        """The same-run baselines that apply to this env."""
        return [n for n in BASELINES if n != "oracle" or self.config.env in ORACLE_ENVS]

    def add_baseline(self, name: str) -> None:
        """A fresh parameter slot ``name`` on every Learner (its own init and Adam)."""
        override, offset = BASELINES[name]
        c = self.config
        self._baselines[name] = {"env_config": dict(override) or None, "seed": offset}
        probe = self._probe(override or None)
        discrete = hasattr(probe.action_space, "n")
        spec = core.PolicySpec(int(np.prod(probe.observation_space.shape)),
                               int(probe.action_space.n) if discrete else int(np.prod(probe.action_space.shape)),
                               list(c.hidden), discrete, float(c.init_log_std))
        params, lr = core.init_policy(spec, int(c.seed or 0) + offset), float(c.lr)
        self._learners(lambda learner: learner.distmeta_add_slot(name, params, lr))
        self._meta_iter[name] = 0

    def train_baseline(self, name: str) -> Dict[str, float]:
        """One iteration of baseline ``name``: PPO-clip policy gradient on the task mixture
        (the same meta-step with ``inner_steps=0``)."""
        if name not in self._baselines:
            self.add_baseline(name)
        return self.meta_step(name, inner_steps=0)

    # -- state ----------------------------------------------------------------------------------------
    def maml_state(self) -> Dict[str, Any]:
        """Torch tensors and plain values: every slot's params and Adam state, counters."""
        slots = [DEFAULT, *self._baselines]
        states = {s: self._learners(lambda learner, s=s: learner.distmeta_state(s))[0] for s in slots}
        return {"params": states[DEFAULT]["params"], "optimizer": states[DEFAULT]["optimizer"],
                "meta_iteration": int(self._meta_iter[DEFAULT]), "env_steps": int(self._env_steps),
                "baselines": {s: {**states[s], "meta_iteration": int(self._meta_iter[s])} for s in self._baselines}}

    def load_maml_state(self, state: Dict[str, Any]) -> None:
        """Inverse of :meth:`maml_state`, on every Learner (and the EnvRunners' module)."""
        main = {"params": state["params"], "optimizer": state.get("optimizer")}
        self._learners(lambda learner: learner.distmeta_load(DEFAULT, main))
        self._meta_iter[DEFAULT], self._env_steps = int(state["meta_iteration"]), int(state.get("env_steps", 0))
        for name, s in (state.get("baselines") or {}).items():
            self.add_baseline(name)
            self._learners(lambda learner, name=name, s=s: learner.distmeta_load(name, s))
            self._meta_iter[name] = int(s.get("meta_iteration", 0))
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if hasattr(self, "_meta_iter"):  # after setup: RLlib checkpoints carry the MAML counters and slots
            state[STATE_KEY] = self.maml_state()
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if STATE_KEY in state:
            self.load_maml_state(state[STATE_KEY])
