"""Backbones. Each factory takes ``(model_cfg, input_shape)`` and returns an
``nn.Module`` mapping inputs to embeddings, with attribute ``out_features``.

- ``mlp``: Linear-ReLU stack (1-40-40 for sinusoid regression, Finn et al. 2017).
- ``conv4``: 4 x [conv3x3(channels), TaskBatchNorm, ReLU, maxpool2x2], flattened
  (Vinyals et al. 2016; 64 channels for Omniglot, 32 for mini-ImageNet MAML).
  Each block applies the max-pool before the ReLU: ``relu(maxpool(x)) ==
  maxpool(relu(x))`` (ReLU is monotone), with the same gradients, while the ReLU
  and its backward touch a quarter of the values (a few % of a CPU meta-step;
  parameter names are unchanged). The pool is ``layers.MaxPool2d`` (a faster CPU
  forward, the same results) and the convolutions ``layers.Conv2d`` (a faster CPU
  first layer on grey images, the same function).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from distmeta.models.layers import Conv2d, MaxPool2d, TaskBatchNorm2d
from distmeta.registry import MODELS


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int]):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class Conv4(nn.Module):
    def __init__(self, in_channels: int, channels: int, image_size: int, batch_norm: bool = True):
        super().__init__()
        blocks, c, size = [], in_channels, image_size
        for _ in range(4):
            blocks += [Conv2d(c, channels, 3, padding=1, bias=not batch_norm)]  # BN cancels a bias
            blocks += [TaskBatchNorm2d(channels)] if batch_norm else []
            blocks += [MaxPool2d(2), nn.ReLU()]  # = ReLU then pool, cheaper
            c, size = channels, size // 2
        self.net = nn.Sequential(*blocks)
        self.out_features = channels * max(size, 1) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


@MODELS.register("mlp")
def mlp(model_cfg, input_shape):
    n = 1
    for d in input_shape:
        n *= d
    return MLP(n, model_cfg.hidden)


@MODELS.register("conv4")
def conv4(model_cfg, input_shape):
    channels, size = input_shape[0], input_shape[-1]
    return Conv4(channels, model_cfg.channels, size, model_cfg.batch_norm)


conv4.inputs = "images"  # (channels, height, width); mlp takes any shape (it flattens)
