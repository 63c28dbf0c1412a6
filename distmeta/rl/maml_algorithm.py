"""MAML-RL as an RLlib ``Algorithm`` on the new API stack (EnvRunner sampling).

``MAMLRL.training_step`` does one meta-iteration with the functional core of
:mod:`distmeta.rl.maml_rl`:

1. draw a meta-batch of tasks (seeds from (run seed, iteration));
2. per task: set the task on the EnvRunners
   (``env_runner.env.unwrapped.call("set_task", task)``), push the current
   weights and sample pre-adaptation episodes;
3. adapt per task (inner policy-gradient step, no graph), push the adapted
   weights to the EnvRunners, sample post-adaptation episodes;
4. the Learner(s) compute the meta-gradient through the inner step (ProMP
   surrogate, ``outer_epochs`` times); with several Learners each gets a shard of
   the tasks, the driver averages the flat gradients (task weighted) and every
   Learner applies the same average, so the copies stay identical;
5. sync the new weights to the EnvRunners.

The RLModule (:class:`MAMLPolicyModule`) holds the same MLP as the functional
core, so parameters map one to one. ``distmeta train`` uses the faster
learner-side sampler by default (``rl.maml.sampler: learner``); set
``rl.maml.sampler: env_runners`` to train through this Algorithm.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ray.rllib.algorithms import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule

from distmeta.rl import maml_rl as core
from distmeta.rl.config import RLConfig, parse_rl


def _key(name: str) -> str:
    return name.replace(".", "__")


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
    m = module["default_policy"] if isinstance(module, MultiRLModule) else module
    return m.unwrapped() if hasattr(m, "unwrapped") else m


class MAMLRLTorchLearner(TorchLearner):
    """Owns the parameters and the Adam state; computes and applies meta-gradients."""

    def compute_loss_for_module(self, **kwargs):  # the meta-loss is computed in distmeta_meta_grad
        raise NotImplementedError("MAMLRLTorchLearner is driven by MAMLRL.training_step")

    def distmeta_meta_grad(self, tasks: Sequence[core.TaskData], maml: Dict[str, Any], discrete: bool):
        from distmeta.rl.config import MAMLSection

        m = MAMLSection(**maml)
        module = _single(self.module)
        params = module.functional_params()
        loss = core.meta_loss(params, tasks, m, discrete)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params.values())]).detach()

    def distmeta_apply(self, flat: torch.Tensor) -> None:
        module = _single(self.module)
        params = module.functional_params()
        opt = self.get_optimizer()
        opt.zero_grad()
        for (k, p), g in zip(params.items(), core.unflatten(flat, params).values()):
            p.grad = g.clone().to(p.device)
        opt.step()

    def distmeta_flat(self) -> torch.Tensor:
        return core.flatten({k: v.detach().clone() for k, v in _single(self.module).functional_params().items()})


class MAMLRLConfig(AlgorithmConfig):
    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or MAMLRL)
        self.distmeta_rl: Dict[str, Any] = {}
        self.batch_mode = "complete_episodes"

    def training(self, *, distmeta_rl=NotProvided, **kwargs):
        super().training(**kwargs)
        if distmeta_rl is not NotProvided:
            self.distmeta_rl = dict(distmeta_rl)
        return self

    def get_default_rl_module_spec(self):
        m = parse_rl(self.distmeta_rl).maml
        return RLModuleSpec(module_class=MAMLPolicyModule,
                            model_config={"hidden": list(m.hidden), "init_log_std": m.init_log_std,
                                          "seed": int(self.seed or 0)})

    def get_default_learner_class(self):
        return MAMLRLTorchLearner


def build_maml_config(rl: RLConfig, seed: int) -> MAMLRLConfig:
    import dataclasses

    from distmeta.rl.rl2 import _make_task_callback
    from distmeta.envs import make

    def env_creator(cfg):
        return make(rl.env, **rl.env_config).unwrapped

    from ray.tune.registry import register_env

    register_env("distmeta_maml_env", env_creator)
    return (
        MAMLRLConfig()
        .environment("distmeta_maml_env", normalize_actions=False, clip_actions=False)
        .framework("torch")
        .env_runners(num_env_runners=rl.num_env_runners, num_envs_per_env_runner=rl.maml.episodes_per_task,
                     batch_mode="complete_episodes")
        .learners(num_learners=rl.num_learners)
        .training(distmeta_rl=dataclasses.asdict(rl), lr=rl.maml.outer_lr)
        .callbacks(_make_task_callback())
        .debugging(seed=int(seed), log_level="ERROR")
    )


def _episodes_to_arrays(episodes, discrete: bool):
    T = max(len(e) for e in episodes)
    E = len(episodes)
    first = episodes[0]
    obs_dim = int(np.prod(np.asarray(first.get_observations(0)).shape))
    act = np.asarray(first.get_actions(0))
    act_dim = 1 if discrete else int(np.prod(act.shape))
    O, A = np.zeros((E, T, obs_dim)), np.zeros((E, T, act_dim))
    R, L, M = np.zeros((E, T)), np.zeros((E, T)), np.zeros((E, T))
    for i, ep in enumerate(episodes):
        n = len(ep)
        O[i, :n] = np.asarray(ep.get_observations(slice(0, n))).reshape(n, obs_dim)
        A[i, :n] = np.asarray(ep.get_actions(slice(0, n))).reshape(n, act_dim)
        R[i, :n] = np.asarray(ep.get_rewards(slice(0, n)))
        L[i, :n] = np.asarray(ep.get_extra_model_outputs(Columns.ACTION_LOGP, slice(0, n))).reshape(n)
        M[i, :n] = 1.0
    return O, A, R, L, M


class MAMLRL(Algorithm):
    @classmethod
    def get_default_config(cls) -> MAMLRLConfig:
        return MAMLRLConfig()

    def setup(self, config):
        super().setup(config)
        from distmeta.envs import make

        self._rl = parse_rl(self.config.distmeta_rl)
        self._base_env = make(self._rl.env, **self._rl.env_config).unwrapped
        self._discrete = hasattr(self._base_env.action_space, "n")
        self._meta_iter = 0
        self._distmeta_task = None

    # -- sampling on the EnvRunners -------------------------------------------------
    def _sample_task(self, task, params: core.Params, episodes: int):
        from distmeta.rl.rl2 import _apply_task

        self._distmeta_task = task  # re-applied to EnvRunners that restart
        params = {k: v.detach().clone() for k, v in params.items()}
        remote = self.env_runner_group.num_remote_workers() > 0
        per_runner = max(1, int(np.ceil(episodes / max(1, self.env_runner_group.num_remote_workers()))))

        def run(er):
            _apply_task(er, task)
            _single(er.module).load_functional(params)
            return er.sample(num_episodes=per_runner if remote else episodes, explore=True)

        out = self.env_runner_group.foreach_env_runner(run, local_env_runner=not remote)
        eps = [e for chunk in out for e in chunk][:episodes]
        return _episodes_to_arrays(eps, self._discrete)

    def _current_params(self) -> core.Params:
        flat = self._learner_results(lambda l: l.distmeta_flat())[0]
        like = core.init_policy(core.PolicySpec(
            int(np.prod(self._base_env.observation_space.shape)),
            int(self._base_env.action_space.n) if self._discrete else int(np.prod(self._base_env.action_space.shape)),
            list(self._rl.maml.hidden), self._discrete, self._rl.maml.init_log_std))
        return {k: v.clone() for k, v in core.unflatten(torch.as_tensor(flat), like).items()}

    def _learner_results(self, func) -> List[Any]:
        res = self.learner_group.foreach_learner(func)
        if isinstance(res, list):
            return res
        out = []
        for r in res.result_or_errors:
            if not r.ok:
                raise RuntimeError(f"MAML-RL learner call failed: {r.get()}")
            out.append(r.get())
        return out

    def training_step(self) -> None:
        import dataclasses

        rl, m = self._rl, self._rl.maml
        seed = int(self.config.seed or 0)
        tasks = self._base_env.sample_tasks(m.meta_batch, core.seed_for(seed, self._meta_iter, 0))
        params = self._current_params()
        inner: List[List[core.Batch]] = [[] for _ in tasks]
        per_task = [dict(params) for _ in tasks]
        by_step = []
        env_steps = 0
        for k in range(m.inner_steps + 1):
            batches = []
            for i, task in enumerate(tasks):
                raw = self._sample_task(task, per_task[i], m.episodes_per_task)
                env_steps += int(raw[-1].sum())
                batches.append(core.make_batch(*raw, gamma=m.gamma, baseline=m.baseline))
            by_step.append(float(np.mean([b.episode_returns.mean() for b in batches])))
            if k == m.inner_steps:
                data = [core.TaskData(inner[i], batches[i]) for i in range(len(tasks))]
                break
            for i, b in enumerate(batches):
                inner[i].append(b)
                p = {n: v.detach().requires_grad_(True) for n, v in per_task[i].items()}
                per_task[i] = {n: v.detach() for n, v in core.adapt(p, [b], m.inner_lr, True, self._discrete,
                                                                       create_graph=False).items()}
        maml = dataclasses.asdict(m)
        discrete = self._discrete  # closures sent to Learner actors must not capture the Algorithm
        n_learners = max(1, self.config.num_learners)
        shards = np.array_split(np.arange(len(data)), n_learners)
        for _ in range(m.outer_epochs if m.outer == "promp" else 1):
            if n_learners == 1:
                grads = self._learner_results(lambda l: l.distmeta_meta_grad(data, maml, discrete))
                avg = grads[0]
            else:
                # every Learner gets all task data and computes on its own shard (by rank)
                import ray

                refs = []
                for rank, idx in enumerate(shards):
                    shard = [data[i] for i in idx]
                    refs.append(self.learner_group.foreach_learner(
                        lambda l, shard=shard: l.distmeta_meta_grad(shard, maml, discrete),
                        remote_actor_ids=[self.learner_group._worker_manager.actor_ids()[rank]],
                        return_obj_refs=True))
                grads = [ray.get(r.result_or_errors[0].get()) for r in refs]  # ObjectRefs (return_obj_refs)
                weights = [len(idx) / len(data) for idx in shards]
                avg = sum(w * g for w, g in zip(weights, grads))
            self._learner_results(lambda l: l.distmeta_apply(avg))
        self._meta_iter += 1
        # the EnvRunners hold the last task's adapted weights: bring them back to the meta-parameters
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        self.metrics.log_value("pre_adapt_return", by_step[0], window=1)
        self.metrics.log_value("post_adapt_return", by_step[-1], window=1)
        self.metrics.log_value("distmeta_env_steps", env_steps, window=1)
        self.metrics.log_value("meta_iteration", self._meta_iter, window=1)

    def learner_flats(self) -> List[torch.Tensor]:
        return self._learner_results(lambda l: l.distmeta_flat())


class _AlgoPoolView:
    """What ``train_maml``'s per-iteration hook needs (params and a checkpointable state)."""

    def __init__(self, algo: MAMLRL):
        self.algo = algo

    def get_params(self) -> core.Params:
        return self.algo._current_params()

    def state(self) -> Dict[str, Any]:
        """Parameters, the outer optimizer's state (Learner copies are identical: the first one's)
        and the meta-iteration: everything a resume needs to continue the same run."""
        optimizer = self.algo._learner_results(lambda l: l.get_optimizer().state_dict())[0]
        return {"params": self.get_params(), "optimizer": optimizer, "meta_iteration": self.algo._meta_iter}


def load_pool_state(algo: MAMLRL, pool_state: Dict[str, Any]) -> None:
    """Put a checkpointed ``_AlgoPoolView.state()`` into every Learner and the EnvRunners."""
    params = {k: torch.as_tensor(v) for k, v in pool_state["params"].items()}
    flat = core.flatten(params)
    optimizer = pool_state.get("optimizer") or None

    def load(learner):
        _load_flat(learner, flat)
        if optimizer:
            learner.get_optimizer().load_state_dict(optimizer)

    algo._learner_results(load)
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def run_algorithm_training(rl: RLConfig, seed: int, iterations: int, on_iteration, pool_state=None,
                           start_iteration: int = 0) -> None:
    """``distmeta train`` with ``rl.maml.sampler: env_runners``: the same loop through MAMLRL."""
    import time

    algo = build_maml_config(rl, seed).build_algo()
    try:
        if pool_state is not None:
            load_pool_state(algo, pool_state)
        algo._meta_iter = start_iteration
        view = _AlgoPoolView(algo)
        for it in range(start_iteration, iterations):
            t0 = time.time()
            result = algo.train()
            by_step = [float(result["pre_adapt_return"]), float(result["post_adapt_return"])]
            on_iteration(it + 1, view, by_step, int(result.get("distmeta_env_steps", 0)), time.time() - t0)
    finally:
        algo.stop()


def _load_flat(learner, flat: torch.Tensor) -> None:
    module = _single(learner.module)
    params = module.functional_params()
    module.load_functional(core.unflatten(flat, params))
