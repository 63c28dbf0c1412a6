"""``Network`` = backbone + optional head chosen by the algorithm.

Parameter names starting with ``head.`` belong to the head (ANIL adapts only
those). An algorithm may add meta-learned tensors of its own
(``Algorithm.extra_parameters``, e.g. Meta-SGD's ``meta_lr.*`` learned inner
learning rates): they are meta-learned but never adapted.
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

    def add_parameters(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Add ``group.key`` tensors as parameters of a ParameterDict ``group``."""
        for name, value in tensors.items():
            group, key = name.split(".", 1)
            if not hasattr(self, group):
                self.add_module(group, nn.ParameterDict())
            getattr(self, group)[key] = nn.Parameter(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x)
        return self.head(z) if self.head is not None else z


def build_network(cfg, input_shape, algorithm, output_dim: int) -> Network:
    """The model a config describes: registered backbone + the algorithm's head."""
    backbone = MODELS.get(cfg.model.name)(cfg.model, tuple(input_shape))
    head = algorithm.make_head(backbone.out_features, output_dim)
    net = Network(backbone, head, algorithm.make_extras(backbone.out_features))
    net.add_parameters(algorithm.extra_parameters(list(net.named_parameters())))
    return net
