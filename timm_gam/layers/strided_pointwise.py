""" A strided 1x1 convolution computed as a subsampling and a stride-1 1x1 convolution

A 1x1 convolution with stride s and no padding reads only every s-th pixel of each row and column, so
``conv(x)`` equals the stride-1 convolution of ``x[:, :, ::s, ::s]`` with the same weight. oneDNN's
stride-1 1x1 kernels on CPUs are much faster than its strided ones, the weight gradient's above all
(docs/performance.md, "The fast training path"), and the subsampling costs one strided copy. ResNet's
projection shortcuts are such convolutions.
"""
import torch
import torch.nn.functional as F
from torch import nn as nn

__all__ = ['StridedPointwiseConv2d', 'subsample_strided_pointwise']


class StridedPointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a 1x1 kernel, stride > 1 and no padding, computed on the subsampled input.

    Its parameters, their names and its ``state_dict`` are ``nn.Conv2d``'s.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=2, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = 'zeros', device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        if not is_strided_pointwise(self):
            raise ValueError(f'StridedPointwiseConv2d needs a 1x1 kernel, stride > 1, no padding or dilation '
                             f'(got kernel {self.kernel_size}, stride {self.stride}, padding {self.padding}, '
                             f'dilation {self.dilation}); use nn.Conv2d for other convolutions')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step_h, step_w = self.stride
        return F.conv2d(x[:, :, ::step_h, ::step_w], self.weight, self.bias, groups=self.groups)


def is_strided_pointwise(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride != (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.padding_mode == 'zeros')


def subsample_strided_pointwise(module: nn.Module | None) -> nn.Module | None:
    """``module`` with each strided 1x1 ``nn.Conv2d`` directly in it (or ``module`` itself, if one) made a
    :class:`StridedPointwiseConv2d` holding the same parameters.

    The replacement is built without initialising weights of its own, so building a model consumes the
    random numbers it did before, and a seed gives the same initial weights.
    """
    if _replaceable(module):
        return _as_strided_pointwise(module)
    for name, child in (module.named_children() if module is not None else ()):
        if _replaceable(child):
            setattr(module, name, _as_strided_pointwise(child))
    return module


def _replaceable(module: nn.Module | None) -> bool:
    return type(module) is nn.Conv2d and is_strided_pointwise(module)


def _as_strided_pointwise(conv: nn.Conv2d) -> StridedPointwiseConv2d:
    subsampled = torch.nn.utils.skip_init(
        StridedPointwiseConv2d, conv.in_channels, conv.out_channels, 1, stride=conv.stride,
        groups=conv.groups, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    subsampled.weight = conv.weight
    if conv.bias is not None:
        subsampled.bias = conv.bias
    return subsampled
