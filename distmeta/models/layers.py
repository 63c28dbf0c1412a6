"""Layers that behave correctly inside meta-learning inner loops.

``TaskBatchNorm2d`` normalises with the statistics of the batch it is given,
always (transductive batch norm, as in MAML):
    y = gamma * (x - mean_{N,H,W}(x)) / sqrt(var_{N,H,W}(x) + eps) + beta
It keeps no running statistics, so nothing leaks from one task to the next.

Two implementations of the same function:
- by default, torch's fused batch-norm kernel (``torch.batch_norm`` in training
  mode, no running statistics). Its forward, backward and double backward equal the
  composite form's (``tests/test_meta_gradients.py``, ``gradgradcheck`` included),
  and on one CPU thread a conv4 meta-step with it takes 0.6-0.8x the time: the
  composite form makes several passes over the 64 x 28 x 28 activations forward and
  more backward, about half of the old meta-step's time;
- inside :func:`composite_ops` (the ``vmap`` executor enters it): the same formula
  written with plain tensor ops, whose second-order gradients under
  ``torch.func.vmap`` over tasks are exact on every device and whose GPU speed
  under vmap is the one measured (docs/results.md). It is also used when there is
  a single value per channel, where the fused kernel refuses to run.

``MaxPool2d`` is ``nn.MaxPool2d`` whose 2x2, stride-2 forward on CPU runs torch's
channels-last kernel (vectorised over channels; the NCHW kernel is scalar: 20 ms
against 7 ms, conversions included, for a 75 x 64 x 28 x 28 batch on one thread)
and hands back the NCHW result and the NCHW indices, so its backward is torch's own
``max_pool2d`` backward with its own double backward: the same values, indices and
gradients, bit for bit.
Elsewhere (other shapes, GPU, under ``torch.func`` transforms, within
:func:`composite_ops`) it is ``nn.MaxPool2d``.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

_COMPOSITE = contextvars.ContextVar("distmeta_composite_ops", default=False)


@contextlib.contextmanager
def composite_ops():
    """Within this context, layers use their plain-tensor-op form (for ``torch.func.vmap``)."""
    token = _COMPOSITE.set(True)
    try:
        yield
    finally:
        _COMPOSITE.reset(token)


def _plain_cpu_tensor(x: torch.Tensor) -> bool:
    """A CPU tensor outside ``torch.func`` transforms and :func:`composite_ops`."""
    if _COMPOSITE.get() or x.device.type != "cpu":
        return False
    # Internal torch API, used because no public one tells whether a tensor is being traced by
    # torch.func (grad/vmap), where the custom autograd.Function below must not run. Missing ->
    # the plain nn.MaxPool2d path. Pinned by tests/test_meta_gradients.py (fallback under vmap and grad).
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and not wrapped(x)


class _MaxPool2x2(torch.autograd.Function):
    """2x2 stride-2 max-pool: forward by the channels-last kernel, backward by torch's
    NCHW ``max_pool2d_with_indices_backward`` (differentiable: second order works)."""

    @staticmethod
    def forward(x):
        y, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last),
                                                        [2, 2], [2, 2])
        return y.contiguous(), idx.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _grad_idx):
        x, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)


class MaxPool2d(nn.MaxPool2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 4 and x.is_floating_point() and _plain_cpu_tensor(x) and x.is_contiguous()
                and self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices):
            return _MaxPool2x2.apply(x)[0]
        return super().forward(x)


class TaskBatchNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _COMPOSITE.get() or x.numel() == x.shape[1]:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
            x = (x - mean) / torch.sqrt(var + self.eps)
            return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return torch.batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps, False)
