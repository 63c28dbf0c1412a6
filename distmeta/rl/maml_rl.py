"""MAML for RL (Finn et al. 2017) with ProMP's outer objective (Rothfuss et al. 2019).

Functional core (pure torch, no Ray): a policy is a dict of named tensors.

- :func:`inner_loss`: policy-gradient surrogate on pre-adaptation trajectories.
  ``form="lvc"`` (ProMP's low-variance curvature estimator) uses the likelihood
  ratio ``pi_theta / pi_theta_old``; ``form="vpg"`` uses ``log pi_theta`` (MAML).
  Both have the policy gradient at ``theta = theta_old``; they differ in the
  Hessian the meta-gradient sees.
- :func:`adapt`: ``inner_steps`` differentiable SGD steps (``create_graph=True``)
  or first-order ones (the inner gradient detached).
- :func:`outer_objective`: PPO-clip surrogate of the post-adaptation
  trajectories through the adapted parameters (ProMP), or the plain PG ("vpg").
- :func:`meta_loss` / :func:`meta_gradient`: the loss over a meta-batch and its
  gradient, split over tasks so learner shards can be averaged.

Advantages use a linear feature baseline fitted per task (Duan et al. 2016).
Sampling runs on the learner side by default (:class:`TaskSampler`: one env
per (task, episode), stepped in lock-step with one batched policy forward);
``rl.maml.sampler: env_runners`` runs the same core through the RLlib Algorithm
of :mod:`distmeta.rl.maml_algorithm` (EnvRunner sampling, RLlib Learners).
Several learners (``rl.num_learners > 1``) are Ray actors that each take a
shard of the meta-batch; the driver averages their flat meta-gradients (task
weighted) and every copy applies the same step with the same optimizer, so the
copies stay identical (:class:`LearnerPool`).
"""
from __future__ import annotations

import logging
import math
import time
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from distmeta.engine.core import flatten as _flatten, unflatten

from distmeta.rl.config import MAMLSection, RLConfig

log = logging.getLogger("distmeta.rl")
Params = Dict[str, torch.Tensor]


# -- policy ---------------------------------------------------------------------
@dataclass
class PolicySpec:
    obs_dim: int
    act_dim: int
    hidden: Sequence[int]
    discrete: bool = False
    init_log_std: float = -1.0


def init_policy(spec: PolicySpec, seed: int = 0) -> Params:
    g = torch.Generator().manual_seed(int(seed))
    params: Params = {}
    sizes = [spec.obs_dim, *spec.hidden, spec.act_dim]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(n_in)
        scale = 0.01 if i == len(sizes) - 2 else 1.0  # small last layer: near-zero initial actions
        params[f"l{i}.weight"] = (torch.rand(n_out, n_in, generator=g) * 2 - 1) * bound * scale
        params[f"l{i}.bias"] = torch.zeros(n_out)
    if not spec.discrete:
        params["log_std"] = torch.full((spec.act_dim,), float(spec.init_log_std))
    return params


def _mlp(params: Params, obs: torch.Tensor) -> torch.Tensor:
    n = len([k for k in params if k.endswith(".weight")])
    x = obs
    for i in range(n):
        x = torch.nn.functional.linear(x, params[f"l{i}.weight"], params[f"l{i}.bias"])
        if i < n - 1:
            x = torch.tanh(x)
    return x


def log_prob(params: Params, obs: torch.Tensor, act: torch.Tensor, discrete: bool = False) -> torch.Tensor:
    out = _mlp(params, obs)
    if discrete:
        return torch.distributions.Categorical(logits=out).log_prob(act.long().reshape(-1))
    std = params["log_std"].exp() if "log_std" in params else torch.ones(())  # no log_std: unit std
    return torch.distributions.Normal(out, std).log_prob(act).sum(-1)


def sample_actions(params: Params, obs: torch.Tensor, discrete: bool, gen: torch.Generator):
    with torch.no_grad():
        out = _mlp(params, obs)
        if discrete:
            probs = torch.softmax(out, -1)
            act = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            return act, torch.log(probs.gather(-1, act[:, None]).squeeze(-1))
        std = params["log_std"].exp() if "log_std" in params else torch.ones(())
        act = out + std * torch.randn(out.shape, generator=gen)
        return act, torch.distributions.Normal(out, std).log_prob(act).sum(-1)


# -- data -------------------------------------------------------------------------
@dataclass
class Batch:
    """Flattened valid steps of one task's trajectories."""
    obs: torch.Tensor
    act: torch.Tensor
    adv: torch.Tensor
    logp_old: torch.Tensor
    episode_returns: np.ndarray  # undiscounted return per episode


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    out = np.zeros_like(rewards)
    run = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        run = rewards[:, t] + gamma * run * mask[:, t]
        out[:, t] = run
    return out * mask


def linear_baseline(obs: np.ndarray, returns: np.ndarray, mask: np.ndarray, reg: float = 1e-5) -> np.ndarray:
    """Duan et al. (2016) linear feature baseline, fitted by ridge regression on one task's paths.
    obs [E, T, d], returns/mask [E, T] -> fitted values [E, T]."""
    E, T, _ = obs.shape
    o = np.clip(obs, -10, 10)
    t = np.broadcast_to(np.arange(T)[None, :, None] / 100.0, (E, T, 1))
    feats = np.concatenate([o, o ** 2, t, t ** 2, t ** 3, np.ones((E, T, 1))], axis=-1)
    m = mask.astype(bool)
    X, y = feats[m], returns[m]
    for _ in range(5):
        try:
            coef = np.linalg.solve(X.T @ X + reg * np.eye(X.shape[1]), X.T @ y)
            if np.all(np.isfinite(coef)):
                return (feats @ coef) * mask
        except np.linalg.LinAlgError:
            pass
        reg *= 10
    return np.zeros_like(returns)


def make_batch(obs, act, rew, logp, mask, gamma: float, baseline: str = "linear", normalize: bool = True) -> Batch:
    ret = discounted_returns(rew, mask, gamma)
    adv = ret - (linear_baseline(obs, ret, mask) if baseline == "linear" else 0.0)
    m = mask.astype(bool)
    adv = adv[m]
    if normalize and adv.size > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return Batch(torch.as_tensor(obs[m], dtype=torch.float32), torch.as_tensor(act[m], dtype=torch.float32),
                 torch.as_tensor(adv, dtype=torch.float32), torch.as_tensor(logp[m], dtype=torch.float32),
                 (rew * mask).sum(1))


# -- the functional meta-objective ------------------------------------------------------
def inner_loss(params: Params, batch: Batch, discrete: bool = False, form: str = "lvc") -> torch.Tensor:
    logp = log_prob(params, batch.obs, batch.act, discrete)
    if form == "vpg":
        return -(logp * batch.adv).mean()
    return -(torch.exp(logp - batch.logp_old) * batch.adv).mean()


def adapt(params: Params, inner_batches: Sequence[Batch], inner_lr: float, first_order: bool = False,
          discrete: bool = False, form: str = "lvc", create_graph: bool = True) -> Params:
    """One SGD step per batch in ``inner_batches`` (batch k sampled with the policy after k steps)."""
    names = [k for k in params]
    for batch in inner_batches:
        loss = inner_loss(params, batch, discrete, form)
        grads = torch.autograd.grad(loss, [params[k] for k in names],
                                    create_graph=create_graph and not first_order, allow_unused=True)
        params = {k: params[k] - inner_lr * (g.detach() if first_order else g) if g is not None else params[k]
                  for k, g in zip(names, grads)}
    return params


def outer_objective(adapted: Params, batch: Batch, discrete: bool = False, clip: float = 0.2,
                    outer: str = "promp") -> torch.Tensor:
    """To be maximised: the PPO-clip surrogate (``promp``) or the policy-gradient surrogate (``vpg``)."""
    logp = log_prob(adapted, batch.obs, batch.act, discrete)
    ratio = torch.exp(logp - batch.logp_old)
    if outer == "vpg":
        return (ratio * batch.adv).mean()
    return torch.min(ratio * batch.adv, torch.clamp(ratio, 1 - clip, 1 + clip) * batch.adv).mean()


@dataclass
class TaskData:
    inner: List[Batch]   # one batch per inner step
    outer: Batch         # post-adaptation trajectories


def meta_loss(params: Params, tasks: Sequence[TaskData], m: MAMLSection, discrete: bool = False,
              form: str = "lvc") -> torch.Tensor:
    """Mean over tasks of ``-outer_objective(adapt(params, inner), outer)`` (+ ProMP's KL penalty)."""
    total = 0.0
    for td in tasks:
        adapted = adapt(params, td.inner, m.inner_lr, m.first_order, discrete, form)
        total = total - outer_objective(adapted, td.outer, discrete, m.clip_param, m.outer)
        if m.kl_coeff > 0 and td.inner:
            # KL(pi_old || pi_theta) on the pre-adaptation states, estimated from the sampled actions.
            b = td.inner[0]
            total = total + m.kl_coeff * (b.logp_old - log_prob(params, b.obs, b.act, discrete)).mean()
    return total / max(len(tasks), 1)


def meta_gradient(params: Params, tasks: Sequence[TaskData], m: MAMLSection, discrete: bool = False,
                  form: str = "lvc") -> Dict[str, torch.Tensor]:
    """Gradient of :func:`meta_loss` (mean over ``tasks``) with respect to ``params``."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = meta_loss(leaves, tasks, m, discrete, form)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)}


def flatten(tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    return _flatten(tensors, list(tensors))


# -- learner-side sampling -------------------------------------------------------------
class TaskSampler:
    """One env instance per (task, episode); all stepped in lock-step with one batched forward."""

    def __init__(self, env: str, env_config: Dict[str, Any]):
        from distmeta.envs import make

        self.env_name, self.env_config = env, dict(env_config)
        probe = make(env, **env_config).unwrapped
        self.discrete = hasattr(probe.action_space, "n")
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(probe.action_space.n) if self.discrete else int(np.prod(probe.action_space.shape))
        self._envs: List[Any] = []

    def _get_envs(self, n: int):
        from distmeta.envs import make

        while len(self._envs) < n:
            self._envs.append(make(self.env_name, **self.env_config).unwrapped)
        return self._envs[:n]

    def sample(self, params_per_task: Sequence[Params], tasks: Sequence[Dict[str, Any]], episodes: int,
               seed: int):
        """Returns per task (obs [E,T,d], act [E,T,a], rew [E,T], logp [E,T], mask [E,T])."""
        n_tasks = len(tasks)
        envs = self._get_envs(n_tasks * episodes)
        gen = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
        obs0 = []
        for i, env in enumerate(envs):
            env.set_task(tasks[i // episodes])
            obs0.append(env.reset(seed=int(seed * 7919 + i) % (2**31 - 1))[0])
        cur = np.stack(obs0).astype(np.float32)
        done = np.zeros(len(envs), bool)
        O, A, R, L, M = [], [], [], [], []
        while not done.all():
            acts, logps = [], []
            for t in range(n_tasks):
                sl = slice(t * episodes, (t + 1) * episodes)
                a, lp = sample_actions(params_per_task[t], torch.as_tensor(cur[sl]), self.discrete, gen)
                acts.append(a)
                logps.append(lp)
            act = torch.cat(acts).numpy()
            rew = np.zeros(len(envs))
            nxt = cur.copy()
            mask = (~done).astype(np.float64)
            for i, env in enumerate(envs):
                if done[i]:
                    continue
                o, r, term, trunc, _ = env.step(act[i])
                nxt[i], rew[i] = o, r
                done[i] = term or trunc
            O.append(cur)
            A.append(act.reshape(len(envs), -1) if not self.discrete else act.reshape(len(envs), 1))
            R.append(rew)
            L.append(torch.cat(logps).numpy())
            M.append(mask)
            cur = nxt
        O, A, R, L, M = (np.stack(x, axis=1) for x in (O, A, R, L, M))
        out = []
        for t in range(n_tasks):
            sl = slice(t * episodes, (t + 1) * episodes)
            out.append((O[sl], A[sl], R[sl], L[sl], M[sl]))
        return out


def seed_for(run_seed: int, iteration: int, phase: int) -> int:
    """Seeds derive from (run seed, iteration, phase), never from which learner asks."""
    return int(np.random.SeedSequence([int(run_seed), int(iteration), int(phase)]).generate_state(1)[0])


def collect_task_data(sampler: TaskSampler, params: Params, tasks: Sequence[Dict[str, Any]], m: MAMLSection,
                      inner_steps: int, seed: int, form: str = "lvc"):
    """Sample pre-adaptation data, adapt (no graph), sample again, ``inner_steps`` times, then the
    post-adaptation data. Returns (TaskData list, mean return after k steps for k = 0..inner_steps)."""
    per_task = [dict(params) for _ in tasks]
    inner: List[List[Batch]] = [[] for _ in tasks]
    returns_by_step = []
    for k in range(inner_steps + 1):
        raw = sampler.sample(per_task, tasks, m.episodes_per_task, seed * 31 + k)
        batches = [make_batch(*r, gamma=m.gamma, baseline=m.baseline) for r in raw]
        returns_by_step.append(np.array([b.episode_returns.mean() for b in batches]))
        if k == inner_steps:
            return [TaskData(inner[i], batches[i]) for i in range(len(tasks))], returns_by_step
        for i, b in enumerate(batches):
            inner[i].append(b)
            p = {n: v.detach().requires_grad_(True) for n, v in per_task[i].items()}
            per_task[i] = {n: v.detach() for n, v in
                           adapt(p, [b], m.inner_lr, True, sampler.discrete, form, create_graph=False).items()}
    raise AssertionError("unreachable")


# -- learners ---------------------------------------------------------------------------
class MetaLearnerCore:
    """Parameters + Adam; ``meta_grad(tasks)`` and ``apply(flat_grad)``. Used in-process and as an actor."""

    def __init__(self, params: Params, m: MAMLSection, discrete: bool, form: str = "lvc"):
        torch.set_num_threads(1)
        self.params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        self.m, self.discrete, self.form = m, discrete, form
        self.opt = torch.optim.Adam(list(self.params.values()), lr=m.outer_lr)

    def meta_grad(self, tasks: Sequence[TaskData]) -> torch.Tensor:
        return flatten(meta_gradient(self.params, tasks, self.m, self.discrete, self.form))

    def apply(self, flat_grad: torch.Tensor) -> None:
        self.opt.zero_grad()
        for k, g in unflatten(flat_grad, self.params).items():
            self.params[k].grad = g.clone()
        self.opt.step()

    def get_params(self) -> Params:
        return {k: v.detach().clone() for k, v in self.params.items()}

    def get_flat(self) -> torch.Tensor:
        return flatten(self.get_params())

    def state(self) -> Dict[str, Any]:
        return {"params": self.get_params(), "optimizer": self.opt.state_dict()}

    def load(self, state: Dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.opt.load_state_dict(state["optimizer"])


class LearnerPool:
    """``n`` learner copies. n == 1: in-process. n > 1: Ray actors, each given a contiguous shard of
    the meta-batch; the driver averages the flat meta-gradients weighted by shard size (= the
    gradient of the mean over all tasks) and broadcasts it, so all copies take identical steps."""

    def __init__(self, params: Params, m: MAMLSection, discrete: bool, n: int = 1, form: str = "lvc"):
        self.n = max(1, int(n))
        if self.n == 1:
            self.local = MetaLearnerCore(params, m, discrete, form)
            self.actors = []
        else:
            import ray

            Actor = ray.remote(num_cpus=0)(MetaLearnerCore)
            self.local = None
            self.actors = [Actor.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}).remote(
                params, m, discrete, form) for _ in range(self.n)]

    def step(self, tasks: Sequence[TaskData]) -> None:
        if self.local is not None:
            self.local.apply(self.local.meta_grad(tasks))
            return
        import ray

        shards = np.array_split(np.arange(len(tasks)), self.n)
        refs, weights = [], []
        for actor, idx in zip(self.actors, shards):
            if len(idx):
                refs.append(actor.meta_grad.remote([tasks[i] for i in idx]))
                weights.append(len(idx) / len(tasks))
        grads = ray.get(refs)
        avg = sum(w * g for w, g in zip(weights, grads))
        ray.get([a.apply.remote(avg) for a in self.actors])

    def get_params(self) -> Params:
        if self.local is not None:
            return self.local.get_params()
        import ray

        return ray.get(self.actors[0].get_params.remote())

    def all_flat(self) -> List[torch.Tensor]:
        if self.local is not None:
            return [self.local.get_flat()]
        import ray

        return ray.get([a.get_flat.remote() for a in self.actors])

    def state(self) -> Dict[str, Any]:
        if self.local is not None:
            return self.local.state()
        import ray

        return ray.get(self.actors[0].state.remote())

    def load(self, state: Dict[str, Any]) -> None:
        if self.local is not None:
            self.local.load(state)
        else:
            import ray

            ray.get([a.load.remote(state) for a in self.actors])

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


# -- evaluation ---------------------------------------------------------------------------
def evaluate_params(params: Params, sampler: TaskSampler, tasks: Sequence[Dict[str, Any]], m: MAMLSection,
                    max_steps: int, seed: int, form: str = "lvc") -> np.ndarray:
    """Mean episode return per (task, number of inner steps 0..max_steps) on ``tasks``."""
    _, by_step = collect_task_data(sampler, params, tasks, m, max_steps, seed, form)
    return np.stack(by_step, axis=1)


def _summary(returns_by_step: np.ndarray, inner_steps: int) -> Dict[str, Any]:
    from distmeta.rl.baselines import summarize

    post = summarize(returns_by_step[:, min(inner_steps, returns_by_step.shape[1] - 1)])
    out = {k: post[k] for k in ("mean_return", "ci95", "se", "tasks")}
    out["mean_return_by_inner_steps"] = {str(k): float(returns_by_step[:, k].mean())
                                         for k in range(returns_by_step.shape[1])}
    out["ci95_by_inner_steps"] = {str(k): summarize(returns_by_step[:, k])["ci95"]
                                  for k in range(returns_by_step.shape[1])}
    return out


def paired_difference(a: np.ndarray, b: np.ndarray) -> Dict[str, Any]:
    """MAML minus a baseline on the same held-out tasks: mean of d_i = a_i - b_i, its standard
    error s_d / sqrt(n), the 95 % CI half-width and the mean in standard errors (d / se)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    mean = float(d.mean())
    return {"mean_difference": mean, "se": se, "ci95": 1.96 * se, "standard_errors": mean / se if se > 0 else
            float("nan"), "tasks": int(len(d))}


# -- the training loop (used for MAML-RL and for the same-run baselines) -------------------------
def _iterations_for(rl: RLConfig, sampler_horizon: int, inner_steps: int) -> int:
    m = rl.maml
    per_iter = m.meta_batch * m.episodes_per_task * sampler_horizon * (inner_steps + 1)
    return max(1, int(math.ceil(rl.env_steps / per_iter)))


def _horizon(rl: RLConfig) -> int:
    from distmeta.envs import make

    env = make(rl.env, **rl.env_config)
    return int(getattr(env.unwrapped, "horizon", None) or getattr(env.spec, "max_episode_steps", None) or 200)


def run_meta_training(rl: RLConfig, seed: int, train_tasks, inner_steps: int, iterations: int,
                      env_config: Optional[Dict[str, Any]] = None, on_iteration=None, pool_state=None,
                      start_iteration: int = 0, num_learners: int = 1):
    """The meta-training loop. ``inner_steps=0`` is plain policy-gradient (PPO-clip) training on
    the task mixture: the "pretrained" baseline (and, with ``oracle`` env config, the oracle)."""
    m = rl.maml
    sampler = TaskSampler(rl.env, env_config if env_config is not None else rl.env_config)
    spec = PolicySpec(sampler.obs_dim, sampler.act_dim, m.hidden, sampler.discrete, m.init_log_std)
    pool = LearnerPool(init_policy(spec, seed), m, sampler.discrete, num_learners)
    if pool_state is not None:
        pool.load(pool_state)
    from distmeta.envs import make

    base = make(rl.env, **(env_config if env_config is not None else rl.env_config)).unwrapped
    for it in range(start_iteration, iterations):
        t0 = time.time()
        if train_tasks:
            rng = np.random.default_rng(seed_for(seed, it, 0))
            tasks = [train_tasks[i] for i in rng.integers(len(train_tasks), size=m.meta_batch)]
        else:
            tasks = base.sample_tasks(m.meta_batch, seed_for(seed, it, 0))
        params = pool.get_params()
        data, by_step = collect_task_data(sampler, params, tasks, m, inner_steps, seed_for(seed, it, 1))
        for _ in range(m.outer_epochs if m.outer == "promp" else 1):
            pool.step(data)
        if on_iteration is not None:
            steps = sum(int(b.obs.shape[0]) for td in data for b in [*td.inner, td.outer])
            on_iteration(it + 1, pool, [float(r.mean()) for r in by_step], steps, time.time() - t0)
    return pool, sampler


def train_maml(cfg, rl: RLConfig, run, steps: Optional[int], resume: bool) -> Dict[str, Any]:
    from distmeta.engine.run_dir import MetricsLogger, load_checkpoint
    from distmeta.rl.runner import ensure_ray, held_out_tasks, plot_curve, to_plain

    m = rl.maml
    if rl.num_learners > 1:
        ensure_ray(cfg)
    train_tasks, test_tasks = held_out_tasks(rl)
    horizon = _horizon(rl)
    iterations = _iterations_for(rl, horizon, m.inner_steps)
    start, pool_state, env_steps = 0, None, 0
    curve_x, curve_y = [], []
    metrics = MetricsLogger(run.path)
    if resume and run.latest_checkpoint() is not None:
        ckpt = load_checkpoint(run.latest_checkpoint())
        start, pool_state, env_steps = int(ckpt["step"]), ckpt["learner"], int(ckpt["env_steps"])
        curve_x, curve_y = list(ckpt.get("curve_x", [])), list(ckpt.get("curve_y", []))
        metrics.truncate_after(start)
    stop_at = min(iterations, start + steps) if steps is not None else iterations
    eval_tasks = test_tasks[: min(len(test_tasks), 40)]  # periodic evaluation on a fixed subset
    state = {"env_steps": env_steps, "t0": time.time(), "steps0": env_steps}
    eval_sampler = TaskSampler(rl.env, rl.env_config)

    def on_iteration(it, pool, by_step, n_steps, dt):
        state["env_steps"] += n_steps
        sps = (state["env_steps"] - state["steps0"]) / max(time.time() - state["t0"], 1e-9)
        row = {"env_steps": state["env_steps"], "pre_adapt_return": by_step[0],
               "post_adapt_return": by_step[-1], "env_steps_per_s": sps}
        last = it >= stop_at
        if (rl.eval_every and it % rl.eval_every == 0) or last:
            ev = evaluate_params(pool.get_params(), eval_sampler, eval_tasks, m, m.inner_steps, cfg.seed + 1)
            row["eval_mean_return"] = float(ev[:, -1].mean())
            row["eval_pre_adapt_return"] = float(ev[:, 0].mean())
            curve_x.append(state["env_steps"])
            curve_y.append(row["eval_mean_return"])
        metrics.log(it, row)
        if it % cfg.log_every == 0 or last:
            log.info("iter %d/%d  env steps %d  return pre %.2f post %.2f  %.0f steps/s", it, iterations,
                     state["env_steps"], by_step[0], by_step[-1], sps)
        if it % cfg.checkpoint.every == 0 or last:
            run.save_checkpoint({"learner": to_plain(pool.state()), "env_steps": state["env_steps"],
                                 "algorithm": "maml_rl", "config": cfg.to_dict(), "curve_x": curve_x, "curve_y": curve_y},
                                it, keep_last=cfg.checkpoint.keep_last, score=row.get("eval_mean_return"))

    if m.sampler == "env_runners":
        from distmeta.rl.maml_algorithm import run_algorithm_training

        ensure_ray(cfg)
        run_algorithm_training(rl, cfg.seed, stop_at, on_iteration, pool_state, start)
    else:
        pool, _ = run_meta_training(rl, cfg.seed, train_tasks, m.inner_steps, stop_at, on_iteration=on_iteration,
                                    pool_state=pool_state, start_iteration=start, num_learners=rl.num_learners)
        pool.close()
    if rl.baselines and stop_at >= iterations:
        _train_baselines(cfg, rl, run, train_tasks, iterations)
    metrics.plot()
    metrics.close()
    from distmeta.rl.runner import evaluate_rl

    final = evaluate_rl(run.path)
    plot_curve(run, curve_x, curve_y, {k: v["mean_return"] for k, v in final.get("baselines", {}).items()},
               f"MAML-RL on {rl.env} ({m.inner_steps} inner step(s))", "mean held-out return after adaptation")
    return {**final, "iterations": stop_at, "env_steps": state["env_steps"]}


def _train_baselines(cfg, rl: RLConfig, run, train_tasks, iterations: int) -> None:
    """Same-run baselines with the same number of iterations: "pretrained" (PG on the task mixture,
    then fine-tuned at evaluation with the same inner step) and, for point navigation, "oracle"
    (goal in the observation)."""
    from distmeta.envs import resolve_env_id
    from distmeta.rl.runner import to_plain

    out = {}
    pre, _ = run_meta_training(rl, cfg.seed + 101, train_tasks, 0, iterations)
    out["pretrained"] = to_plain(pre.get_params())
    if resolve_env_id(rl.env) == "distmeta/PointNav-v0":
        ora, _ = run_meta_training(rl, cfg.seed + 202, train_tasks, 0, iterations,
                                   env_config={**rl.env_config, "oracle": True})
        out["oracle"] = to_plain(ora.get_params())
    torch.save(out, run.path / "baselines.pt")


PRETRAINED_LR_GRID = np.array([0.01, 0.03, 0.1, 0.3, 1.0])  # x rl.maml.inner_lr


def evaluate_maml_checkpoint(rl: RLConfig, ckpt: Dict[str, Any], tasks, seed: int) -> Dict[str, Any]:
    m = rl.maml
    sampler = TaskSampler(rl.env, rl.env_config)
    params = {k: torch.as_tensor(v) for k, v in ckpt["learner"]["params"].items()}
    max_steps = max(m.eval_inner_steps, m.inner_steps)
    ev = evaluate_params(params, sampler, tasks, m, max_steps, seed)
    out = _summary(ev, m.inner_steps)
    out["baselines"] = {}
    from pathlib import Path

    run_path = ckpt.get("_run_path")
    base_file = Path(run_path) / "baselines.pt" if run_path else None
    if base_file is not None and base_file.exists():
        base = torch.load(base_file, weights_only=True)
        if "pretrained" in base:
            ev_b = evaluate_params(base["pretrained"], sampler, tasks, m, m.inner_steps, seed)
            out["baselines"]["pretrained"] = _summary(ev_b, m.inner_steps)
            out["baselines"]["pretrained_0_steps"] = _summary(ev_b, 0)
            out["vs_pretrained"] = paired_difference(ev[:, m.inner_steps], ev_b[:, m.inner_steps])
            # a stronger baseline: the pretrained policy fine-tuned with the inner learning rate that
            # does best on these very tasks (chosen on the test tasks, so it flatters the baseline)
            lr, ev_t = max(((lr, evaluate_params(base["pretrained"], sampler, tasks, dataclasses.replace(m, inner_lr=lr),
                                                 m.inner_steps, seed)) for lr in PRETRAINED_LR_GRID * m.inner_lr),
                           key=lambda pair: pair[1][:, m.inner_steps].mean())
            out["baselines"]["pretrained_best_lr"] = {**_summary(ev_t, m.inner_steps), "inner_lr": float(lr)}
            out["vs_pretrained_best_lr"] = paired_difference(ev[:, m.inner_steps], ev_t[:, m.inner_steps])
        if "oracle" in base:
            o_sampler = TaskSampler(rl.env, {**rl.env_config, "oracle": True})
            ev_o = evaluate_params(base["oracle"], o_sampler, tasks, m, 0, seed)
            out["baselines"]["oracle"] = _summary(ev_o, 0)
    out["baselines"][f"maml_0_steps"] = _summary(ev, 0)
    for b in out["baselines"].values():
        b.pop("ci95_by_inner_steps", None)
    return out
