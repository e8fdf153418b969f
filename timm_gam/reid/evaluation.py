"""Re-ID evaluation: Euclidean ranking of embeddings, CMC and mAP under the Market-1501 protocol.

The paper ranks gallery images by the Euclidean distance between normalised embeddings (Sec. 3) and
reports CMC rank-1/5/10 and mAP (Sec. 5). :func:`evaluate_rank` reproduces torchreid's
``evaluate_rank`` (``eval_market1501``) number for number:

* for each query, gallery images with the query's identity *and* camera are removed (they are too
  easy); pid 0 distractors stay in the gallery and never match; pid -1 junk images are expected to
  have been dropped by the dataset reader, as torchreid's Market-1501 reader does;
* queries left without a correct match are skipped; CMC and mAP average over the remaining ones;
* average precision is the standard one, the mean over the correct matches of the precision at
  their rank (not BUC's area under the interpolated precision-recall curve).

Instead of arg-sorting every row, the fast path sorts the distances once and locates only the few
correct and removed gallery images of each query by binary search, which gives the same ranks as a
stable arg-sort (ties broken by gallery index).

Everything that reports retrieval figures goes through here: :func:`evaluate_split` scores embeddings
of labelled images (the trainer after each stage, the colour-histogram baseline), and
:func:`evaluate_model` embeds and scores a split with a model (``--eval-only``, the publish command).
"""
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .datasets import ReidImage
from .embedding import extract_embeddings
from .transforms import build_eval_transform

__all__ = ['evaluate_rank', 'pairwise_euclidean', 'evaluate_embeddings', 'evaluate_split', 'evaluate_model',
           'has_labels', 'format_metrics', 'left_out_of_ranking']


def pairwise_euclidean(query_features, gallery_features) -> np.ndarray:
    """Distance matrix ``d(x_q, x_g) = ||phi(x_q) - phi(x_g)||`` (paper Sec. 3), float32 numpy.

    Accepts numpy arrays or torch tensors of shape (num_query, d) and (num_gallery, d). Computed as
    ``sqrt(|q|^2 + |g|^2 - 2 q.g)`` in float32, clamped at zero against rounding.
    """
    query = torch.as_tensor(np.asarray(query_features) if not torch.is_tensor(query_features)
                            else query_features.detach().cpu(), dtype=torch.float32)
    gallery = torch.as_tensor(np.asarray(gallery_features) if not torch.is_tensor(gallery_features)
                              else gallery_features.detach().cpu(), dtype=torch.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f'expected features of shape (num_query, d) and (num_gallery, d), got '
                         f'{tuple(query.shape)} and {tuple(gallery.shape)}')
    squared = (query.pow(2).sum(1, keepdim=True) + gallery.pow(2).sum(1)).addmm_(query, gallery.T, alpha=-2)
    return squared.clamp_(min=0).sqrt_().numpy()


def left_out_of_ranking(query_pid, query_camid, gallery_pids, gallery_camids) -> np.ndarray:
    """The gallery images the protocol removes from a query's ranking: its identity in its own camera."""
    return (np.asarray(gallery_pids) == query_pid) & (np.asarray(gallery_camids) == query_camid)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50):
    """CMC curve and mAP of a query x gallery distance matrix, Market-1501 protocol (torchreid).

    Args:
        distmat: (num_query, num_gallery) distances, smaller is more similar.
        q_pids, g_pids: identity of each query / gallery image.
        q_camids, g_camids: camera of each query / gallery image.
        max_rank: length of the returned CMC curve. As torchreid does, a gallery smaller than
            ``max_rank`` lowers it to the gallery size (with a printed note).

    Returns:
        ``(cmc, mAP)``: ``cmc[k]`` is the fraction of valid queries with a correct match within the
        top ``k + 1`` (float32 array of length ``max_rank``), ``mAP`` the mean average precision,
        both as fractions in [0, 1].
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_rank_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
        print(f'Note: number of gallery samples is quite small, got {num_g}')

    sorted_rows = np.sort(distmat, axis=1)
    gallery_by_pid = _indices_by_value(g_pids)
    no_images = np.empty(0, dtype=np.int64)
    first_hit_counts = np.zeros(max_rank, dtype=np.int64)
    average_precisions = []
    for q in range(num_q):
        same_pid = gallery_by_pid.get(q_pids[q], no_images)
        same_camera = left_out_of_ranking(q_pids[q], q_camids[q], g_pids[same_pid], g_camids[same_pid])
        matches, removed = same_pid[~same_camera], same_pid[same_camera]
        if matches.size == 0:
            continue  # the query's identity is not visible from another camera: skipped, as torchreid
        ranks = _ranks_after_removal(distmat[q], sorted_rows[q], matches, removed)
        if ranks[0] < max_rank:
            first_hit_counts[ranks[0]] += 1
        average_precisions.append(_average_precision(ranks))
    if not average_precisions:
        raise ValueError('no query has a correct match in the gallery from another camera; check that '
                         'query and gallery pids/camids come from the same dataset split')
    num_valid = len(average_precisions)
    cmc = np.cumsum(first_hit_counts).astype(np.float32) / np.float32(num_valid)
    return cmc, float(np.mean(average_precisions))


def evaluate_embeddings(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, ranks=(1, 5, 10)) -> dict:
    """Rank the gallery by Euclidean distance and report CMC ranks and mAP, in percent.

    Returns ``{'rank1': ..., 'rank5': ..., 'rank10': ..., 'mAP': ...}`` (keys follow ``ranks``),
    values in percent as re-ID papers (and the paper's tables) report them.
    """
    if not ranks or min(ranks) < 1:
        raise ValueError(f'ranks must be positive integers, got {ranks}')
    distmat = pairwise_euclidean(q_feats, g_feats)
    cmc, mean_ap = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max(ranks))
    metrics = {f'rank{r}': 100.0 * float(cmc[min(r, len(cmc)) - 1]) for r in ranks}
    metrics['mAP'] = 100.0 * mean_ap
    return metrics


def has_labels(images: Sequence[ReidImage]) -> bool:
    """Whether every image of a non-empty split has a person id to evaluate against."""
    return bool(images) and all(im.pid >= 0 for im in images)


def evaluate_split(query_embeddings, gallery_embeddings, query: Sequence[ReidImage],
                   gallery: Sequence[ReidImage]) -> dict:
    """CMC rank-1/5/10 and mAP (percent), Market-1501 protocol, for embeddings of labelled images."""
    if not (has_labels(query) and has_labels(gallery)):
        raise ValueError('evaluation needs a labelled query and gallery split (person ids from Market-1501 '
                         'or DukeMTMC-reID file names in query/ and bounding_box_test/)')

    def ids(images, key):
        return np.array([getattr(im, key) for im in images])
    return evaluate_embeddings(query_embeddings, gallery_embeddings, ids(query, 'pid'), ids(gallery, 'pid'),
                               ids(query, 'camid'), ids(gallery, 'camid'))


def evaluate_model(model: nn.Module, query: Sequence[ReidImage], gallery: Sequence[ReidImage],
                   image_size: tuple[int, int], *, batch_size: int = 128, workers: int = 0,
                   device: str | torch.device = 'cpu', amp_dtype: torch.dtype | None = None) -> dict:
    """Embed a labelled query/gallery split with ``model`` at ``image_size`` and score it
    (:func:`evaluate_split`); adds the split sizes and the number of query identities. ``model``
    outputs normalised embeddings (a :class:`~timm_gam.reid.ReidEmbedder`)."""
    embed = dict(transform=build_eval_transform(image_size), batch_size=batch_size, num_workers=workers,
                 device=device, amp_dtype=amp_dtype)
    metrics = evaluate_split(extract_embeddings(model, query, **embed),
                             extract_embeddings(model, gallery, **embed), query, gallery)
    return {**metrics, 'num_query': len(query), 'num_gallery': len(gallery),
            'num_identities': len({im.pid for im in query})}


def format_metrics(metrics: dict) -> str:
    """``rank1 .. rank5 .. rank10 .. mAP .. purity ..``, for console lines."""
    keys = [k for k in ('rank1', 'rank5', 'rank10', 'mAP', 'cluster_purity') if k in metrics]
    return ' '.join(f'{k} {metrics[k]:.1f}' if k != 'cluster_purity' else f'purity {metrics[k]:.3f}'
                    for k in keys) or '(no labelled query/gallery)'


def _ranks_after_removal(distances, sorted_distances, matches, removed) -> np.ndarray:
    """0-based ranks of ``matches`` in the stable order of ``distances`` once ``removed`` is dropped."""
    match_ranks = np.sort(_stable_ranks(distances, sorted_distances, matches))
    removed_ranks = _stable_ranks(distances, sorted_distances, removed)
    return match_ranks - np.searchsorted(np.sort(removed_ranks), match_ranks)


def _stable_ranks(distances, sorted_distances, indices) -> np.ndarray:
    """Position of each ``indices`` item in a stable arg-sort of ``distances``, by binary search."""
    values = distances[indices]
    ranks = np.searchsorted(sorted_distances, values, side='left')
    tied = np.searchsorted(sorted_distances, values, side='right') - ranks > 1
    for k in np.flatnonzero(tied):  # exact ties are rare: count equal distances at smaller indices
        ranks[k] += np.count_nonzero(distances[:indices[k]] == values[k])
    return ranks


def _average_precision(match_ranks) -> float:
    """Mean over correct matches of precision at their rank; ``match_ranks`` sorted, 0-based."""
    hits_so_far = np.arange(1, len(match_ranks) + 1)
    return float(np.sum(hits_so_far / (match_ranks + 1.0)) / len(match_ranks))


def _indices_by_value(values) -> dict:
    order = np.argsort(values, kind='stable')
    uniques, starts = np.unique(values[order], return_index=True)
    return dict(zip(uniques.tolist(), np.split(order, starts[1:]), strict=True))


def _check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = distmat.detach().cpu().numpy() if torch.is_tensor(distmat) else np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f'distmat must be (num_query, num_gallery), got shape {distmat.shape}')
    if np.isnan(distmat).any():
        raise ValueError('distmat contains NaN; check the embeddings for NaN before ranking')
    distmat = distmat + 0.0  # -0.0 becomes 0.0, so equal distances compare equal when sorted
    arrays = [np.asarray(a.cpu() if torch.is_tensor(a) else a).reshape(-1)
              for a in (q_pids, g_pids, q_camids, g_camids)]
    expected = (distmat.shape[0], distmat.shape[1], distmat.shape[0], distmat.shape[1])
    names = ('q_pids', 'g_pids', 'q_camids', 'g_camids')
    for name, array, size in zip(names, arrays, expected, strict=True):
        if len(array) != size:
            raise ValueError(f'{name} has {len(array)} entries, but distmat of shape {distmat.shape} '
                             f'needs {size}')
    return (distmat, *arrays)
