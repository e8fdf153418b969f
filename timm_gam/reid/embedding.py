"""The re-ID embedding phi(x; theta) and the one function that computes it for a list of images.

The embedding head is timm's own classifier: ``timm.create_model(name, num_classes=embed_dim)`` gives
pooled features -> linear layer of ``embed_dim`` outputs (paper Table 5: 512..4096), and the
embedding is its output on the unit sphere. A re-ID checkpoint is therefore a plain timm model whose
``num_classes`` is the embedding size, loadable with ``timm.create_model(..., pretrained=True)``.
"""
from collections.abc import Callable, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .datasets import ReidImage, ReidImageDataset

__all__ = ['ReidEmbedder', 'create_embedder', 'extract_embeddings']


class ReidEmbedder(nn.Module):
    """A timm model whose head outputs the embedding, followed by L2 normalisation."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    @property
    def embed_dim(self) -> int:
        return self.backbone.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).float(), dim=1)


def create_embedder(model_name: str, embed_dim: int = 2048, pretrained: bool = False,
                    **model_kwargs) -> ReidEmbedder:
    """Any timm model name (``gam_resnet50_g4``, ``resnet50``, ``cbam_resnet50``, ...) as an embedder."""
    if embed_dim < 1:
        raise ValueError(f'embed_dim must be positive, got {embed_dim}')
    backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=embed_dim, **model_kwargs)
    return ReidEmbedder(backbone)


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


def _maybe_progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm import tqdm
    return tqdm(loader, desc=desc, unit='batch', leave=False, dynamic_ncols=True)
