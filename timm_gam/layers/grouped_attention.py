""" Grouped Attention Module (GAM)

Nikhal & Riggan, "Unsupervised Attention Based Instance Discriminative Learning for Person
Re-Identification", WACV 2021, section 4.1, Eq. 1-3.

GAM is CBAM's sequential channel-then-spatial attention (Woo et al., 2018) applied to a feature map F_G that
group convolutions with ``groups`` filter groups produced. The paper calls it "group-based channel
attention" without fixing how far the grouping reaches into the attention itself, so both readings are
constructor arguments:

* ``grouped_mlp`` (default False): whether the channel-attention MLP (S_l of Eq. 1-2) is grouped like the
  convolutions, each filter group's channels then attending only among themselves. By default one MLP sees
  all channels, so the attention is where the otherwise independent filter groups exchange information.
* ``grouped_spatial`` (default False): whether Eq. 3 makes one spatial map per block (A_s in R^{1xHxW}, as the
  paper writes it) or one map per filter group, each pooled over and applied to its own group's channels.

The defaults reproduce the paper's parameter claim: gam_resnet50_g4 has 10,533,168 parameters without its
classifier, 59.6% fewer than the 26,040,624 of CBAM ResNet-50 ("26 million to 10.5 million"). With
``groups=1`` the module is CBAM as its reference implementation builds it: a two-layer MLP with biases and
reduction 16 shared by the average- and max-pooled descriptors, and a 7x7 conv + BN spatial gate.
"""

import torch
import torch.nn.functional as F
from torch import nn as nn


# Max pooling, the same values two ways. amax's backward spreads the gradient over ties (none occur in
# real-valued activations) with a mask, a division and a multiply over the whole map, half of the attention's
# training time; max with indices sends it to the argmax at a third of that cost, but computing the
# indices slows inference by about as much. So: indices only when a backward can follow.
def _spatial_max(x: torch.Tensor) -> torch.Tensor:
    """Max over H, W of (B, C, H, W), kept as (B, C, 1, 1)."""
    if torch.is_grad_enabled():
        return F.adaptive_max_pool2d(x, 1)
    return x.amax((2, 3), keepdim=True)


def _pointwise(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               groups: int) -> torch.Tensor:
    """A 1x1 convolution's ``weight``, ``bias`` and ``groups`` applied to ``(N, C)`` rows: one layer of the
    pooled descriptors' MLP.

    Ungrouped, as a matrix product: on a 1x1 map oneDNN's 1x1 convolution kernels, the weight gradient's
    above all, run several times slower than a matrix product of the same numbers (docs/performance.md,
    "The fast training path"). The parameters stay the ``nn.Conv2d``'s, so checkpoints and the Hub
    weights are unchanged.
    """
    if groups == 1:
        return F.linear(rows, weight.flatten(1), bias)
    return F.conv2d(rows[:, :, None, None], weight, bias, groups=groups).flatten(1)


def _channel_max(x_grouped: torch.Tensor) -> torch.Tensor:
    """Max over the channels of each group of (B, groups, C / groups, H, W)."""
    if torch.is_grad_enabled():
        return x_grouped.max(2).values
    return x_grouped.amax(2)


class GroupedChannelAttn(nn.Module):
    """Channel attention of GAM (Eq. 1-2): ``F_G * sigmoid(S(avgpool(F_G)) + S(maxpool(F_G)))``.

    S is a two-layer MLP with a ``rd_ratio`` bottleneck, held as 1x1 convolutions (timm's CBAM parameter
    layout, and ``grouped_mlp`` is a matter of their ``groups`` argument) and computed on the pooled
    ``(B, C)`` descriptors by :func:`_pointwise`.
    """

    def __init__(
            self,
            channels: int,
            groups: int = 1,
            rd_ratio: float = 1. / 16,
            grouped_mlp: bool = False,
            mlp_bias: bool = True,
            act_layer: type[nn.Module] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        mlp_groups = groups if grouped_mlp else 1
        rd_channels = int(channels * rd_ratio)
        if rd_channels % mlp_groups:
            raise ValueError(
                f'grouped_mlp needs the reduced width ({channels} * {rd_ratio} = {rd_channels}) to be '
                f'divisible by groups={groups}; pick a rd_ratio keeping it divisible, or grouped_mlp=False.')
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, groups=mlp_groups, bias=mlp_bias, **dd)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, groups=mlp_groups, bias=mlp_bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # both descriptors through the shared MLP as one batch: half the calls, each twice the rows
        pooled = torch.cat([x.mean((2, 3)), _spatial_max(x).flatten(1)])
        hidden = self.act(_pointwise(pooled, self.fc1.weight, self.fc1.bias, self.fc1.groups))
        x_avg, x_max = _pointwise(hidden, self.fc2.weight, self.fc2.bias, self.fc2.groups).chunk(2)
        return x * torch.sigmoid(x_avg + x_max)[:, :, None, None]


class GroupedSpatialAttn(nn.Module):
    """Spatial attention of GAM (Eq. 3): ``x * sigmoid(BN(conv7x7([mean_c(x), max_c(x)])))``.

    Channels are pooled within each of ``groups`` contiguous channel groups (the partition a grouped
    convolution uses) and a grouped convolution turns each group's (mean, max) pair into that group's map.
    ``groups=1`` is the paper's single map; the general case costs no Python loop.
    """

    def __init__(
            self,
            groups: int = 1,
            kernel_size: int = 7,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.groups = groups
        self.conv = nn.Conv2d(
            2 * groups, groups, kernel_size, padding=kernel_size // 2, groups=groups, bias=False, **dd)
        self.bn = norm_layer(groups, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_grouped = x.unflatten(1, [self.groups, -1])  # B, groups, C / groups, H, W
        # interleaved as (mean_0, max_0, mean_1, max_1, ...) so each conv group sees its own pair
        pooled = torch.stack([x_grouped.mean(2), _channel_max(x_grouped)], dim=2).flatten(1, 2)
        attn = torch.sigmoid(self.bn(self.conv(pooled)))  # B, groups, H, W
        return (x_grouped * attn.unsqueeze(2)).flatten(1, 2)


class GroupedAttention(nn.Module):
    """Grouped Attention Module: channel attention (Eq. 2), then spatial attention (Eq. 3) on its result."""

    def __init__(
            self,
            channels: int,
            groups: int = 1,
            rd_ratio: float = 1. / 16,
            grouped_mlp: bool = False,
            grouped_spatial: bool = False,
            spatial_kernel_size: int = 7,
            mlp_bias: bool = True,
            act_layer: type[nn.Module] = nn.ReLU,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if channels % groups:
            raise ValueError(f'GroupedAttention: channels={channels} is not divisible by groups={groups}.')
        self.channel = GroupedChannelAttn(
            channels,
            groups=groups,
            rd_ratio=rd_ratio,
            grouped_mlp=grouped_mlp,
            mlp_bias=mlp_bias,
            act_layer=act_layer,
            **dd,
        )
        self.spatial = GroupedSpatialAttn(
            groups=groups if grouped_spatial else 1,
            kernel_size=spatial_kernel_size,
            norm_layer=norm_layer,
            **dd,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
