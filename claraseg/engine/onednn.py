"""CPU convolutions of a torch network on oneDNN for a batch of one too.

PyTorch runs a float32 CPU convolution on oneDNN only when its heuristics expect a gain: a batch of one
small volume (a DeepGrow 3D click: one 4 x 64^3 input, whose layers all have batch x channels x depth x
height <= 20480) falls back to the im2col + GEMM kernel (``slow_conv3d``), several times slower on
these networks than oneDNN, which the same layers use for a batch of two or more. :func:`onednn_network`
gives a view of the network whose ``Conv2d``/``Conv3d`` layers call oneDNN directly for a batch of one,
sharing the original's parameters; batches (test-time flips) keep PyTorch's own dispatch. The outputs of a
batch of one agree with the original's within float32 rounding (the kernels sum in another order).
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_CONVS = (torch.nn.Conv2d, torch.nn.Conv3d)
_MISSING = object()


class OneDnnConv(torch.nn.Module):
    """``conv`` (a ``Conv2d``/``Conv3d``, parameters shared) run by ``torch.mkldnn_convolution`` on float32
    CPU tensors, by the layer itself otherwise."""

    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.shape[0] != 1 or x.device.type != "cpu" or x.dtype != torch.float32 \
                or c.weight.dtype != torch.float32 or torch.is_grad_enabled():
            return c(x)  # a batch (test-time flips): PyTorch's own dispatch, which picks oneDNN for these layers
        return torch.mkldnn_convolution(x.contiguous(), c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups)


def _convertible(conv: torch.nn.Module) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _swap(module: torch.nn.Module) -> int:
    n = 0
    for name, child in module.named_children():
        if type(child) in _CONVS and _convertible(child):
            setattr(module, name, OneDnnConv(child))
            n += 1
        else:
            n += _swap(child)
    return n


def onednn_network(net):
    """``net`` with its plain ``Conv2d``/``Conv3d`` layers on oneDNN (built once per network and cached; the
    parameters and buffers are the original's, so in-place weight updates are seen). Returns ``net``
    itself when it is not a torch module, has no such layer, or oneDNN is not available."""
    if not isinstance(net, torch.nn.Module) or isinstance(net, torch.jit.ScriptModule) \
            or not torch.backends.mkldnn.is_available():
        return net
    with _lock:
        fast = _cache.get(net, _MISSING)
        if fast is _MISSING:
            memo = {id(t): t for t in (*net.parameters(), *net.buffers())}
            fast = copy.deepcopy(net, memo)
            if not _swap(fast):
                fast = None  # nothing to convert (the cache must not hold ``net`` itself: it is the weak key)
            _cache[net] = fast
    return net if fast is None else fast
