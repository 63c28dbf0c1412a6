"""What distmeta's RL^2 memory modules share (:mod:`~distmeta.rl.gru_module`,
:mod:`~distmeta.rl.attention_module`): tanh MLP builders and :class:`MemoryPPOTorchRLModule`,
a PPO RLModule whose subclass supplies only ``_encode`` and the two heads.

Contract of ``_encode(batch) -> (embeddings, state_out)``: ``batch`` holds ``OBS (B, T, obs_dim)``
and ``STATE_IN`` (the subclass's state, batched); ``embeddings (B, T, E)`` are what the heads
read, ``pi(a_t | x_<=t) = dist(self._pi(embeddings))`` and ``V = self._vf(embeddings)``, and
``state_out`` is the state after the chunk.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override


def tanh_layers(in_size: int, hidden: List[int]):
    """``(layers, out_size)``: Linear + tanh for each size in ``hidden``."""
    layers: List[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_size, int(size)), nn.Tanh()]
        in_size = int(size)
    return layers, in_size


def mlp_head(in_size: int, hidden: List[int], out: int, gain: float) -> nn.Module:
    """tanh MLP ``in_size -> hidden... -> out``; the last layer orthogonal with ``gain``, bias 0."""
    layers, in_size = tanh_layers(in_size, hidden)
    last = nn.Linear(in_size, out)
    nn.init.orthogonal_(last.weight, gain=gain)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class MemoryPPOTorchRLModule(TorchRLModule, ValueFunctionAPI):
    """A PPO RLModule over a memory encoder: subclasses set up ``self._pi``, ``self._vf`` and
    implement ``_encode`` (module docstring); forwards and ``compute_values`` are shared."""

    def __init__(self, *args, **kwargs):
        # PPO's default spec carries PPOCatalog; these modules build their own layers, and a
        # module built through Ray must equal one built from a checkpoint without it.
        kwargs.pop("catalog_class", None)
        super().__init__(*args, **kwargs)

    def _encode(self, batch: Dict[str, Any]):
        raise NotImplementedError

    @override(RLModule)
    def _forward(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        emb, state_out = self._encode(batch)
        return {Columns.ACTION_DIST_INPUTS: self._pi(emb), Columns.STATE_OUT: state_out}

    @override(RLModule)
    def _forward_train(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        emb, state_out = self._encode(batch)
        return {Columns.ACTION_DIST_INPUTS: self._pi(emb), Columns.STATE_OUT: state_out,
                Columns.EMBEDDINGS: emb}

    @override(ValueFunctionAPI)
    def compute_values(self, batch: Dict[str, Any], embeddings: Optional[Any] = None) -> torch.Tensor:
        if embeddings is None:
            embeddings, _ = self._encode(batch)
        return self._vf(embeddings).squeeze(-1)
