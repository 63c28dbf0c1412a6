"""The Python API for trained models.

``load(path)`` reads a run folder or a checkpoint with
``torch.load(weights_only=True)`` (a checkpoint never executes code), rebuilds
the model from the config stored in it and returns an :class:`AdaptableModel`:
``model.adapt(support_x, support_y)`` returns a :class:`Predictor` whose
``predict(query_x)`` gives class scores (classification) or values
(regression).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from distmeta.config import from_dict, without_removed_fields
from distmeta.engine.run_dir import CheckpointError, load_run_checkpoint


class Predictor:
    def __init__(self, model: "AdaptableModel", state):
        self._model, self._state = model, state

    def predict(self, query_x) -> torch.Tensor:
        m = self._model
        with torch.no_grad():
            return m.algorithm.predict(m.network, m.params, m.buffers, self._state, m.as_input(query_x))


class AdaptableModel:
    def __init__(self, cfg, network, algorithm, device):
        self.config, self.network, self.algorithm, self.device = cfg, network, algorithm, device
        self.dtype = next(network.parameters()).dtype
        self.params = {k: v.detach() for k, v in network.named_parameters()}
        self.buffers = dict(network.named_buffers())

    def as_input(self, x) -> torch.Tensor:
        """``x`` as a tensor the network takes: on the model's device, floats in its dtype."""
        x = torch.as_tensor(x)
        return (x.to(self.dtype) if x.is_floating_point() else x).to(self.device)

    def adapt(self, support_x, support_y, steps: Optional[int] = None) -> Predictor:
        """Adapt to a task from its support set (inner loop, prototypes or support embeddings)."""
        y = torch.as_tensor(support_y)
        y = y.to(self.device) if not y.is_floating_point() else y.to(self.device, self.dtype)
        state = self.algorithm.adapt(self.network, self.params, self.buffers, self.as_input(support_x), y, steps)
        return Predictor(self, state)


def load(path: Union[str, Path], device: str = "cpu", checkpoint: str = "final") -> AdaptableModel:
    """``checkpoint``: ``final`` (the newest) or ``best`` (selected on validation tasks)."""
    from distmeta.models.network import build_network
    from distmeta.registry import ALGORITHMS

    ckpt, _ = load_run_checkpoint(path, checkpoint)
    cfg = from_dict(without_removed_fields(ckpt["config"], str(path)))
    if cfg.rl is not None:
        raise CheckpointError(f"{path}: a Meta-RL run; evaluate it with distmeta eval")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r}: CUDA is not available on this machine")
    state = ckpt["state"]
    input_shape, output_dim, kind = _task_shape(state)
    algorithm = ALGORITHMS.get(cfg.algorithm.name)(cfg.algorithm, kind)
    network = build_network(cfg, input_shape, algorithm, output_dim).to(getattr(torch, cfg.engine.dtype))
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: parameters do not fit the model of its config ({str(exc).splitlines()[0]})")
    return AdaptableModel(cfg, network.to(device), algorithm, torch.device(device))


def _task_shape(state):
    """Input shape, output size and task kind, stored with the checkpoint's config."""
    meta = state.get("task_shape")
    if meta:
        return tuple(meta["input_shape"]), int(meta["output_dim"]), meta["kind"]
    raise CheckpointError("checkpoint lacks task_shape; it was written by an older distmeta")

