"""An attention-memory policy/value RLModule for RL^2 with PPO on RLlib's new API stack
(``rl.rl2.recurrent: attention``), in the spirit of SNAIL (Mishra et al. 2018).

A GRU must squeeze everything it has seen in a trial into one vector, and what it stores fades.
This module keeps the trial's last M inputs themselves (M = ``rl2.memory``, default
``rl2.max_seq_len``) and reads them with one layer of multi-head attention, so a tabular MDP's
rewards seen in state s a hundred steps ago are as easy to look up as the last one. Over the
:class:`~distmeta.rl.trial_wrapper.TrialWrapper` inputs ``x_t`` (with ``rl2.prev_obs`` each holds a
whole transition ``(s_{t-1}, a_{t-1}, r_{t-1}, s_t)``)::

    e_j = W MLP(x_j)                                        # rl2.hidden (tanh), then d = cell_size
    a_t = MHA(q = LN(e_t), k = v = LN(e_j) for j in (t - M, t])   # rl2.heads heads; the current
                                                            # input and the M - 1 before it
    z_t = e_t + a_t;  z_t = z_t + FF(LN(z_t))               # pre-norm residual block, FF: d -> 2d -> d
    pi(a_t | x_<=t) = dist(MLP_pi([z_t, x_t]))              # rl2.head_hidden (empty: linear)
    V(x_<=t)        = MLP_v([z_t, x_t])

One attention layer on purpose: its output at t depends on ``x_{t-M+1..t}`` only, so a step of
one input with the memory as state and a chunk of T inputs give the same numbers (what RLlib's
sampling, T = 1, and its Learner, T = ``max_seq_len``, rely on). A single head can already
average ``[onehot(a) r, onehot(a)]`` over the past transitions out of the current state, the
statistics of a per-(s, a) mean reward.

State: ``{"memory": (M, obs_dim + 1)}``, the last M raw inputs, each with a last column of 1 for
a real input (0 for the empty slots of the initial state, which attention masks out). Inputs
come batch-major, ``OBS: (B, T, obs_dim)``; RLlib stores the state after every step and feeds
each Learner chunk the state that entered it, as for its LSTM encoder.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override

from distmeta.rl.memory_module import MemoryPPOTorchRLModule, mlp_head, tanh_layers


def attention_model_config(dim: int, hidden: List[int], max_seq_len: int, head_hidden: Optional[List[int]] = None,
                           memory: int = 0, heads: int = 4) -> Dict[str, Any]:
    """The ``model_config`` dict of :class:`AttentionPPOTorchRLModule` (memory 0: ``max_seq_len``)."""
    return {"attn_dim": int(dim), "attn_hidden": [int(h) for h in hidden],
            "attn_head_hidden": [int(h) for h in head_hidden or []],
            "attn_memory": int(memory) or int(max_seq_len), "attn_heads": int(heads),
            "max_seq_len": int(max_seq_len)}


def window_mask(memory: int, steps: int) -> torch.Tensor:
    """``(steps, memory + steps)`` bool, True where attention is *blocked*: keys are the ``memory``
    stored inputs followed by the ``steps`` new ones; query i (key ``memory + i``) sees keys
    ``i + 1 .. memory + i``, the current input and the ``memory - 1`` before it."""
    key = torch.arange(memory + steps)
    query = torch.arange(steps).unsqueeze(1) + memory
    return (key > query) | (key <= query - memory)


class AttentionPPOTorchRLModule(MemoryPPOTorchRLModule):
    """Embedding MLP -> one multi-head attention block over the trial's last M inputs -> heads."""

    @override(TorchRLModule)
    def setup(self):
        cfg = self.model_config or {}
        self._obs_dim = int(self.observation_space.shape[0])
        self._memory = int(cfg.get("attn_memory", cfg.get("max_seq_len", 20)))
        dim = int(cfg.get("attn_dim", 64))
        layers, in_size = tanh_layers(self._obs_dim, cfg.get("attn_hidden", [64]))
        self._embed = nn.Sequential(*layers, nn.Linear(in_size, dim))
        self._norm_q, self._norm_kv, self._norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self._attn = nn.MultiheadAttention(dim, int(cfg.get("attn_heads", 4)), batch_first=True)
        self._ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))
        out = self.get_train_action_dist_cls().required_input_dim(self.action_space)
        head_hidden = [int(h) for h in cfg.get("attn_head_hidden") or []]
        self._pi = mlp_head(dim + self._obs_dim, head_hidden, out, gain=0.01)  # near-uniform initial policy
        self._vf = mlp_head(dim + self._obs_dim, head_hidden, 1, gain=1.0)

    @override(RLModule)
    def get_initial_state(self) -> Dict[str, torch.Tensor]:
        return {"memory": torch.zeros(self._memory, self._obs_dim + 1)}

    def _encode(self, batch: Dict[str, Any]):
        """(B, T, obs_dim), {"memory": (B, M, obs_dim + 1)} -> [z_t, x_t] (B, T, d + obs_dim),
        {"memory": (B, M, obs_dim + 1)} (the last M inputs after the chunk)."""
        obs = batch[Columns.OBS].float()
        B, T = obs.shape[:2]
        stored = batch[Columns.STATE_IN]["memory"].float()
        inputs = torch.cat([stored, torch.cat([obs, obs.new_ones(B, T, 1)], dim=-1)], dim=1)  # (B, M + T, D + 1)
        x, real = inputs[..., :-1], inputs[..., -1] > 0.5
        e = self._embed(x)
        kv = self._norm_kv(e)
        blocked = window_mask(self._memory, T).to(obs.device)
        # per (batch, query) mask: the window's positions that hold no real input are blocked too
        mask = blocked.unsqueeze(0) | ~real.unsqueeze(1)                       # (B, T, M + T)
        mask = mask.repeat_interleave(self._attn.num_heads, dim=0)             # (B * heads, T, M + T)
        query = e[:, self._memory:]
        attended, _ = self._attn(self._norm_q(query), kv, kv, attn_mask=mask, need_weights=False)
        z = query + attended
        z = z + self._ff(self._norm_ff(z))
        return torch.cat([z, obs], dim=-1), {"memory": inputs[:, -self._memory:]}
