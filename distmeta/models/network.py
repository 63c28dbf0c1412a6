"""``Network`` = backbone + optional head chosen by the algorithm.

Parameter names starting with ``head.`` belong to the head (ANIL adapts only
those); names starting with ``meta_lr.`` are Meta-SGD's learned per-parameter
inner learning rates, which are meta-learned but never adapted.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from distmeta.registry import MODELS


class Network(nn.Module):
    def __init__(self, backbone: nn.Module, head: Optional[nn.Module] = None,
                 extras: Optional[Dict[str, nn.Module]] = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        for name, module in (extras or {}).items():
            self.add_module(name, module)  # algorithm-specific parts, e.g. a Siamese verifier
        self.meta_lr = nn.ParameterDict()

    def add_learned_inner_lrs(self, init: float) -> None:
        for name, p in list(self.named_parameters()):
            if not name.startswith("meta_lr."):
                self.meta_lr[name.replace(".", "__")] = nn.Parameter(torch.full_like(p, init))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x)
        return self.head(z) if self.head is not None else z


def build_network(cfg, input_shape, algorithm, output_dim: int) -> Network:
    """The model a config describes: registered backbone + the algorithm's head."""
    backbone = MODELS.get(cfg.model.name)(cfg.model, tuple(input_shape))
    head = algorithm.make_head(backbone.out_features, output_dim)
    net = Network(backbone, head, algorithm.make_extras(backbone.out_features))
    if getattr(cfg.algorithm, "learn_inner_lr", False):
        net.add_learned_inner_lrs(cfg.algorithm.inner_lr)
    return net
