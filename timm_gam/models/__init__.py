"""Model definitions; importing this package registers them with timm's model registry."""
from . import cbam_resnet  # noqa: F401  (registers cbam_resnet50, acbam_resnet50)
from .gam_resnet import GamBottleneck, create_gam_resnet, reid_cfg

__all__ = ['GamBottleneck', 'create_gam_resnet', 'reid_cfg']
