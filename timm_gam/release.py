"""Releasing a trained re-ID model: its Hub folder (weights, timm config, model card), and the upload.

The library behind ``recipes/publish.py``. A released model is the timm backbone of a training checkpoint,
whose output is what the run retrieves with: its classifier ``fc``, the embedding (``num_classes =
embed_dim``), or, for a run with ``retrieval_features='pooled'``, the pooled features, the head removed
(``num_classes=0``); its pretrained cfg carries the input size the run trained with, so ``hf-hub:`` loading
resizes images as training did. Users L2-normalise its output, as :class:`~timm_gam.reid.ReidEmbedder` does.
The card is written by :mod:`timm_gam.model_card`.
"""
import os
from pathlib import Path

import timm
import torch
from huggingface_hub import get_token
from timm.models import get_pretrained_cfg

from .hub import MODEL_CARD_NAME, push_to_hub, save_hub_folder
from .model_card import dtype_name, earlier_releases, model_card, release_summary, training_section
from .reid.colour_histogram import colour_histogram_embeddings
from .reid.datasets import EVALUATION_SPLITS, prepare_data
from .reid.embedding import LoadedEmbedder
from .reid.evaluation import evaluate_model, evaluate_split

__all__ = ['measure_metrics', 'measure_colour_histogram', 'round_weights', 'registry_mismatch',
           'write_release_folder', 'publish']


def measure_metrics(loaded: LoadedEmbedder, data_root: str | os.PathLike, batch_size: int = 128,
                    workers: int = 0) -> dict:
    """Rank-1/5/10 and mAP (percent, Market-1501 protocol) on the query/gallery split of ``data_root``,
    read and scored exactly as ``recipes/unsup_reid.py --eval-only`` does; adds where the data is."""
    splits = prepare_data(data_root, splits=EVALUATION_SPLITS)
    metrics = evaluate_model(loaded.embedder, splits.query, splits.gallery, loaded.image_size,
                             batch_size=batch_size, workers=workers)
    return {**metrics, 'data_root': str(data_root)}


def measure_colour_histogram(data_root: str | os.PathLike) -> dict:
    """The hand-crafted baseline's rank-1/5/10 and mAP on the same split, as
    ``recipes/colour_histogram_baseline.py`` measures them (seconds): the floor set beside the model."""
    splits = prepare_data(data_root, splits=EVALUATION_SPLITS)
    query, gallery = (colour_histogram_embeddings(split) for split in (splits.query, splits.gallery))
    return evaluate_split(query, gallery, splits.query, splits.gallery)


def round_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round the floating-point weights to ``dtype`` and back in place: the model then holds exactly what a
    ``dtype`` Hub folder gives after loading, so metrics measured on it are those of the published file."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            rounded = tensor.to(dtype)
            if not torch.isfinite(rounded).all() and torch.isfinite(tensor).all():
                raise ValueError(f'{name} holds values up to {tensor.abs().max().item():.4g}, beyond the '
                                 f'range of {dtype_name(dtype)}: publish these weights in fp32 '
                                 '(leave out --fp16)')
            tensor.copy_(rounded)


def registry_mismatch(loaded: LoadedEmbedder, repo_id: str) -> str | None:
    """Whether ``timm.create_model(name, pretrained=True)`` would build a model that doesn't fit this release.

    ``pretrained=True`` takes ``num_classes`` and ``input_size`` from the cfg registered in timm-gam, not
    from the folder's ``config.json`` (only ``hf-hub:`` reads that), so the two must agree.
    """
    tag = repo_id.split('/')[-1]
    if tag not in timm.list_pretrained(tag):
        return None
    registered = get_pretrained_cfg(tag)
    if registered.hf_hub_id != repo_id:
        return None
    released = {'num_classes': loaded.backbone.num_classes, 'input_size': (3, *loaded.image_size)}
    registered_values = {'num_classes': registered.num_classes, 'input_size': tuple(registered.input_size)}
    differing = {k: (registered_values[k], v) for k, v in released.items() if registered_values[k] != v}
    if not differing:
        return None
    changes = ', '.join(f'{k}={new} (registered: {old})' for k, (old, new) in differing.items())
    return (f'the pretrained cfg registered for {tag} does not match this release: {changes}. '
            f'timm.create_model(..., pretrained=True) would build the wrong model; update its cfg in '
            f'timm_gam/models/ (hf-hub:{repo_id} loading is unaffected).')


def write_release_folder(loaded: LoadedEmbedder, output: str | os.PathLike, repo_id: str, *,
                         dtype: torch.dtype = torch.float32, data_root: str | os.PathLike | None = None,
                         hardware: str | None = None, workers: int = 0) -> Path:
    """Write the Hub folder of a checkpoint's model: weights in ``dtype``, timm config, model card.

    With ``data_root`` the card's metrics are measured here on the weights rounded to ``dtype``; without it
    they are the checkpoint's own last evaluation (labelled as such), or absent when it has none.
    """
    if loaded.checkpoint is None:
        raise ValueError('a release is made from a training checkpoint (its config and history go into the '
                         'model card): pass --checkpoint RUN/checkpoint.pt')
    if loaded.checkpoint.config.get('clustering') == 'identities':
        raise ValueError('this checkpoint trained on the identity labels (--clustering identities, a '
                         'supervised upper bound): it is not label-free and is not released; publish a '
                         'label-free run')
    if repo_id.count('/') != 1:
        raise ValueError(f"--repo-id must be 'org/name' as on the Hub, got {repo_id!r}")
    round_weights(loaded.backbone, dtype)
    baseline = None
    if data_root is not None:
        metrics = measure_metrics(loaded, data_root, workers=workers)
        baseline = measure_colour_histogram(data_root)
    else:
        metrics = loaded.checkpoint.last_evaluation()
        if metrics is not None:
            metrics['data_root'] = loaded.checkpoint.config['data_root']
    old_card = Path(output) / MODEL_CARD_NAME
    card = model_card(loaded, repo_id, metrics=metrics, measured_by_publish=data_root is not None,
                      dtype=dtype, hardware=hardware, baseline=baseline, earlier=_earlier_in(output, loaded),
                      source_training=training_section(old_card.read_text()) if old_card.is_file() else None)
    return save_hub_folder(loaded.backbone, output, model_card=card, dtype=dtype)


def _earlier_in(output: str | os.PathLike, loaded: LoadedEmbedder) -> list[dict]:
    """The releases ``output`` held before this one, from its card; the card's own row is left out when
    it is this very release (the same run at the same point, written again)."""
    card = Path(output) / MODEL_CARD_NAME
    earlier = earlier_releases(card.read_text()) if card.is_file() else []
    this = release_summary(loaded.checkpoint)
    return [release for release in earlier if release['release'] != this]


def publish(folder: str | os.PathLike, repo_id: str, token: str | None = None) -> str:
    """Upload a Hub folder; raise a ``RuntimeError`` saying what to do when no token or network is there."""
    token = token or get_token()
    if token is None:
        raise RuntimeError(f'no Hugging Face token to upload {folder} to {repo_id}: log in with '
                           '`hf auth login`, set HF_TOKEN or pass --token; or keep the folder with --dry-run')
    try:
        return push_to_hub(folder, repo_id, token=token).commit_url
    except Exception as err:  # failures come from huggingface_hub, its HTTP client and the OS alike
        raise RuntimeError(f'uploading {folder} to https://huggingface.co/{repo_id} failed '
                           f'({type(err).__name__}: {err}); check the network and that the token may write '
                           f'to {repo_id.split("/")[0]}, or keep the folder with --dry-run') from err
