"""timm-gam: Grouped Attention Module ResNets for timm and a label-free person re-ID recipe.

Importing this package registers the models with timm's registry::

    import timm, timm_gam
    model = timm.create_model('gam_resnet50_g4', pretrained=True)

The re-ID library (losses, clustering, evaluation, training) lives in :mod:`timm_gam.reid` and is
imported on demand, so registering the models stays cheap.
"""
from . import models  # noqa: F401  (registers the models with timm)

__version__ = '0.1.0'
