"""The re-ID embedding phi(x; theta): building it, loading trained weights into it, computing it.

The embedding head is timm's own classifier: ``timm.create_model(name, num_classes=embed_dim)`` gives
pooled features -> linear layer of ``embed_dim`` outputs (paper Table 5: 512..4096), and the
embedding phi that the losses train is its output on the unit sphere. A re-ID checkpoint is therefore a
plain timm model whose ``num_classes`` is the embedding size, loadable with
``timm.create_model(..., pretrained=True)``.

Retrieval may compare either that head's output or the pooled features it reads (``retrieval_features``
of :class:`~timm_gam.reid.TrainConfig`, docs/recipe.md): with ``'pooled'`` a trained model is released
without its head (``num_classes=0``), so that timm's plain forward gives the pooled features.

:func:`load_embedder` is the one way to get a trained embedder, from a training checkpoint or from
pretrained (Hub) weights; the embedding size and input size come from the weights, never from a
preset. :func:`extract_embeddings` is the one function that computes embeddings of a list of images,
for clustering, evaluation and export alike.
"""
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import CheckpointError, TrainingCheckpoint
from .datasets import ReidImage, ReidImageDataset

__all__ = ['RETRIEVAL_FEATURES', 'ReidEmbedder', 'LoadedEmbedder', 'create_embedder', 'load_embedder',
           'load_embedders', 'load_checkpoint_weights', 'trained_input_cfg', 'extract_embeddings',
           'resolve_device', 'autocast_dtype']


RETRIEVAL_FEATURES = ('head', 'pooled')


class ReidEmbedder(nn.Module):
    """A timm model's features of person crops, L2-normalised.

    ``features='head'``: the output of the model's head (its classifier, the embedding phi of Eq. 4-8);
    ``'pooled'``: the globally pooled features that head reads (timm's ``forward_head(...,
    pre_logits=True)``). A model without a head (``num_classes=0``) gives its pooled features either way.
    """

    def __init__(self, backbone: nn.Module, features: str = 'head'):
        super().__init__()
        if features not in RETRIEVAL_FEATURES:
            raise ValueError(f'features must be one of {RETRIEVAL_FEATURES}, got {features!r}')
        self.backbone = backbone
        self.features = features

    @property
    def embed_dim(self) -> int:
        if self.features == 'pooled' or not self.backbone.num_classes:
            return getattr(self.backbone, 'head_hidden_size', None) or self.backbone.num_features
        return self.backbone.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.features == 'pooled':
            features = self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)
        else:
            features = self.backbone(images)
        return F.normalize(features.float(), dim=1)


def create_embedder(model_name: str, embed_dim: int = 2048, pretrained: bool = False,
                    **model_kwargs) -> ReidEmbedder:
    """Any timm model name (``gam_resnet50_g4``, ``resnet50``, ``cbam_resnet50``, ...) as an embedder."""
    if embed_dim < 1:
        raise ValueError(f'embed_dim must be positive, got {embed_dim}')
    backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=embed_dim, **model_kwargs)
    return ReidEmbedder(backbone)


@dataclass
class LoadedEmbedder:
    """A trained, L2-normalised embedding model with what is needed to feed it and to describe it."""
    embedder: ReidEmbedder
    image_size: tuple[int, int]  # (height, width) the weights were trained with
    label: str  # short name for figures and messages
    checkpoint: TrainingCheckpoint | None = None  # the training checkpoint, when loaded from one

    @property
    def backbone(self) -> nn.Module:
        return self.embedder.backbone

    @property
    def retrieval_features(self) -> str:
        """``'pooled'`` for a model loaded without its head, else ``'head'``."""
        return 'head' if self.backbone.num_classes else 'pooled'

    @property
    def embed_dim(self) -> int:
        return self.embedder.embed_dim


def trained_input_cfg(backbone: nn.Module, image_size: tuple[int, int]) -> dict:
    """Pretrained-cfg entries describing the recipe's preprocessing at ``image_size``, whatever the model's
    own cfg says: the whole crop resized bilinearly whatever its shape (``crop_mode='squash'``, ``crop_pct``
    1), ImageNet mean and std."""
    height, width = image_size
    reduction = backbone.feature_info[-1]['reduction']
    return {'input_size': (3, height, width), 'pool_size': (math.ceil(height / reduction),
                                                             math.ceil(width / reduction)),
            'interpolation': 'bilinear', 'crop_pct': 1.0, 'crop_mode': 'squash',
            'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD}


def load_checkpoint_weights(model: ReidEmbedder, checkpoint: TrainingCheckpoint, path,
                            model_name: str, weights: dict | None = None) -> None:
    """Load a checkpoint's ``weights`` (default: its inference weights, the mean teacher's where the run
    kept one) into ``model`` (a ``model_name`` embedder), with a clear message when the checkpoint is of
    another model or size."""
    if checkpoint.model_name != model_name:
        raise CheckpointError(f'{path} holds a {checkpoint.model_name!r} model, not {model_name!r}: pass '
                              f'--model {checkpoint.model_name}, or the checkpoint of a {model_name} run')
    if checkpoint.embed_dim != model.embed_dim:
        raise CheckpointError(f'{path} has embedding size {checkpoint.embed_dim}, the model '
                              f'{model.embed_dim}: pass --embed-dim {checkpoint.embed_dim}')
    try:
        model.backbone.load_state_dict(checkpoint.inference_weights if weights is None else weights)
    except RuntimeError as e:  # names or shapes that do not fit: a hand-edited or foreign checkpoint
        raise CheckpointError(f'the weights in {path} do not fit a {model_name!r} model ({str(e)[:300]}); '
                              'pass a checkpoint.pt written by recipes/unsup_reid.py for this model') from e


def load_embedder(*, checkpoint: str | os.PathLike | None = None, pretrained: str | None = None,
                  model_name: str | None = None, embed_dim: int | None = None,
                  image_size: tuple[int, int] | None = None,
                  retrieval_features: str | None = None) -> LoadedEmbedder:
    """A trained embedder in eval mode: from a ``checkpoint.pt`` of ``recipes/unsup_reid.py``, or from the
    pretrained weights of a timm model name (``gam_resnet50_g4``, ``hf-hub:org/name``, ...).

    Its embedding size and input size are those the weights were trained with (the checkpoint's config,
    the model's pretrained cfg). ``model_name``, ``embed_dim`` and ``image_size``, where given, are what
    the caller expects: a model that differs is a :class:`ValueError` naming both, never a silently
    rebuilt layer. A checkpoint's model gets a pretrained cfg for its trained input, so timm's data
    config (and a Hub folder made from it) resizes images as training did.

    ``retrieval_features`` (default: the run's own ``retrieval_features``, for pretrained weights what
    they output) picks the features: with ``'pooled'`` the model comes without its head.
    """
    if retrieval_features not in (None, *RETRIEVAL_FEATURES):
        raise ValueError(f'--retrieval-features must be one of {RETRIEVAL_FEATURES}, '
                         f'got {retrieval_features!r}')
    if (checkpoint is None) == (pretrained is None):
        raise ValueError('give a model: either --checkpoint RUN/checkpoint.pt or --pretrained (one of them)')
    if checkpoint is not None:
        saved = TrainingCheckpoint.load(checkpoint)
        model = create_embedder(saved.model_name, saved.embed_dim)
        load_checkpoint_weights(model, saved, checkpoint, model_name or saved.model_name)
        backbone = _with_retrieval_features(model.backbone, retrieval_features
                                            or saved.config.get('retrieval_features', 'head'), checkpoint)
        backbone.pretrained_cfg = {**backbone.pretrained_cfg, **trained_input_cfg(backbone, saved.image_size)}
        loaded = LoadedEmbedder(ReidEmbedder(backbone).eval(), saved.image_size,
                                f'{saved.model_name} ({Path(checkpoint).parent.name})', checkpoint=saved)
        source = f'the {saved.model_name} model of {checkpoint}'
    else:
        if model_name is not None and model_name != pretrained:
            raise ValueError(f'two models given: {model_name!r} and pretrained {pretrained!r}')
        backbone = _with_retrieval_features(timm.create_model(pretrained, pretrained=True),
                                            retrieval_features, f'pretrained {pretrained}')
        trained_size = tuple(backbone.pretrained_cfg['input_size'][1:])
        loaded = LoadedEmbedder(ReidEmbedder(backbone).eval(), trained_size, f'{pretrained} (pretrained)')
        source = f'pretrained {pretrained}'
    _check_expected(loaded, source, embed_dim, image_size)
    return loaded


def _with_retrieval_features(backbone: nn.Module, features: str | None, source) -> nn.Module:
    """``backbone`` giving ``features`` (None: as it is): without its head for ``'pooled'``."""
    if features == 'head' and not backbone.num_classes:
        raise ValueError(f'{source} has no embedding head (its weights give the pooled features): leave out '
                         '--retrieval-features head')
    if features == 'pooled':
        backbone.reset_classifier(0)
    return backbone


def _check_expected(loaded: LoadedEmbedder, source: str, embed_dim, image_size) -> None:
    if embed_dim is not None and embed_dim != loaded.embed_dim:
        raise ValueError(f'{source} embeds in {loaded.embed_dim} dimensions, not {embed_dim}: leave out '
                         '--embed-dim (the size comes from the weights) or pass '
                         f'--embed-dim {loaded.embed_dim}')
    if image_size is not None and tuple(image_size) != loaded.image_size:
        height, width = loaded.image_size
        raise ValueError(f'{source} was trained on {height}x{width} images, not '
                         f'{image_size[0]}x{image_size[1]}: leave out --image-size (it comes from the '
                         f'weights) or pass --image-size {height} {width}')


def load_embedders(checkpoints=(), pretrained=()) -> list[LoadedEmbedder]:
    """Checkpoints first, then pretrained model names, in the order given; at least one is needed."""
    loaded = ([load_embedder(checkpoint=path) for path in checkpoints]
              + [load_embedder(pretrained=name) for name in pretrained])
    if not loaded:
        raise ValueError('no model given: pass --checkpoint RUN/checkpoint.pt or --pretrained MODEL_NAME')
    return loaded


@torch.no_grad()
def extract_embeddings(model: nn.Module, images: Sequence[ReidImage], transform: Callable,
                       batch_size: int = 128, num_workers: int = 0, device: str | torch.device = 'cpu',
                       amp_dtype: torch.dtype | None = None, progress: bool = False) -> torch.Tensor:
    """Embeddings of ``images`` in list order, (n, embed_dim) float32 on the CPU.

    Used alike for clustering the training set, for evaluation and for export, so all of them see
    exactly the same preprocessing. The model is put in eval mode and restored afterwards.
    """
    loader = DataLoader(ReidImageDataset(images, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=torch.device(device).type == 'cuda')
    was_training = model.training
    model.eval()
    chunks = []
    device_type = torch.device(device).type
    try:
        for batch, _ in _maybe_progress(loader, progress, 'extract'):
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
                chunks.append(model(batch).float().cpu())
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, getattr(model, 'embed_dim', 0))
    return torch.cat(chunks)


def resolve_device(name: str) -> torch.device:
    """``'auto'``: the GPU when there is one, else the CPU; anything else as ``torch.device`` reads it."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """Inference's autocast: bf16 on CUDA when ``amp`` is on; fp32 on every CPU, so that embeddings for
    clustering and evaluation do not depend on whether the CPU has bf16 (training's is
    :func:`~timm_gam.reid.fast_path.training_autocast_dtype`)."""
    return torch.bfloat16 if amp and device.type == 'cuda' else None


def _maybe_progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm import tqdm
    return tqdm(loader, desc=desc, unit='batch', leave=False, dynamic_ncols=True)
