""" GAM ResNet: ResNet-50 with grouped convolutions and a Grouped Attention Module in every bottleneck

Nikhal & Riggan, "Unsupervised Attention Based Instance Discriminative Learning for Person
Re-Identification", WACV 2021, sections 4.1 and 5.2.

The network is timm's ``ResNet`` (stem, 3-4-6-3 bottlenecks, widths 256/512/1024/2048, ungrouped 1x1
projection shortcuts) built with ``GamBottleneck``, in which all three convolutions of the residual branch
F are group convolutions with ``cardinality`` filter groups and the block computes
``relu(GAM(F(x)) + shortcut(x))``. The bottleneck widths stay those of ResNet-50: the group count is
expressed the ResNeXt way, ``cardinality=g`` with ``base_width=64 // g`` channels per group.

What GAM groups beyond the convolutions (its channel MLP, its spatial map) is configurable, see
:mod:`timm_gam.layers.grouped_attention`; the defaults reproduce the paper's parameter count, pinned in
``tests/test_models.py``. Forward to extra options through timm, e.g.
``timm.create_model('gam_resnet50_g4', block_args=dict(grouped_spatial=True))``.

The classifier ``fc`` is the re-ID embedding that the recipe's losses train; a release gives what its run
retrieves with: that embedding (``num_classes`` its size), or the pooled features before it, released without
the head (``num_classes=0``). Either way the recipe L2-normalises the model output.
"""
import math

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import create_aa
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.resnet import ResNet
from torch import nn as nn

from ..hub import MissingWeightsError, StaleWeightsError, missing_weights_message, stale_weights_message
from ..layers import GroupedAttention, subsample_strided_pointwise

__all__ = ['GamBottleneck', 'create_gam_resnet', 'reid_cfg']

PAPER_NAME = 'Unsupervised Attention Based Instance Discriminative Learning for Person Re-Identification'
PAPER_URL = (
    'https://openaccess.thecvf.com/content/WACV2021/html/Nikhal_Unsupervised_Attention_Based_Instance_'
    'Discriminative_Learning_for_Person_Re-Identification_WACV_2021_paper.html')
REFERENCE_CODE_URL = 'https://git.unl.edu/ece-unlimages-lab/group-attention-module-person-re-id'
RESNET50_LAYERS = (3, 4, 6, 3)


class GamBottleneck(nn.Module):
    """ResNet bottleneck with grouped 1x1, 3x3, 1x1 convolutions and GAM before the residual add.

    Paper 5.2: ``Relu(GAM(F(x)) + x)`` where every Conv of ``F = Conv-BN-ReLU-Conv-BN-ReLU-Conv-BN`` is a
    group convolution. The constructor follows timm's ``Bottleneck`` so that ``ResNet`` and ``make_blocks``
    drive it unchanged; ``grouped_mlp`` and ``grouped_spatial`` are handed to :class:`GroupedAttention`.
    """
    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: nn.Module | None = None,
            cardinality: int = 1,
            base_width: int = 64,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: int | None = None,
            act_layer: type[nn.Module] = nn.ReLU,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            aa_layer: type[nn.Module] | None = None,
            drop_block: type[nn.Module] | None = None,
            drop_path: nn.Module | None = None,
            grouped_mlp: bool = False,
            grouped_spatial: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        first_planes = width // reduce_first
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        use_aa = aa_layer is not None and (stride == 2 or first_dilation != dilation)

        self.conv1 = nn.Conv2d(inplanes, first_planes, 1, groups=cardinality, bias=False, **dd)
        self.bn1 = norm_layer(first_planes, **dd)
        self.act1 = act_layer(inplace=True)

        self.conv2 = nn.Conv2d(
            first_planes,
            width,
            kernel_size=3,
            stride=1 if use_aa else stride,
            padding=first_dilation,
            dilation=first_dilation,
            groups=cardinality,
            bias=False,
            **dd,
        )
        self.bn2 = norm_layer(width, **dd)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)
        self.aa = create_aa(aa_layer, channels=width, stride=stride, enable=use_aa, **dd)

        self.conv3 = nn.Conv2d(width, outplanes, 1, groups=cardinality, bias=False, **dd)
        self.bn3 = norm_layer(outplanes, **dd)
        self.attn = GroupedAttention(
            outplanes,
            groups=cardinality,
            grouped_mlp=grouped_mlp,
            grouped_spatial=grouped_spatial,
            act_layer=act_layer,
            norm_layer=norm_layer,
            **dd,
        )

        self.act3 = act_layer(inplace=True)
        self.downsample = subsample_strided_pointwise(downsample)  # same parameters, faster on CPUs
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        """Zero the last BN so each block starts as the identity (GAM of a zero map is zero)."""
        if getattr(self.bn3, 'weight', None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x

        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)

        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)

        x = self.conv3(x)
        x = self.bn3(x)
        x = self.attn(x)

        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act3(x)


def create_gam_resnet(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    """Build a registered ``ResNet`` variant; when its pretrained weights can't be fetched from the Hub, or
    the cached ones don't fit, raise an error naming the repo and the ways to get the weights (timm's own
    error does neither)."""
    try:
        return build_model_with_cfg(ResNet, variant, pretrained, **kwargs)
    except OSError as err:  # huggingface_hub's offline, not-cached and not-found errors are all OSErrors
        if not pretrained:
            raise
        raise MissingWeightsError(missing_weights_message(variant, _hub_id(variant, kwargs), err)) from err
    except RuntimeError as err:  # load_state_dict: tensors of another release, still in the Hub cache
        if not pretrained or 'state_dict' not in str(err):
            raise
        raise StaleWeightsError(stale_weights_message(variant, _hub_id(variant, kwargs), err)) from err


def _hub_id(variant: str, kwargs: dict) -> str | None:
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    return cfg.hf_hub_id


def reid_cfg(**kwargs):
    """Person re-ID defaults: 256x128 crops, the 2048-d embedding as classifier, ImageNet statistics.

    ``crop_mode='squash'`` resizes the whole crop to the input size whatever its shape, as training did:
    timm's default centre crop would cut the sides off a tracker's wider crops.
    """
    return {
        'num_classes': 2048, 'input_size': (3, 256, 128), 'pool_size': (8, 4),
        'crop_pct': 1.0, 'crop_mode': 'squash', 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0', 'paper_name': PAPER_NAME, 'paper_ids': PAPER_URL,
        'origin_url': REFERENCE_CODE_URL,
        **kwargs,
    }


def _unsup_market1501_cfg(variant: str, **kwargs):
    """Weights trained label-free on Market-1501 by this project's recipe, published on the Hub."""
    return reid_cfg(
        hf_hub_id=f'timm-gam/{variant}.unsup_market1501dev',
        license='other',
        description='Unsupervised (IDL + ACL) person re-ID embedding trained on the Market-1501 dev split.',
        notes=('Trained on Market-1501, whose terms allow research use only; the code is Apache-2.0.',),
        **kwargs,
    )


# The released weights come from the recipe's CPU configurations (1024-d embedding head): g4 from the
# `cpu-dbscan` recipe at the images' size on disk, released with its pooled 2048-d features and without
# the head (num_classes 0), g2/g8/g16 from their Table 6 runs at 64x32 (experiments/paper_tables.py),
# released with the head; each model card under hub/ says how it was trained and what it measured.
CPU_RELEASE_SIZE = {2: (64, 32), 4: (128, 64), 8: (64, 32), 16: (64, 32)}  # (height, width) by groups
CPU_RELEASE_NUM_CLASSES = {2: 1024, 4: 0, 8: 1024, 16: 1024}

default_cfgs = generate_default_cfgs({
    **{f'gam_resnet50_g{groups}.unsup_market1501dev': _unsup_market1501_cfg(
        f'gam_resnet50_g{groups}', num_classes=CPU_RELEASE_NUM_CLASSES[groups], input_size=(3, height, width),
        pool_size=(height // 32, width // 32))  # the final feature map: ResNet-50 reduces by 32
        for groups, (height, width) in CPU_RELEASE_SIZE.items()},
    # no weights: a tiny network for tests and for the recipe's synthetic default on a CPU
    'test_gam_resnet': reid_cfg(num_classes=256, input_size=(3, 64, 32), pool_size=(2, 1)),
})


def _gam_resnet50(variant: str, groups: int, pretrained: bool, **kwargs) -> ResNet:
    """ResNet-50 with ``groups`` filter groups in every bottleneck conv, widths of ResNet-50 kept."""
    model_args = dict(
        block=GamBottleneck, layers=RESNET50_LAYERS, cardinality=groups, base_width=64 // groups)
    return create_gam_resnet(variant, pretrained, **dict(model_args, **kwargs))


@register_model
def gam_resnet50_g2(pretrained: bool = False, **kwargs) -> ResNet:
    """GAM ResNet-50, 2 filter groups."""
    return _gam_resnet50('gam_resnet50_g2', 2, pretrained, **kwargs)


@register_model
def gam_resnet50_g4(pretrained: bool = False, **kwargs) -> ResNet:
    """GAM ResNet-50, 4 filter groups (the paper's main model)."""
    return _gam_resnet50('gam_resnet50_g4', 4, pretrained, **kwargs)


@register_model
def gam_resnet50_g8(pretrained: bool = False, **kwargs) -> ResNet:
    """GAM ResNet-50, 8 filter groups."""
    return _gam_resnet50('gam_resnet50_g8', 8, pretrained, **kwargs)


@register_model
def gam_resnet50_g16(pretrained: bool = False, **kwargs) -> ResNet:
    """GAM ResNet-50, 16 filter groups."""
    return _gam_resnet50('gam_resnet50_g16', 16, pretrained, **kwargs)


@register_model
def test_gam_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """A tiny GAM ResNet like timm's ``test_resnet``: a GAM bottleneck per stage, 4 groups, 0.29M parameters.

    Deep ResNets from scratch need more SGD steps than a few CPU minutes give: on the synthetic set
    ``gam_resnet50_g4`` stays at chance after 10 epochs while this one learns (docs/results.md).
    """
    model_args = dict(
        block=GamBottleneck, layers=(1, 1, 1, 1), channels=(32, 48, 64, 96), cardinality=4, base_width=16,
        stem_width=16, stem_type='deep', avg_down=True)
    return create_gam_resnet('test_gam_resnet', pretrained, **dict(model_args, **kwargs))
