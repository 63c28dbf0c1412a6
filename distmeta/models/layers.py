"""Layers that behave correctly inside meta-learning inner loops.

``TaskBatchNorm2d`` normalises with the statistics of the batch it is given,
always (transductive batch norm, as in MAML):
    y = gamma * (x - mean_{N,H,W}(x)) / sqrt(var_{N,H,W}(x) + eps) + beta
It keeps no running statistics, so nothing leaks from one task to the next, and
it is written with plain tensor ops, so ``torch.func.vmap`` over tasks gives
exact second-order gradients (native ``nn.BatchNorm2d`` does not; see docs/architecture.md).
"""
from __future__ import annotations

import torch
from torch import nn


class TaskBatchNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]
