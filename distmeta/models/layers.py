"""Layers that behave correctly inside meta-learning inner loops.

``TaskBatchNorm2d`` normalises with the statistics of the batch it is given,
always (transductive batch norm, as in MAML):
    y = gamma * (x - mean_{N,H,W}(x)) / sqrt(var_{N,H,W}(x) + eps) + beta
It keeps no running statistics, so nothing leaks from one task to the next.

Two implementations of the same function:
- by default, torch's fused batch-norm kernels (training mode, no running
  statistics). On CPU its double backward, which second-order MAML runs once per
  inner step and layer, is distmeta's own (``_TaskBatchNormGradient``): about 11
  passes over the activations where torch's generic formula makes about three times
  as many (1.2 against 3.4-4.3 ms for a 5 x 64 x 28 x 28 batch's second backward on
  one thread); a 5-step conv4 meta-step takes 0.92-0.94x the time. Forward,
  backward, double and third derivatives equal the composite form's
  (``tests/test_meta_gradients.py``, ``gradgradcheck`` included),
  and on one CPU thread a conv4 meta-step with the fused kernels takes 0.6-0.8x the
  time: the composite form makes several passes over the 64 x 28 x 28 activations
  forward and more backward, about half of the old meta-step's time;
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

``Conv2d`` is ``nn.Conv2d`` whose single-input-channel convolution of an input that
needs no gradient (conv4's first layer on grey images) runs torch's native im2col
kernels on CPU instead of oneDNN's: for 1 -> 64 channels at 28 x 28 on one thread,
1.8 against 24 ms forward and 4.3 against 11 ms for the weight gradient at 75 images
(0.16 against 1.4 and 0.3 against 0.8 ms at 5). With x constant,
    y = W * x + b,   dL/dW = x (*) dL/dy,   dL/db = sum_{n,h,w} dL/dy,
and dL/dW is linear in dL/dy with the convolution itself as its adjoint, so two
kernels (``_ConstantInputConv2d``, ``_ConvWeightGradient``) give every order of
derivative. Forward values are oneDNN's bit for bit; gradients agree to float32
rounding. Elsewhere (more input channels, where oneDNN is as fast or faster; an input
that needs a gradient; GPU; under ``torch.func`` transforms or :func:`composite_ops`)
it is ``nn.Conv2d``.
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


# Internal torch ops (torch's own CPU convolution kernels, what F.conv2d runs when oneDNN is
# off), used because torch's backend choice is a process-wide flag read again at backward
# time, with no public per-layer choice. Missing -> plain nn.Conv2d. Pinned by
# tests/test_meta_gradients.py (the path is taken, and equals F.conv2d to third order).
_NATIVE_CONV = all(hasattr(torch.ops.aten, op) for op in ("_slow_conv2d_forward", "_slow_conv2d_backward"))


class _ConstantInputConv2d(torch.autograd.Function):
    """y = W * x + b for a constant x (torch's native CPU kernel); differentiable in W, b."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)
        ctx.has_bias = bias is not None
        return torch.ops.aten._slow_conv2d_forward(x, weight, list(weight.shape[2:]), bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_weight = _ConvWeightGradient.apply(x, grad, weight.detach(), *ctx.geometry)
        grad_bias = grad.sum(dim=(0, 2, 3)) if ctx.has_bias else None
        return None, grad_weight, grad_bias, None, None


class _ConvWeightGradient(torch.autograd.Function):
    """dL/dW = x (*) g for a constant x: linear in g, whose adjoint is the convolution."""

    @staticmethod
    def forward(ctx, x, grad, weight, stride, padding):  # weight: its shape only
        ctx.save_for_backward(x)
        ctx.geometry = (stride, padding)
        return torch.ops.aten._slow_conv2d_backward(grad, x, weight, list(weight.shape[2:]), stride, padding,
                                                    [False, True, False])[1]

    @staticmethod
    def backward(ctx, grad_grad_weight):
        x, = ctx.saved_tensors
        return None, _ConstantInputConv2d.apply(x, grad_grad_weight, None, *ctx.geometry), None, None, None


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_NATIVE_CONV and self.in_channels == 1 and x.dim() == 4 and not x.requires_grad
                and x.dtype in (torch.float32, torch.float64) and _plain_cpu_tensor(x) and _plain_cpu_tensor(self.weight)
                and self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
                and not isinstance(self.padding, str)):
            return _ConstantInputConv2d.apply(x.contiguous(), self.weight, self.bias, list(self.stride),
                                              list(self.padding))
        return super().forward(x)


class MaxPool2d(nn.MaxPool2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 4 and x.is_floating_point() and _plain_cpu_tensor(x) and x.is_contiguous()
                and self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices):
            return _MaxPool2x2.apply(x)[0]
        return super().forward(x)


# Internal torch ops (the fused batch-norm kernels that torch.batch_norm runs on CPU), used to
# give the fused layer a double backward of its own: torch's generic one makes about three
# times the passes over the activations. Missing -> torch.batch_norm. Pinned by
# tests/test_meta_gradients.py (the path is taken; it equals the composite form to second order,
# gradgradcheck, and to third order).
_NATIVE_BN = all(hasattr(torch.ops.aten, op) for op in ("native_batch_norm", "native_batch_norm_backward"))


def _channel_layout(x: torch.Tensor):
    """Reduction dims (all but the channel dim 1), the per-channel broadcast shape, and m."""
    dims = [0] + list(range(2, x.dim()))
    return dims, [1, x.shape[1]] + [1] * (x.dim() - 2), x.numel() // x.shape[1]


class _TaskBatchNorm(torch.autograd.Function):
    """y = gamma * x_hat + beta with the batch's own statistics (the fused kernel)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight)
        ctx.stats = (mean, invstd, eps)   # functions of x, constants here: the backward accounts for them
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx, gw, gb = _TaskBatchNormGradient.apply(grad, x, weight, *ctx.stats)
        return gx, gw, gb, None


class _TaskBatchNormGradient(torch.autograd.Function):
    """Batch norm's backward as a function of (g, x, gamma), with r = 1/sqrt(var + eps), m values
    per channel and P(v) = v - mean(v) - x_hat mean(v x_hat):
        dx = gamma r P(g),   dgamma = sum g x_hat,   dbeta = sum g.
    Its backward, for upstream (u, u_gamma, u_beta) (u shaped like x), from
    S = <u, dx> + u_gamma dgamma + u_beta dbeta:
        grad_g     = gamma r P(u) + u_gamma x_hat + u_beta
        grad_gamma = r sum u P(g)
        grad_x     = r (G - mean(G) - x_hat mean(G x_hat)) - (R r^2 / m) x_hat,
    where G = dS/dx_hat = -(gamma r / m)(u sum g x_hat + g sum u x_hat) + u_gamma g and
    R = dS/dr = gamma sum u P(g). Every sum over G is a combination of the sums of u, g and
    their products with x_hat, so it takes about 11 passes over the activations, a third
    of torch's generic double backward. When a graph is being built (third order),
    the statistics are recomputed from x so that autograd sees all of their dependence."""

    @staticmethod
    def forward(ctx, grad, x, weight, mean, invstd, eps):
        ctx.set_materialize_grads(False)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True, eps,
                                                               [True, True, True])
        ctx.save_for_backward(grad, x, weight, gw, gb)
        ctx.stats = (mean, invstd, eps)
        return gx, gw, gb

    @staticmethod
    def backward(ctx, u, u_weight, u_bias):
        g, x, weight, sum_g_xhat, sum_g = ctx.saved_tensors
        mean, invstd, eps = ctx.stats
        dims, shape, m = _channel_layout(x)
        if torch.is_grad_enabled():   # differentiable in every input, statistics included
            centered = x - x.mean(dims).view(shape)
            invstd = (centered ** 2).mean(dims).add(eps).rsqrt()
            sum_g = g.sum(dims)
            x_hat = centered * invstd.view(shape)
            sum_g_xhat = (g * x_hat).sum(dims)
        else:
            x_hat = torch.addcmul((-mean * invstd).view(shape), x, invstd.view(shape))
        r, gamma_r = invstd, weight * invstd
        zero = torch.zeros_like(r)
        u_weight = zero if u_weight is None else u_weight
        u_bias = zero if u_bias is None else u_bias
        if u is not None:
            sum_u, sum_u_xhat, sum_u_g = u.sum(dims), (u * x_hat).sum(dims), (u * g).sum(dims)
        else:
            sum_u = sum_u_xhat = sum_u_g = zero
        u_dot_pg = sum_u_g - sum_u * sum_g / m - sum_u_xhat * sum_g_xhat / m   # sum u P(g)
        # grad_g = gamma r u + x_hat (u_gamma - gamma r mean(u x_hat)) + (u_beta - gamma r mean(u))
        grad_g = torch.addcmul((u_bias - gamma_r * sum_u / m).view(shape), x_hat,
                               (u_weight - gamma_r * sum_u_xhat / m).view(shape))
        # G = a1 u + a2 g; grad_x = r G + x_hat (-(r sum(G x_hat) + R r^2) / m) - r sum(G) / m
        a1, a2 = -gamma_r * sum_g_xhat / m, u_weight - gamma_r * sum_u_xhat / m
        sum_G, sum_G_xhat = a1 * sum_u + a2 * sum_g, a1 * sum_u_xhat + a2 * sum_g_xhat
        big_r = weight * u_dot_pg
        grad_x = torch.addcmul((-r * sum_G / m).view(shape), g, (r * a2).view(shape))
        grad_x.addcmul_(x_hat, (-(r * sum_G_xhat + big_r * r * r) / m).view(shape))
        if u is not None:
            grad_g.addcmul_(u, gamma_r.view(shape))
            grad_x.addcmul_(u, (r * a1).view(shape))
        return grad_g, grad_x, r * u_dot_pg, None, None, None


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
        if (_NATIVE_BN and x.dtype in (torch.float32, torch.float64) and _plain_cpu_tensor(x)
                and _plain_cpu_tensor(self.weight)):
            return _TaskBatchNorm.apply(x, self.weight, self.bias, self.eps)
        return torch.batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps, False)
