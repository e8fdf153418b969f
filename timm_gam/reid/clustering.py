"""Bottom-up merging of clusters (paper Sec. 4.3, Eq. 9-10), exact and without an n x n matrix.

:func:`dense_merge` states the rule on the full distance matrix, to be read (and to check against);
:func:`merge_clusters` gives the same result without the matrix, in time and memory that scale to
Market-1501 and beyond. One merging step follows BUC (Lin et al., AAAI 2019), which the paper builds on:

* the distance of two clusters is the smallest distance between their images (single linkage), with
  ``d0`` the Euclidean distance of Eq. 9 (or its square, as BUC's code uses: ``distance='sqeuclidean'``);
* an image pair ``(i, j)`` in clusters ``M_a != M_b`` costs ``d0(i, j) + lambda * (|M_a| + |M_b|)``
  (Eq. 10, :func:`balanced_cost`), with the sizes taken at the start of the step;
* image pairs are walked in ascending cost; a pair whose clusters are already joined is skipped;
  the step stops after ``num_merges`` unions.

Variants against chaining (many small clusters joining in one step): ``size_update='refresh'``
re-prices every pair with the current sizes after each union (always merging the currently cheapest
pair), and ``max_cluster_size`` skips unions that would grow a cluster beyond it.

Exactness without the dense matrix (:func:`merge_clusters`): every image pair costing at most a
threshold ``T`` is found by an exact range search (:class:`~timm_gam.reid.pair_search.PairSearch`),
and the merge process runs on those pairs. If it makes its ``num_merges`` unions with the last one
costing at most ``T``, every pair left out costs more than anything accepted, so the result equals
the dense computation; otherwise ``T`` grows and the search is redone. Costs are evaluated in float64
from the features, so exact ties between different costs are a measure-zero event; they are broken by
cluster index, not by image order. The result (as a partition) does not depend on the order of the images.
"""
import functools
import heapq
import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .pair_search import ClusterPairs, PairSearch

__all__ = ['MergeResult', 'balanced_cost', 'cluster_purity', 'dense_merge', 'merge_clusters']

DISTANCES = ('euclidean', 'sqeuclidean')
SIZE_UPDATES = ('step', 'refresh')


@dataclass
class MergeResult:
    """Outcome of one merging step.

    Attributes:
        labels: (n,) int64 cluster labels, numbered 0..C-1 by first appearance.
        merge_costs: Eq. 10 cost of each union, in the order the unions were made.
        threshold: every image pair costing at most this was considered (the exactness certificate).
        num_candidate_pairs: inter-cluster image pairs within ``threshold``.
    """
    labels: np.ndarray
    merge_costs: np.ndarray
    threshold: float
    num_candidate_pairs: int


def merge_clusters(features, labels, num_merges: int, size_penalty: float = 0.005, *,
                   distance: str = 'euclidean', size_update: str = 'step', max_cluster_size=None,
                   points_per_cell: int = 256, with_costs: bool = False) -> np.ndarray | MergeResult:
    """Merge the closest clusters bottom-up (Eq. 9-10); returns the new (n,) int64 labels, exactly those
    of :func:`dense_merge`.

    Args:
        features: (n, d) embeddings, numpy or CPU torch (L2-normalised in practice).
        labels: (n,) integer cluster label of each image (any integer values).
        num_merges: number of unions to make (e.g. 4% of the number of images per stage, the paper).
        size_penalty: lambda of Eq. 10; the paper and BUC use 0.005.
        distance: ``'euclidean'`` (Eq. 9) or ``'sqeuclidean'`` (BUC's code).
        size_update: ``'step'`` (BUC: sizes fixed at the step start) or ``'refresh'``.
        max_cluster_size: if set, unions that would make a larger cluster are skipped.
        points_per_cell: average Voronoi cell size of the range search; speed only, never the result.
        with_costs: return a :class:`MergeResult` (labels, the unions' costs, the exactness certificate).
    """
    features = _check_features(features)
    cluster_of, sizes = _check_labels(labels, len(features))
    _check_options(num_merges, size_penalty, distance, size_update, max_cluster_size, len(sizes))
    process = MergeProcess(sizes, num_merges, size_penalty, size_update, max_cluster_size)
    if num_merges == 0:
        result = MergeResult(_first_appearance_labels(cluster_of), np.empty(0), -math.inf, 0)
        return result if with_costs else result.labels

    cost = functools.partial(balanced_cost, size_penalty=size_penalty)
    search = PairSearch(features, cluster_of, sizes, cost, distance, points_per_cell)
    guess = process.run(search.nearby_pairs())
    threshold = guess.last_cost if guess.num_merges else search.grown_threshold(search.smallest_penalty)
    while True:
        pairs = search.pairs_within(threshold)
        outcome = process.run(pairs)
        if outcome.num_merges == num_merges and outcome.last_cost <= threshold:
            break  # certified: every pair left out costs more than the last union
        if outcome.num_merges == num_merges:
            threshold = outcome.last_cost  # size refreshes or the size cap made the last union dearer
        elif threshold >= search.largest_cost:
            _warn_too_few(outcome.num_merges, num_merges, max_cluster_size)
            break
        else:
            threshold = search.grown_threshold(threshold)
    merged = outcome.roots()[cluster_of]
    result = MergeResult(_first_appearance_labels(merged), np.asarray(outcome.costs), threshold, len(pairs))
    return result if with_costs else result.labels


def balanced_cost(d0, size_a, size_b, size_penalty: float):
    """Eq. 10: ``d(x_i, x_j) = d0 + lambda * (|M_i| + |M_j|)``, the balanced merging cost."""
    return d0 + size_penalty * (size_a + size_b)


def dense_merge(features, labels, num_merges: int, size_penalty: float = 0.005, *,
                distance: str = 'euclidean', size_update: str = 'step', max_cluster_size=None) -> MergeResult:
    """One merging step on the full n x n distance matrix: the statement of Eq. 9-10 that
    :func:`merge_clusters` computes faster; for small problems (memory grows as n^2)."""
    features = _check_features(features).astype(np.float64)
    cluster_of, start_size = _check_labels(labels, len(features))
    _check_options(num_merges, size_penalty, distance, size_update, max_cluster_size, len(start_size))
    squared = np.einsum('ijk,ijk->ij', features[:, None] - features[None], features[:, None] - features[None])
    d0 = squared if distance == 'sqeuclidean' else np.sqrt(squared)  # Eq. 9 between images
    outcome, size = MergeOutcome(len(start_size)), list(start_size)
    cap = max_cluster_size or math.inf

    def clusters(i, j):
        return outcome.find(cluster_of[i]), outcome.find(cluster_of[j])

    def joinable(i, j):
        a, b = clusters(i, j)
        return a != b and size[a] + size[b] <= cap

    def union(cost, i, j):
        a, b = clusters(i, j)
        outcome.parent[b], size[a] = a, size[a] + size[b]
        outcome.costs.append(cost)

    def priced(i, j, sizes):  # Eq. 10 of an image pair, its clusters' sizes read from ``sizes``
        a, b = (cluster_of[i], cluster_of[j]) if sizes is start_size else clusters(i, j)
        return balanced_cost(d0[i, j], sizes[a], sizes[b], size_penalty), i, j

    pairs = list(itertools.combinations(range(len(features)), 2))
    if size_update == 'step':  # one pass in the order of the costs at the step's start sizes
        for cost, i, j in sorted(priced(i, j, start_size) for i, j in pairs):
            if outcome.num_merges < num_merges and joinable(i, j):
                union(cost, i, j)
    else:  # the cheapest joinable pair at the current sizes, again after every union
        while outcome.num_merges < num_merges:
            costs = [priced(i, j, size) for i, j in pairs if joinable(i, j)]
            if not costs:
                break
            union(*min(costs))
    if outcome.num_merges < num_merges:
        _warn_too_few(outcome.num_merges, num_merges, max_cluster_size)
    merged = outcome.roots()[cluster_of]
    return MergeResult(_first_appearance_labels(merged), np.asarray(outcome.costs), math.inf, len(pairs))


def _warn_too_few(made: int, wanted: int, max_cluster_size):
    warnings.warn(f'only {made} of {wanted} merges are possible (max_cluster_size={max_cluster_size}); '
                  'returning those', stacklevel=3)


def cluster_purity(labels, true_ids) -> float:
    """Fraction of images whose cluster's majority identity is their own identity.

    A diagnostic that needs ground truth (never used for training): 1.0 when every cluster holds a
    single identity, falling as clusters chain across identities. Ties for the majority count once.
    """
    labels, true_ids = np.asarray(labels).reshape(-1), np.asarray(true_ids).reshape(-1)
    if len(labels) != len(true_ids) or len(labels) == 0:
        raise ValueError(f'labels ({len(labels)}) and true_ids ({len(true_ids)}) must be equally long '
                         'and non-empty')
    _, cluster = np.unique(labels, return_inverse=True)
    _, identity = np.unique(true_ids, return_inverse=True)
    num_ids = np.int64(identity.max() + 1)
    cluster_identity, counts = np.unique(cluster * num_ids + identity, return_counts=True)
    majority = np.zeros(cluster.max() + 1, dtype=np.int64)
    np.maximum.at(majority, cluster_identity // num_ids, counts)
    return float(majority.sum() / len(labels))


class MergeOutcome:
    """Unions made by one run of the merge process, with a union-find forest over the clusters."""

    def __init__(self, num_clusters):
        self.parent = list(range(num_clusters))
        self.costs = []

    @property
    def num_merges(self):
        return len(self.costs)

    @property
    def last_cost(self):
        return self.costs[-1] if self.costs else -math.inf

    def find(self, a):
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving keeps the trees flat
            a = parent[a]
        return a

    def roots(self):
        return np.array([self.find(a) for a in range(len(self.parent))])


class MergeProcess:
    """Walks cluster pairs in ascending Eq. 10 cost, making unions until ``num_merges`` (BUC)."""

    def __init__(self, sizes, num_merges, size_penalty, size_update, max_cluster_size):
        self.sizes = sizes
        self.num_merges = num_merges
        self.size_penalty = size_penalty
        self.refresh = size_update == 'refresh'
        self.max_cluster_size = max_cluster_size or math.inf

    def run(self, pairs: ClusterPairs) -> MergeOutcome:
        outcome = MergeOutcome(len(self.sizes))
        size = self.sizes.astype(np.int64).tolist()  # current size, valid at union-find roots
        start_cost = balanced_cost(pairs.d0, self.sizes[pairs.a], self.sizes[pairs.b], self.size_penalty)
        walk = self._refreshed_order if self.refresh else self._step_order
        pairs = ClusterPairs(pairs.a.tolist(), pairs.b.tolist(), pairs.d0.tolist())  # fast scalar access
        for cost, a, b in walk(start_cost, pairs, outcome, size):
            if size[a] + size[b] > self.max_cluster_size:
                continue  # sizes only grow, so this pair stays too big for the rest of the step
            outcome.parent[b] = a  # the walks yield the larger root first: union by size
            size[a] += size[b]
            outcome.costs.append(float(cost))
            if outcome.num_merges == self.num_merges:
                break
        return outcome

    @staticmethod
    def _step_order(start_cost, pairs, outcome, size):
        """Pairs by step-start cost; yields ``(cost, root_a, root_b)`` of pairs not yet joined."""
        for e in np.argsort(start_cost, kind='stable').tolist():
            root_a, root_b = outcome.find(pairs.a[e]), outcome.find(pairs.b[e])
            if root_a != root_b:
                yield start_cost[e], *((root_a, root_b) if size[root_a] >= size[root_b] else (root_b, root_a))

    def _refreshed_order(self, start_cost, pairs, outcome, size):
        """Pairs by their cost at current sizes: a lazy heap, since costs only grow as clusters do."""
        heap = list(zip(start_cost.tolist(), range(len(pairs)), strict=True))
        heapq.heapify(heap)
        while heap:
            cost, e = heapq.heappop(heap)
            root_a, root_b = outcome.find(pairs.a[e]), outcome.find(pairs.b[e])
            if root_a == root_b:
                continue
            current = balanced_cost(pairs.d0[e], size[root_a], size[root_b], self.size_penalty)
            if current > cost:
                heapq.heappush(heap, (current, e))
                continue
            yield cost, *((root_a, root_b) if size[root_a] >= size[root_b] else (root_b, root_a))


def _first_appearance_labels(labels) -> np.ndarray:
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank_of_first = np.empty(len(first), dtype=np.int64)
    rank_of_first[np.argsort(first)] = np.arange(len(first))
    return rank_of_first[inverse]


def _check_features(features) -> np.ndarray:
    features = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f'features must be a non-empty (num_images, dim) array, got shape {features.shape}')
    if not np.issubdtype(features.dtype, np.floating):
        features = features.astype(np.float32)
    if not np.isfinite(features).all():
        raise ValueError('features contain NaN or inf; check the embedding extraction')
    return features


def _check_labels(labels, num_images):
    labels = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'labels must be {num_images} integers (one per feature row), got '
                         f'{labels.dtype} of shape {labels.shape}')
    _, cluster_of, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return cluster_of.astype(np.int64), sizes


def _check_options(num_merges, size_penalty, distance, size_update, max_cluster_size, num_clusters):
    if distance not in DISTANCES:
        raise ValueError(f'distance must be one of {DISTANCES}, got {distance!r}')
    if size_update not in SIZE_UPDATES:
        raise ValueError(f'size_update must be one of {SIZE_UPDATES}, got {size_update!r}')
    if not 0 <= num_merges < num_clusters:
        raise ValueError(f'num_merges must be in [0, {num_clusters - 1}] for {num_clusters} clusters, '
                         f'got {num_merges}')
    if size_penalty < 0:
        raise ValueError(f'size_penalty (lambda of Eq. 10) must be >= 0, got {size_penalty}')
    if max_cluster_size is not None and max_cluster_size < 2:
        raise ValueError(f'max_cluster_size must be >= 2 (or None for no cap), got {max_cluster_size}')
