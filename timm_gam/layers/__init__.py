"""Layers of the Grouped Attention Module ResNets."""
from .grouped_attention import GroupedAttention, GroupedChannelAttn, GroupedSpatialAttn

__all__ = ['GroupedAttention', 'GroupedChannelAttn', 'GroupedSpatialAttn']
