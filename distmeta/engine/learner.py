"""The central learner: owns the meta-parameters, the outer optimizer, the step
counter and the learning-rate schedule.

``apply(mean_grad)`` performs one outer update theta <- opt(theta, g) with
g the task-averaged flat gradient the executors returned; it is the only place
parameters change, so a step is applied exactly once whoever computed it.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from distmeta.engine.core import MetaCore


class Learner:
    def __init__(self, core: MetaCore):
        self.core = core
        self.cfg = core.cfg
        self.model = core.model
        self.optimizer = core.algorithm.outer_optimizer(self.model.parameters(), self.cfg.optim)
        self.step = 0

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).cpu()

    def learning_rate(self, step: int) -> float:
        o = self.cfg.optim
        base = o.lr * (o.lr_decay ** (step // o.decay_every) if o.decay_every else 1.0)
        return self.core.algorithm.outer_lr(base, step, o.steps)

    def apply(self, mean_grad: torch.Tensor) -> None:
        offset = 0
        for p in self.model.parameters():
            n = p.numel()
            p.grad = mean_grad[offset: offset + n].view_as(p).to(p.device, p.dtype).clone()
            offset += n
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "learner_step": self.step,
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["learner_step"])
        torch.set_rng_state(state["torch_rng"])
