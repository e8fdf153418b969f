"""Layers of the Grouped Attention Module ResNets."""
from .grouped_attention import GroupedAttention, GroupedChannelAttn, GroupedSpatialAttn
from .strided_pointwise import StridedPointwiseConv2d, subsample_strided_pointwise

__all__ = ['GroupedAttention', 'GroupedChannelAttn', 'GroupedSpatialAttn', 'StridedPointwiseConv2d',
           'subsample_strided_pointwise']
