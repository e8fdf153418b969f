""" Pictures of what a re-ID model learned, as PNG files: the library behind ``recipes/visualize.py``

* :func:`plot_attention`: attention maps overlaid on the input (paper Fig. 5: original / map / overlay), for
  several models side by side (GAM and the CBAM baseline).
* :func:`plot_ranked_retrieval`: queries and their top-k gallery images, correct ones framed green, wrong red.
* :func:`plot_tsne`: t-SNE of the embeddings of chosen identities, coloured by identity (paper Fig. 4).
* :func:`plot_training_curves`: loss per epoch, clusters and rank-1/mAP per stage, from runs' ``log.jsonl``.

Figures are drawn on ``matplotlib.figure.Figure`` objects, which render with the Agg canvas without pyplot,
so nothing here touches matplotlib's global backend or needs a display.
"""
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from .layers.grouped_attention import GroupedSpatialAttn
from .reid.datasets import ReidImage, load_image
from .reid.embedding import LoadedEmbedder, extract_embeddings
from .reid.evaluation import left_out_of_ranking, pairwise_euclidean
from .reid.run_log import read_events
from .reid.transforms import build_eval_transform

__all__ = [
    'spatial_attention_maps', 'stage_activation_maps', 'plot_attention', 'rank_gallery',
    'plot_ranked_retrieval', 'plot_search_results', 'choose_identities', 'plot_tsne', 'read_run_log',
    'plot_training_curves', 'MAP_KINDS',
]

MAP_KINDS = ('auto', 'attention', 'activation')
CORRECT_COLOUR, WRONG_COLOUR = '#1a9641', '#d7191c'


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches='tight')
    return path


def _model_input(loaded: LoadedEmbedder, images: Sequence[Image.Image]) -> torch.Tensor:
    transform = build_eval_transform(loaded.image_size)
    return torch.stack([transform(image) for image in images])


# ---------------------------------------------------------------------------------------------------------
# Attention maps (paper Fig. 5)


def _spatial_attention_modules(backbone: torch.nn.Module, blocks: str) -> dict[str, GroupedSpatialAttn]:
    """GAM/CBAM spatial gates by module name: the model's last one (``blocks='last'``, the final residual
    block as in Fig. 5) or the last one of each stage (``'stages'``; a stage is a top-level child)."""
    found = {name: m for name, m in backbone.named_modules() if isinstance(m, GroupedSpatialAttn)}
    if not found:
        raise ValueError(f'{type(backbone).__name__} has no GAM/CBAM spatial attention to show: use '
                         "--map activation for models without attention (e.g. BUC's plain ResNet-50)")
    if blocks == 'last':
        name = list(found)[-1]
        return {name: found[name]}
    by_stage = {name.split('.')[0]: (name, m) for name, m in found.items()}  # later entries win: the last
    return dict(by_stage.values())


@torch.no_grad()
def spatial_attention_maps(backbone: torch.nn.Module, images: torch.Tensor, blocks: str = 'last'
                           ) -> dict[str, torch.Tensor]:
    """The spatial attention ``A_s = sigmoid(BN(conv7x7([mean_c, max_c])))`` of Eq. 3, (B, H, W) in [0, 1],
    per block name.

    Read by a forward hook on the gate's BN, whose output is the map before its sigmoid, so the layer needs no
    change. With one map per filter group (``grouped_spatial``) the groups' maps are averaged.
    """
    maps, handles = {}, []
    for name, module in _spatial_attention_modules(backbone, blocks).items():
        def keep(_, __, logits, name=name):
            maps[name] = torch.sigmoid(logits).mean(1)
        handles.append(module.bn.register_forward_hook(keep))
    was_training = backbone.training
    try:
        backbone.eval()(images)
    finally:
        backbone.train(was_training)
        for handle in handles:
            handle.remove()
    return maps


@torch.no_grad()
def stage_activation_maps(backbone: torch.nn.Module, images: torch.Tensor, blocks: str = 'last'
                          ) -> dict[str, torch.Tensor]:
    """Channel-mean activation of stage outputs, (B, H, W) scaled to [0, 1] per image: the "activation maps at
    the final residual block" Fig. 5 shows for BUC, which has no attention to read."""
    was_training = backbone.training
    try:
        stages = backbone.eval().forward_intermediates(images, intermediates_only=True)
    finally:
        backbone.train(was_training)
    names = [info['module'] for info in backbone.feature_info][-len(stages):]
    chosen = range(len(stages)) if blocks == 'stages' else [len(stages) - 1]
    maps = {}
    for index in chosen:
        activation = stages[index].mean(1)
        low = activation.amin((1, 2), keepdim=True)
        high = activation.amax((1, 2), keepdim=True)
        maps[names[index]] = (activation - low) / (high - low).clamp(min=1e-12)
    return maps


def _overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    coloured = colormaps['jet'](heat)[..., :3]
    return (1 - alpha) * image + alpha * coloured


def _has_spatial_attention(backbone: torch.nn.Module) -> bool:
    return any(isinstance(m, GroupedSpatialAttn) for m in backbone.modules())


def plot_attention(models: Sequence[LoadedEmbedder], images: Sequence[Image.Image], output: str | os.PathLike,
                   map_kind: str = 'auto', blocks: str = 'last') -> Path:
    """One row per image: the original, then for each model and block its map and the map over the image.

    ``map_kind='auto'`` shows the attention of models that have GAM/CBAM and the activation of the others,
    as Fig. 5 does for BUC; each column is titled with the kind it shows.
    """
    if map_kind not in MAP_KINDS:
        raise ValueError(f'map_kind must be one of {MAP_KINDS}, got {map_kind!r}')
    width, height = images[0].size
    shown = [np.asarray(im.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255 for im in images]
    columns = []  # (title, maps (B, height, width))
    for loaded in models:
        kind = map_kind
        if kind == 'auto':
            kind = 'attention' if _has_spatial_attention(loaded.backbone) else 'activation'
        compute = spatial_attention_maps if kind == 'attention' else stage_activation_maps
        for block, maps in compute(loaded.backbone, _model_input(loaded, images), blocks).items():
            upsampled = F.interpolate(maps[:, None], size=(height, width), mode='bilinear')
            columns.append((f'{loaded.label}\n{block}\n{kind}', upsampled[:, 0].clamp(0, 1).numpy()))

    figure = Figure(figsize=(1.1 * (1 + 2 * len(columns)), 2.2 * len(images)))
    axes = figure.subplots(len(images), 1 + 2 * len(columns), squeeze=False)
    for row, image in enumerate(shown):
        axes[row, 0].imshow(image)
        for col, (_, maps) in enumerate(columns):
            axes[row, 1 + 2 * col].imshow(maps[row], cmap='jet', vmin=0, vmax=1)
            axes[row, 2 + 2 * col].imshow(_overlay(image, maps[row]))
    axes[0, 0].set_title('original', fontsize=7)
    for col, (title, _) in enumerate(columns):
        axes[0, 1 + 2 * col].set_title(title, fontsize=6)
        axes[0, 2 + 2 * col].set_title('overlay', fontsize=6)
    for ax in axes.flat:
        ax.set_axis_off()
    return _save(figure, output)


# ---------------------------------------------------------------------------------------------------------
# Ranked retrieval


def rank_gallery(query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor, query: Sequence[ReidImage],
                 gallery: Sequence[ReidImage], top_k: int = 10) -> list[list[int]]:
    """Gallery indices of each query's ``top_k`` nearest embeddings, closest first, leaving out the gallery
    images of the query's identity in the query's camera as the Market-1501 protocol does."""
    distances = pairwise_euclidean(query_embeddings, gallery_embeddings)
    gallery_pids = np.array([im.pid for im in gallery])
    gallery_cams = np.array([im.camid for im in gallery])
    ranked = []
    for row, image in enumerate(query):
        order = np.argsort(distances[row], kind='stable')
        excluded = left_out_of_ranking(image.pid, image.camid, gallery_pids[order], gallery_cams[order])
        ranked.append(order[~excluded][:top_k].tolist())
    return ranked


def plot_ranked_retrieval(loaded: LoadedEmbedder, query: Sequence[ReidImage], gallery: Sequence[ReidImage],
                          query_indices: Sequence[int], output: str | os.PathLike, top_k: int = 10) -> Path:
    """For each chosen query, the query then its ``top_k`` gallery matches; green frame: same identity."""
    transform = build_eval_transform(loaded.image_size)
    chosen = [query[i] for i in query_indices]
    ranked = rank_gallery(extract_embeddings(loaded.embedder, chosen, transform),
                          extract_embeddings(loaded.embedder, gallery, transform), chosen, gallery, top_k)
    rows = [(load_image(image.path), f'query\nid {image.pid}',
             [(load_image(gallery[m].path), f'{rank + 1}',
               CORRECT_COLOUR if gallery[m].pid == image.pid else WRONG_COLOUR)
              for rank, m in enumerate(matches)])
            for image, matches in zip(chosen, ranked, strict=True)]
    title = f'{loaded.label}: top-{top_k} gallery matches (green: same identity, red: another)'
    return _save(_ranked_rows_figure(rows, top_k, title), output)


def plot_search_results(queries: Sequence[tuple[str, Image.Image]],
                        matches: Sequence[Sequence[tuple[str, Image.Image, float]]],
                        output: str | os.PathLike, title: str) -> Path:
    """A ranked list per query for a gallery without labels: ``queries`` are (name, image), ``matches``
    per query (name, image, distance), closest first; each match is titled with its rank and distance."""
    top_k = max((len(row) for row in matches), default=1)
    rows = [(image, f'query\n{_short(name)}',
             [(match, f'{rank + 1}: {distance:.2f}\n{_short(match_name)}', None)
              for rank, (match_name, match, distance) in enumerate(row)])
            for (name, image), row in zip(queries, matches, strict=True)]
    return _save(_ranked_rows_figure(rows, top_k, title), output)


def _short(name: str, length: int = 14) -> str:
    name = Path(name).name
    return name if len(name) <= length else name[:length - 1] + '…'


def _ranked_rows_figure(rows, top_k: int, title: str) -> Figure:
    """One row per query: its image, then up to ``top_k`` (image, title, frame colour or None)."""
    figure = Figure(figsize=(1.1 * (top_k + 1), 2.0 * len(rows)))
    axes = figure.subplots(len(rows), top_k + 1, squeeze=False)
    for row, (query_image, query_title, matches) in enumerate(rows):
        axes[row, 0].imshow(query_image)
        axes[row, 0].set_title(query_title, fontsize=7)
        axes[row, 0].set_axis_off()
        for col in range(top_k):
            ax = axes[row, col + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(matches):
                ax.set_axis_off()
                continue
            image, match_title, colour = matches[col]
            ax.imshow(image)
            ax.set_title(match_title, fontsize=6 if '\n' in match_title else 7)
            if colour is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
    figure.suptitle(title, fontsize=8)
    return figure


# ---------------------------------------------------------------------------------------------------------
# t-SNE (paper Fig. 4)


def choose_identities(images: Sequence[ReidImage], num_ids: int) -> list[int]:
    """The ``num_ids`` identities with the most images (ties: smaller id first), distractors left out."""
    counts = {}
    for image in images:
        if image.pid > 0:
            counts[image.pid] = counts.get(image.pid, 0) + 1
    return sorted(counts, key=lambda pid: (-counts[pid], pid))[:num_ids]


def plot_tsne(models: Sequence[LoadedEmbedder], images: Sequence[ReidImage], identities: Sequence[int],
              output: str | os.PathLike, perplexity: float = 30.0, seed: int = 0) -> Path:
    """t-SNE (van der Maaten & Hinton, 2008) of the embeddings of ``identities``' images, one colour each;
    one panel per model, the same images and colours in each (Fig. 4 sets BUC beside GAM this way)."""
    from sklearn.manifold import TSNE

    wanted = set(identities)
    chosen = [image for image in images if image.pid in wanted]
    if len(chosen) < 3:
        raise ValueError(f'identities {sorted(wanted)} have {len(chosen)} images; t-SNE needs at least 3')
    perplexity = min(perplexity, len(chosen) - 1)  # scikit-learn requires perplexity < number of points
    pids = np.array([image.pid for image in chosen])
    figure = Figure(figsize=(5 * len(models) + 1, 5))
    palette = colormaps['tab20']
    for ax, loaded in zip(figure.subplots(1, len(models), squeeze=False)[0], models, strict=True):
        transform = build_eval_transform(loaded.image_size)
        embeddings = extract_embeddings(loaded.embedder, chosen, transform).numpy()
        points = TSNE(perplexity=perplexity, init='pca', random_state=seed).fit_transform(embeddings)
        for index, pid in enumerate(identities):
            at = pids == pid
            ax.scatter(points[at, 0], points[at, 1], s=18, color=palette(index % 20), label=f'id {pid}')
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f'{loaded.label}: t-SNE of {len(identities)} identities, {len(chosen)} images '
                     f'(perplexity {perplexity:g})', fontsize=8)
    ax.legend(fontsize=6, ncol=2, loc='center left', bbox_to_anchor=(1, 0.5))
    return _save(figure, output)


# ---------------------------------------------------------------------------------------------------------
# Training curves


def read_run_log(run: str | os.PathLike) -> dict[str, list[dict]]:
    """The ``epoch`` and ``stage`` records of a run's ``log.jsonl`` in order, plus the untrained ``eval``
    (:func:`~timm_gam.reid.run_log.read_events`: a resumed run's repeated records once)."""
    records = read_events(run, 'epoch', 'stage', 'eval')
    return {'epochs': [r for r in records if r['event'] == 'epoch'],
            'stages': [r for r in records if r['event'] == 'stage'],
            'untrained': [r for r in records if r['event'] == 'eval' and r.get('stage') == -1]}


def plot_training_curves(runs: Sequence[str | os.PathLike], output: str | os.PathLike) -> Path:
    """Loss per epoch (total, IDL, ACL), clusters per stage, and rank-1/mAP per stage (stage -1: untrained),
    one line style per run."""
    figure = Figure(figsize=(13, 3.6))
    loss_ax, cluster_ax, metric_ax = figure.subplots(1, 3)
    for index, run in enumerate(runs):
        log = read_run_log(run)
        name = Path(run).name
        colour = colormaps['tab10'](index % 10)
        epochs = [e['epoch'] for e in log['epochs']]
        for key, style in (('loss', '-'), ('idl', '--'), ('acl', ':')):
            loss_ax.plot(epochs, [e[key] for e in log['epochs']], style, color=colour, label=f'{name} {key}')
        stages = log['stages']
        cluster_ax.plot([s['stage'] for s in stages], [s['num_clusters'] for s in stages], 'o-', color=colour,
                        label=name)
        evaluated = log['untrained'] + [s for s in stages if 'rank1' in s]
        steps = [s['stage'] for s in evaluated]
        metric_ax.plot(steps, [s['rank1'] for s in evaluated], 'o-', color=colour, label=f'{name} rank-1')
        metric_ax.plot(steps, [s['mAP'] for s in evaluated], 's--', color=colour, label=f'{name} mAP')
    loss_ax.set(xlabel='epoch', ylabel='loss', title='training loss (J = J_idl + J_acl, Eq. 11)')
    cluster_ax.set(xlabel='stage', ylabel='clusters', title='number of clusters after each stage')
    metric_ax.set(xlabel='stage (-1: untrained)', ylabel='percent', title='query/gallery rank-1 and mAP')
    for ax in (loss_ax, cluster_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    figure.tight_layout()
    return _save(figure, output)
