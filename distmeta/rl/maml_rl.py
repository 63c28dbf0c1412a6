"""MAML for RL (Finn et al. 2017) with ProMP's outer objective (Rothfuss et al. 2019).

Functional core (pure torch and gymnasium, no Ray): a policy is a dict of named tensors.

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
- :func:`sample_tasks`: what one EnvRunner does for its shard of the meta-batch
  (:class:`distmeta.rl.maml_algorithm.MAMLEnvRunner` hosts it): per task, episodes
  with theta, the inner step taken locally (no graph), episodes with the adapted
  parameters, ``inner_steps`` times; the sub-environments of several tasks are
  stepped in lock-step with one batched forward that holds per-task parameters
  (:func:`stacked_sample`). Seeds come from (task seed, phase) only, so a task's
  data do not depend on which runner samples it or with which other tasks.

Advantages use a linear feature baseline fitted per task (Duan et al. 2016).
Training is the RLlib Algorithm of :mod:`distmeta.rl.maml_algorithm`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from distmeta.engine.core import flatten as _flatten, unflatten  # noqa: F401  (unflatten re-exported)

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


def meta_loss(params: Params, tasks: Sequence[TaskData], m, discrete: bool = False,
              form: str = "lvc") -> torch.Tensor:
    """Mean over tasks of ``-outer_objective(adapt(params, inner), outer)`` (+ ProMP's KL penalty).

    ``m`` has ``inner_lr``, ``first_order``, ``clip_param``, ``outer`` and ``kl_coeff`` (a
    :class:`distmeta.schema.MAMLSection` or any object with those attributes)."""
    total = 0.0
    for td in tasks:
        adapted = adapt(params, td.inner, m.inner_lr, m.first_order, discrete, form)
        total = total - outer_objective(adapted, td.outer, discrete, m.clip_param, m.outer)
        if m.kl_coeff > 0 and td.inner:
            # KL(pi_old || pi_theta) on the pre-adaptation states, estimated from the sampled actions.
            b = td.inner[0]
            total = total + m.kl_coeff * (b.logp_old - log_prob(params, b.obs, b.act, discrete)).mean()
    return total / max(len(tasks), 1)


def meta_gradient(params: Params, tasks: Sequence[TaskData], m, discrete: bool = False,
                  form: str = "lvc") -> Dict[str, torch.Tensor]:
    """Gradient of :func:`meta_loss` (mean over ``tasks``) with respect to ``params``."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = meta_loss(leaves, tasks, m, discrete, form)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)}


def flatten(tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    return _flatten(tensors, list(tensors))


def seed_for(*stream: int) -> int:
    """A 32-bit seed that is a pure function of ``stream``: (run seed, iteration, task index),
    then (task seed, phase, ...); never of which process or runner asks."""
    return int(np.random.SeedSequence([int(s) % 2**63 for s in stream]).generate_state(1)[0])


# -- sampling: what one EnvRunner does for its shard of the meta-batch ----------------------------
def stack_params(per_task: Sequence[Params]) -> Params:
    """``k`` parameter dicts -> one dict of tensors with a leading task axis ``[k, ...]``."""
    return {name: torch.stack([p[name].detach() for p in per_task]) for name in per_task[0]}


def stacked_mlp(stack: Params, obs: torch.Tensor) -> torch.Tensor:
    """Per-task MLP, batched: ``obs [k, E, d] -> [k, E, out]`` with
    ``x_{l+1}[i] = tanh(x_l[i] W_l[i]^T + b_l[i])`` (no tanh after the last layer), i.e.
    :func:`_mlp` of task ``i``'s parameters on task ``i``'s observations, in one bmm per layer."""
    n = sum(1 for name in stack if name.endswith(".weight"))
    x = obs
    for i in range(n):
        x = torch.baddbmm(stack[f"l{i}.bias"].unsqueeze(1), x, stack[f"l{i}.weight"].transpose(1, 2))
        if i < n - 1:
            x = torch.tanh(x)
    return x


def stacked_sample(stack: Params, obs: torch.Tensor, discrete: bool, gens: Sequence[torch.Generator]):
    """Actions and their log-probabilities ``[k, E, ...]``, task ``i``'s noise from ``gens[i]`` only
    (so a task's actions do not depend on the other tasks batched with it)."""
    with torch.no_grad():
        out = stacked_mlp(stack, obs)
        if discrete:
            probs = torch.softmax(out, -1)
            act = torch.stack([torch.multinomial(probs[i], 1, generator=g).squeeze(-1) for i, g in enumerate(gens)])
            return act, torch.log(probs.gather(-1, act.unsqueeze(-1)).squeeze(-1))
        std = stack["log_std"].exp().unsqueeze(1) if "log_std" in stack else torch.ones(())
        noise = torch.stack([torch.randn(out.shape[1:], generator=g) for g in gens])
        act = out + std * noise
        return act, torch.distributions.Normal(out, std).log_prob(act).sum(-1)


class TaskEnvPool:
    """Gymnasium envs of one env id and keyword arguments, created on demand and reused:
    sub-environment ``j`` of a lock-step rollout is ``envs[j]`` (``envs`` may start with the
    sub-environments of an EnvRunner's vector env)."""

    def __init__(self, env: str, env_config: Optional[Dict[str, Any]] = None, envs: Sequence[Any] = ()):
        self.env, self.env_config = env, dict(env_config or {})
        self.envs: List[Any] = list(envs)

    def get(self, n: int) -> List[Any]:
        from distmeta.envs import make

        while len(self.envs) < n:
            self.envs.append(make(self.env, **self.env_config))
        return self.envs[:n]

    @property
    def discrete(self) -> bool:
        return hasattr(self.get(1)[0].action_space, "n")


def env_key(env_config: Optional[Dict[str, Any]]) -> str:
    return json.dumps(env_config or {}, sort_keys=True, default=str)


def rollout(envs: Sequence[Any], stack: Params, episodes: int, gens: Sequence[torch.Generator],
            reset_seeds: Sequence[int], discrete: bool):
    """Step ``N = k * episodes`` envs in lock-step until every episode ended; env ``j`` runs task
    ``j // episodes`` with that task's parameters (``stack[..][j // episodes]``). Returns
    ``(obs [N,T,d], act [N,T,a], rew [N,T], logp_old [N,T], mask [N,T])``, mask 1 while alive."""
    k, N = len(gens), len(gens) * episodes
    cur = np.stack([np.asarray(env.reset(seed=int(s))[0], dtype=np.float32).reshape(-1)
                    for env, s in zip(envs[:N], reset_seeds)])
    done = np.zeros(N, bool)
    O, A, R, L, M = [], [], [], [], []
    while not done.all():
        act, logp = stacked_sample(stack, torch.from_numpy(cur).view(k, episodes, -1), discrete, gens)
        act = act.reshape(N, -1).numpy()
        rew, nxt, mask = np.zeros(N), cur.copy(), (~done).astype(np.float64)
        for j in np.flatnonzero(~done):
            o, r, term, trunc, _ = envs[j].step(int(act[j, 0]) if discrete else act[j])
            nxt[j], rew[j], done[j] = np.asarray(o, dtype=np.float32).reshape(-1), r, term or trunc
        O.append(cur), A.append(act), R.append(rew), L.append(logp.reshape(N).numpy()), M.append(mask)
        cur = nxt
    return tuple(np.stack(x, axis=1) for x in (O, A, R, L, M))


def adapt_detached(params: Params, batch: Batch, inner_lr: float, discrete: bool) -> Params:
    """One inner step without a graph (what a runner does to sample post-adaptation episodes):
    ``theta' = theta - alpha grad inner_loss(theta)``, the same values the learner's
    differentiable :func:`adapt` computes."""
    p = {name: v.detach().requires_grad_(True) for name, v in params.items()}
    return {name: v.detach() for name, v in adapt(p, [batch], inner_lr, True, discrete, create_graph=False).items()}


@dataclass
class TaskResult:
    """One task of a shard: its index in the meta-batch, the mean episode return after
    0..K inner steps, the env steps taken and (training) the learner's data."""
    index: int
    returns: np.ndarray
    env_steps: int
    data: Optional[TaskData] = None


@dataclass
class SampleSpec:
    """How a shard is sampled (the same for every task of an iteration)."""
    episodes: int
    inner_steps: int
    inner_lr: float
    gamma: float = 0.99
    baseline: str = "linear"
    keep_data: bool = True


def sample_tasks(pool: TaskEnvPool, params: Params, tasks: Sequence[Dict[str, Any]], task_indices: Sequence[int],
                 seeds: Sequence[int], spec: SampleSpec, width: int = 0) -> List[TaskResult]:
    """Sample a shard: chunks of ``max(1, width // episodes)`` tasks (a chunk's sub-environments
    all step together), each task: episodes with theta, an inner step, episodes with theta', ...
    (``spec.inner_steps`` steps). Task ``i``'s data depend on ``(params, tasks[i], seeds[i])`` only."""
    per_chunk = max(1, int(width) // spec.episodes)
    out: List[TaskResult] = []
    for c in range(0, len(tasks), per_chunk):
        sl = slice(c, c + per_chunk)
        out += _sample_chunk(pool, params, tasks[sl], task_indices[sl], seeds[sl], spec)
    return out


def _sample_chunk(pool: TaskEnvPool, params: Params, tasks, indices, seeds, spec: SampleSpec) -> List[TaskResult]:
    k, E, K = len(tasks), spec.episodes, spec.inner_steps
    envs, discrete = pool.get(k * E), pool.discrete
    for j, env in enumerate(envs):
        env.unwrapped.set_task(tasks[j // E])
    per_task: List[Params] = [params] * k
    inner: List[List[Batch]] = [[] for _ in range(k)]
    returns, steps = np.zeros((k, K + 1)), np.zeros(k, dtype=np.int64)
    batches: List[Batch] = []
    for phase in range(K + 1):
        gens = [torch.Generator().manual_seed(seed_for(s, phase, 0)) for s in seeds]
        resets = [seed_for(s, phase, 1 + e) for s in seeds for e in range(E)]
        O, A, R, L, M = rollout(envs, stack_params(per_task), E, gens, resets, discrete)
        steps += M.reshape(k, -1).sum(1).astype(np.int64)
        returns[:, phase] = (R * M).reshape(k, E, -1).sum(2).mean(1)
        if phase == K and not spec.keep_data:
            break
        batches = [make_batch(*(x[i * E:(i + 1) * E] for x in (O, A, R, L, M)), gamma=spec.gamma,
                              baseline=spec.baseline) for i in range(k)]
        if phase < K:
            for i, b in enumerate(batches):
                inner[i].append(b)
            per_task = [adapt_detached(p, b, spec.inner_lr, discrete) for p, b in zip(per_task, batches)]
    return [TaskResult(int(indices[i]), returns[i], int(steps[i]),
                       TaskData(inner[i], batches[i]) if spec.keep_data else None) for i in range(k)]


# -- summaries -----------------------------------------------------------------------------------
PRETRAINED_LR_GRID = np.array([0.01, 0.03, 0.1, 0.3, 1.0])  # x inner_lr, for the "pretrained_best_lr" baseline


def summarize(returns: np.ndarray) -> Dict[str, Any]:
    """Mean over tasks, its standard error s / sqrt(n) and the 95 % CI half-width 1.96 se."""
    r = np.asarray(returns, dtype=np.float64)
    se = float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float("nan")
    return {"mean_return": float(r.mean()), "ci95": 1.96 * se, "se": se, "tasks": int(len(r))}


def summary_by_inner_steps(returns_by_step: np.ndarray, inner_steps: int) -> Dict[str, Any]:
    """``returns_by_step [tasks, K+1]`` -> the summary after ``inner_steps`` steps (the headline)
    plus ``mean_return_by_inner_steps`` / ``ci95_by_inner_steps`` {"0": .., "1": .., ...}."""
    r = np.asarray(returns_by_step, dtype=np.float64)
    out = summarize(r[:, min(inner_steps, r.shape[1] - 1)])
    out["mean_return_by_inner_steps"] = {str(k): float(r[:, k].mean()) for k in range(r.shape[1])}
    out["ci95_by_inner_steps"] = {str(k): summarize(r[:, k])["ci95"] for k in range(r.shape[1])}
    return out
