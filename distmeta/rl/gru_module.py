"""A GRU policy/value RLModule for PPO on RLlib's new API stack (``rl.rl2.recurrent: gru``).

Over the :class:`~distmeta.rl.trial_wrapper.TrialWrapper` observations
``x_t = [obs_t, a_{t-1}, r_{t-1}, done_{t-1}]`` the module computes::

    e_t = MLP(x_t)                        # rl2.hidden, tanh
    h_t = GRU(e_t, h_{t-1})               # rl2.cell_size, h_0 = 0 at the start of a trial
    pi(a_t | x_<=t) = dist(W_pi h_t)      # Categorical (Discrete) or DiagGaussian (Box)
    V(x_<=t)        = w_v . h_t           # ValueFunctionAPI.compute_values, for PPO's GAE

With ``rl2.chrono: N`` the update gate starts with :func:`chrono_init_`'s memory spans of up
to N steps (for a memory that must last a whole trial). With ``rl2.head_hidden``
(``gru_head_hidden``) non-empty, the two heads are MLPs (tanh)
over ``[h_t, x_t]`` instead: ``pi = dist(MLP_pi([h_t, x_t]))``, ``V = MLP_v([h_t, x_t])``.
The current input then reaches the heads directly, so reading the memory ``h_t`` at the
current observation (a tabular MDP's row of the current state) need not happen inside the
recurrent update.

The recurrent state is ``{"h": (cell_size,)}`` (batched: ``(B, cell_size)``). Inputs come
batch-major, ``OBS: (B, T, obs_dim)`` with ``STATE_IN["h"]: (B, cell_size)``: T = 1 on the
EnvRunners, T = ``max_seq_len`` on the Learner, where RLlib's connectors
(``AddStatesFromEpisodesToBatch``) cut episodes into ``max_seq_len`` chunks, pad them and
feed each chunk the stored state that entered it, as for RLlib's LSTM encoder; the
connectors and GAE read ``model_config["max_seq_len"]``.
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


def gru_model_config(cell_size: int, hidden: List[int], max_seq_len: int,
                     head_hidden: Optional[List[int]] = None, chrono: int = 0) -> Dict[str, Any]:
    """The ``model_config`` dict of :class:`GRUPPOTorchRLModule`."""
    return {"gru_cell_size": int(cell_size), "gru_hidden": [int(h) for h in hidden],
            "gru_head_hidden": [int(h) for h in head_hidden or []], "gru_chrono": int(chrono),
            "max_seq_len": int(max_seq_len)}


def chrono_init_(gru: nn.GRU, max_steps: int, generator: Optional[torch.Generator] = None) -> None:
    """Chrono initialisation (Tallec and Ollivier 2018) of a one-layer ``nn.GRU``'s update gate.

    torch's GRU keeps ``z`` of the old state, ``h_t = (1 - z) * n + z * h_{t-1}``, so a unit with
    update-gate bias b starts out remembering over about ``1 + e^b`` steps. Drawing
    ``b ~ log(U(1, max_steps - 1))`` (input-side bias; the hidden-side one 0) spreads the units'
    initial memory spans over 2 to ``max_steps`` steps instead of torch's default of about 2."""
    H = gru.hidden_size
    with torch.no_grad():
        u = torch.rand(H, generator=generator) * (max_steps - 2) + 1.0
        gru.bias_ih_l0[H:2 * H] = torch.log(u)       # torch's gate order: reset, update, new
        gru.bias_hh_l0[H:2 * H] = 0.0


class GRUPPOTorchRLModule(MemoryPPOTorchRLModule):
    """MLP -> GRU -> (policy head, value head), with a shared recurrent encoder."""

    @override(TorchRLModule)
    def setup(self):
        cfg = self.model_config or {}
        self._cell_size = int(cfg.get("gru_cell_size", 64))
        layers, in_size = tanh_layers(int(self.observation_space.shape[0]), cfg.get("gru_hidden", [64]))
        self._mlp = nn.Sequential(*layers)
        self._gru = nn.GRU(in_size, self._cell_size, batch_first=True)
        if int(cfg.get("gru_chrono", 0)) > 2:
            chrono_init_(self._gru, int(cfg["gru_chrono"]))
        out = self.get_train_action_dist_cls().required_input_dim(self.action_space)
        head_hidden = [int(h) for h in cfg.get("gru_head_hidden") or []]
        self._skip = bool(head_hidden)   # heads over [h_t, x_t]
        if self._skip:
            head_in = self._cell_size + int(self.observation_space.shape[0])
            self._pi = mlp_head(head_in, head_hidden, out, gain=0.01)  # near-uniform initial policy
            self._vf = mlp_head(head_in, head_hidden, 1, gain=1.0)
            return
        self._pi = nn.Linear(self._cell_size, out)
        self._vf = nn.Linear(self._cell_size, 1)
        nn.init.orthogonal_(self._pi.weight, gain=0.01)  # near-uniform initial policy
        nn.init.zeros_(self._pi.bias)
        nn.init.orthogonal_(self._vf.weight, gain=1.0)
        nn.init.zeros_(self._vf.bias)

    @override(RLModule)
    def get_initial_state(self) -> Dict[str, torch.Tensor]:
        return {"h": torch.zeros(self._cell_size)}

    def _encode(self, batch: Dict[str, Any]):
        """(B, T, obs_dim), {"h": (B, H)} -> embeddings (B, T, H) (skip heads: [h_t, x_t],
        (B, T, H + obs_dim)), {"h": (B, H)}."""
        obs = batch[Columns.OBS].float()
        h0 = batch[Columns.STATE_IN]["h"].float().unsqueeze(0)  # (num_layers=1, B, H)
        out, h = self._gru(self._mlp(obs), h0)
        if self._skip:
            out = torch.cat([out, obs], dim=-1)
        return out, {"h": h.squeeze(0)}
