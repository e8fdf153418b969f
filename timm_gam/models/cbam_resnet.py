""" CBAM ResNet-50 baselines of the GAM paper

Nikhal & Riggan, WACV 2021, Tables 1-4 compare GAM against two ResNet-50s with CBAM (Woo et al., 2018):

* ``cbam_resnet50``: ResNet-50 with CBAM in every bottleneck, at GAM's place (after the last BN, before the
  residual add). It is ``GamBottleneck`` with a single filter group, so CBAM and GAM differ by the grouping
  alone and share one attention implementation: 26,040,624 parameters without the classifier.
* ``acbam_resnet50``: the paper's "A-CBAM", CBAM ResNet-50 with its parameters "controlled to match GAM".
  The paper does not say how; here the bottleneck's inner width is cut to 3/8 of ResNet-50's (timm's
  ``base_width=24`` instead of 64: inner widths 24/48/96/192). That keeps what GAM keeps: the stem, the
  block outputs 256/512/1024/2048 (so the same 2048-d features and attention widths) and the shortcuts, and
  shrinks what GAM's grouping shrinks. 10,455,824 parameters, 0.7% fewer than gam_resnet50_g4's 10,533,168;
  base_width 25 would overshoot by 1.9%.
"""
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import ResNet

from .gam_resnet import RESNET50_LAYERS, GamBottleneck, create_gam_resnet, reid_cfg

default_cfgs = generate_default_cfgs({
    'cbam_resnet50': reid_cfg(),
    'acbam_resnet50': reid_cfg(),
})


@register_model
def cbam_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50 with CBAM in every bottleneck (the paper's CBAM baseline)."""
    model_args = dict(block=GamBottleneck, layers=RESNET50_LAYERS, cardinality=1, base_width=64)
    return create_gam_resnet('cbam_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def acbam_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """A-CBAM: CBAM ResNet-50 with bottleneck inner widths cut to 3/8, matching gam_resnet50_g4's size."""
    model_args = dict(block=GamBottleneck, layers=RESNET50_LAYERS, cardinality=1, base_width=24)
    return create_gam_resnet('acbam_resnet50', pretrained, **dict(model_args, **kwargs))
