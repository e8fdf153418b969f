"""Bottom-up merging of clusters (paper Sec. 4.3, Eq. 9-10), exact and without an n x n matrix.

One merging step follows BUC (Lin et al., AAAI 2019), which the paper builds on:

* the distance of two clusters is the smallest distance between their images (single linkage), with
  ``d0`` the Euclidean distance of Eq. 9 (or its square, as BUC's code uses: ``distance='sqeuclidean'``);
* an image pair ``(i, j)`` in clusters ``M_a != M_b`` costs ``d0(i, j) + lambda * (|M_a| + |M_b|)``
  (Eq. 10, :func:`balanced_cost`), with the sizes taken at the start of the step;
* image pairs are walked in ascending cost; a pair whose clusters are already joined is skipped;
  the step stops after ``num_merges`` unions.

Variants against chaining (many small clusters joining in one step): ``size_update='refresh'``
re-prices every pair with the current sizes after each union (always merging the currently cheapest
pair), and ``max_cluster_size`` skips unions that would grow a cluster beyond it.

Exactness without the dense matrix: all image pairs costing at most a threshold ``T`` are found by an
exact range search over Voronoi cells (k-means centroids; a cell is searched only when the bisector
bound says it may hold a point within the radius). The merge process then runs on those pairs. If it
makes its ``num_merges`` unions with the last one costing at most ``T``, every pair left out costs
more than anything accepted, so the result equals the dense computation; otherwise ``T`` grows and
the search is redone. Costs are evaluated in float64 from the features, so exact ties between
different costs are a measure-zero event; they are broken by cluster index, not by image order.
The result (as a partition) does not depend on the order of the images.
"""
import heapq
import math
import warnings
from dataclasses import dataclass

import faiss
import numpy as np
import torch

__all__ = ['MergeResult', 'balanced_cost', 'bottom_up_merge', 'cluster_purity', 'merge_clusters']

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
                   points_per_cell: int = 256) -> np.ndarray:
    """Merge the closest clusters bottom-up (Eq. 9-10); returns the new (n,) int64 labels.

    Args:
        features: (n, d) embeddings, numpy or CPU torch (L2-normalised in practice).
        labels: (n,) integer cluster label of each image (any integer values).
        num_merges: number of unions to make (e.g. 4% of the number of images per stage, the paper).
        size_penalty: lambda of Eq. 10; the paper and BUC use 0.005.
        distance: ``'euclidean'`` (Eq. 9) or ``'sqeuclidean'`` (BUC's code).
        size_update: ``'step'`` (BUC: sizes fixed at the step start) or ``'refresh'``.
        max_cluster_size: if set, unions that would make a larger cluster are skipped.
        points_per_cell: average Voronoi cell size of the range search; speed only, never the result.
    """
    return bottom_up_merge(features, labels, num_merges, size_penalty, distance=distance,
                           size_update=size_update, max_cluster_size=max_cluster_size,
                           points_per_cell=points_per_cell).labels


def balanced_cost(d0, size_a, size_b, size_penalty: float):
    """Eq. 10: ``d(x_i, x_j) = d0 + lambda * (|M_i| + |M_j|)``, the balanced merging cost."""
    return d0 + size_penalty * (size_a + size_b)


def bottom_up_merge(features, labels, num_merges: int, size_penalty: float = 0.005, *,
                    distance: str = 'euclidean', size_update: str = 'step', max_cluster_size=None,
                    points_per_cell: int = 256) -> MergeResult:
    """:func:`merge_clusters` with the merge costs and the exactness certificate."""
    features = _check_features(features)
    cluster_of, sizes = _check_labels(labels, len(features))
    _check_options(num_merges, size_penalty, distance, size_update, max_cluster_size, len(sizes))
    process = MergeProcess(sizes, num_merges, size_penalty, size_update, max_cluster_size)
    if num_merges == 0:
        return MergeResult(_first_appearance_labels(cluster_of), np.empty(0), -math.inf, 0)

    search = PairSearch(features, cluster_of, sizes, size_penalty, distance, points_per_cell)
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
            warnings.warn(f'only {outcome.num_merges} of {num_merges} merges are possible '
                          f'(max_cluster_size={max_cluster_size}); returning those', stacklevel=2)
            break
        else:
            threshold = search.grown_threshold(threshold)
    merged = outcome.roots()[cluster_of]
    return MergeResult(_first_appearance_labels(merged), np.asarray(outcome.costs), threshold, len(pairs))


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


@dataclass
class ClusterPairs:
    """Inter-cluster edges ``a < b`` with the single-linkage image distance ``d0`` between them."""
    a: np.ndarray
    b: np.ndarray
    d0: np.ndarray

    def __len__(self):
        return len(self.d0)


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


class PairSearch:
    """Finds the inter-cluster image pairs whose Eq. 10 cost is at most a threshold, exactly.

    Points are grouped into Voronoi cells around k-means centroids. For a point ``x`` of cell ``A``
    and any point ``y`` of cell ``B``, ``|x - y|`` is at least the distance from ``x`` to the
    bisector of the two centroids, ``(|x - c_B|^2 - |x - c_A|^2) / (2 |c_A - c_B|)``, so cells whose
    bound exceeds ``x``'s radius are never opened. Float32 distances filter with a safety margin;
    the surviving pairs are then measured in float64.
    """

    def __init__(self, features, cluster_of, sizes, size_penalty, distance, points_per_cell):
        self.features, self.cluster_of, self.sizes = features, cluster_of, sizes
        self.size_penalty, self.squared = size_penalty, distance == 'sqeuclidean'
        self.cells = VoronoiCells(np.ascontiguousarray(features, dtype=np.float32), points_per_cell)
        max_norm = float(np.sqrt(self.cells.sq_norms.max()))
        max_d0 = (2 * max_norm) ** 2 if self.squared else 2 * max_norm
        self.largest_cost = float(balanced_cost(max_d0, 2 * sizes.max(), 0, size_penalty))
        self.smallest_penalty = float(balanced_cost(0.0, 2 * sizes.min(), 0, size_penalty))

    def nearby_pairs(self, neighbours: int = 3) -> ClusterPairs:
        """A cheap subset of pairs (nearest neighbours within each cell) to guess a threshold from."""
        i, j = self.cells.nearest_in_cell(self.cluster_of, neighbours)
        return self._cluster_pairs(i, j)

    def pairs_within(self, threshold: float) -> ClusterPairs:
        """Every inter-cluster pair with Eq. 10 cost <= ``threshold`` (single linkage per cluster pair)."""
        own_penalty = balanced_cost(0.0, self.sizes[self.cluster_of], self.sizes.min(), self.size_penalty)
        radius = threshold - own_penalty
        radius = np.sqrt(np.maximum(radius, 0)) if self.squared else radius
        radius[threshold - own_penalty < 0] = -1.0  # no partner can be cheap enough
        i, j = self.cells.pairs_within_radius(radius, self.cluster_of)
        pairs = self._cluster_pairs(i, j)
        cost = balanced_cost(pairs.d0, self.sizes[pairs.a], self.sizes[pairs.b], self.size_penalty)
        keep = cost <= threshold
        return ClusterPairs(pairs.a[keep], pairs.b[keep], pairs.d0[keep])

    def grown_threshold(self, threshold) -> float:
        """Doubles the distance part of the threshold, up to the cost that admits every pair."""
        least_growth = 1e-3 * (self.largest_cost - self.smallest_penalty)
        distance_part = max(threshold - self.smallest_penalty, least_growth)
        return min(self.smallest_penalty + 2 * distance_part, self.largest_cost)

    def _cluster_pairs(self, i, j) -> ClusterPairs:
        """Exact float64 ``d0`` of image pairs, reduced to the smallest one per cluster pair."""
        d0 = _exact_distances(self.features, i, j, self.squared)
        a, b = self.cluster_of[i], self.cluster_of[j]
        a, b = np.minimum(a, b), np.maximum(a, b)
        order = np.argsort(d0, kind='stable')
        _, first = np.unique(a[order] * np.int64(len(self.sizes)) + b[order], return_index=True)
        closest = order[first]
        return ClusterPairs(a[closest], b[closest], d0[closest])


class VoronoiCells:
    """Points grouped by their nearest k-means centroid, for exact pruned neighbour searches."""

    def __init__(self, points: np.ndarray, points_per_cell: int, seed: int = 0):
        n, dim = points.shape
        num_cells = max(1, min(n // max(points_per_cell, 1), 8192))  # centroid gaps: num_cells^2 floats
        self.centroids = self._centroids(points, num_cells, seed)
        nearest_centroid = faiss.IndexFlatL2(dim)
        nearest_centroid.add(self.centroids)
        assignment = nearest_centroid.search(points, 1)[1][:, 0]
        self.order = np.argsort(assignment, kind='stable')
        self.starts = np.searchsorted(assignment[self.order], np.arange(num_cells + 1))
        self.points = points[self.order]  # cell by cell, so a cell is one contiguous block
        self.sq_norms = np.einsum('ij,ij->i', self.points, self.points)
        # float32 rounding of |x|^2 + |y|^2 - 2 x.y is below d * eps * max|x|^2; keep a 2x margin
        self.sq_tolerance = float(2 * dim * np.finfo(np.float32).eps * max(self.sq_norms.max(), 1e-12))
        self.centroid_sq = np.einsum('ij,ij->i', self.centroids, self.centroids)
        self.centroid_gap = np.sqrt(np.maximum(
            self.centroid_sq[:, None] + self.centroid_sq[None] - 2 * self.centroids @ self.centroids.T, 0))

    @staticmethod
    def _centroids(points, num_cells, seed):
        if num_cells == 1:
            return points.mean(0, keepdims=True, dtype=np.float64).astype(np.float32)
        kmeans = faiss.Kmeans(points.shape[1], num_cells, niter=8, seed=seed, min_points_per_centroid=1,
                              max_points_per_centroid=32)
        kmeans.train(points)
        return kmeans.centroids

    def nearest_in_cell(self, cluster_of, neighbours):
        """Image pairs (i, j): the ``neighbours`` closest other-cluster points of each i in its cell."""
        found_i, found_j = [], []
        for c, rows in self._row_chunks():
            cols = np.arange(self.starts[c], self.starts[c + 1])
            k = min(neighbours, len(cols) - 1)
            if k < 1:
                continue
            block = self._sq_distances(rows, cols)
            block[cluster_of[self.order[rows]][:, None] == cluster_of[self.order[cols]][None]] = np.inf
            nearest = np.argpartition(block, k - 1, axis=1)[:, :k].ravel()
            r = np.repeat(np.arange(len(rows)), k)
            valid = np.isfinite(block[r, nearest])
            found_i.append(self.order[rows[r[valid]]])
            found_j.append(self.order[cols[nearest[valid]]])
        return _concatenate(found_i), _concatenate(found_j)

    def _row_chunks(self, max_rows: int = 1024):
        """(cell, sorted-order row indices) in chunks, so no distance block grows with the cell size."""
        for c in range(len(self.centroids)):
            for start in range(self.starts[c], self.starts[c + 1], max_rows):
                yield c, np.arange(start, min(start + max_rows, self.starts[c + 1]))

    def pairs_within_radius(self, radius, cluster_of, max_block: int = 1 << 15):
        """All image pairs of different clusters with |x_i - x_j| <= max(radius[i], radius[j]) (+ margin).

        Each pair of cells in reach of one another is measured once (cell ``B >= A``), so the work is
        half of a search from every point; a negative radius means the point needs no partner itself.
        """
        radius = radius[self.order]
        margin = math.sqrt(self.sq_tolerance)
        reach = self._cells_in_reach(radius, margin)
        found_i, found_j = [], []
        for c, rows in self._row_chunks():
            for cols in self._column_blocks(np.flatnonzero(reach[c, c:]) + c, max_block):
                # screen with the largest radius of the block, then apply each pair's own radius
                block_radius = max(radius[rows].max(), radius[cols].max())
                if block_radius < 0:
                    continue
                sq = self._sq_distances(rows, cols)
                r, k = np.nonzero(sq <= (block_radius + margin) ** 2 + self.sq_tolerance)
                k += cols.start
                pair_radius = np.maximum(radius[rows[r]], radius[k])
                close = (pair_radius >= 0) & (sq[r, k - cols.start] <= (pair_radius + margin) ** 2
                                              + self.sq_tolerance)
                i, j = self.order[rows[r[close]]], self.order[k[close]]
                other = cluster_of[i] != cluster_of[j]
                found_i.append(i[other])
                found_j.append(j[other])
        return _concatenate(found_i), _concatenate(found_j)

    def _column_blocks(self, cells, max_block):
        """Slices of the cell-sorted points covering ``cells``: runs of adjacent cells are one slice."""
        run_breaks = np.flatnonzero(np.diff(cells) != 1) + 1
        for run in np.split(cells, run_breaks):
            begin, end = self.starts[run[0]], self.starts[run[-1] + 1]
            for start in range(begin, end, max_block):
                yield slice(start, min(start + max_block, end))

    def _cells_in_reach(self, radius, margin):
        """(cells, cells) symmetric mask: may a point of one cell lie within its radius of the other?

        Bisector bound: for x in cell A and y in cell B, |x - y| >= (|x - c_B|^2 - |x - c_A|^2) /
        (2 |c_A - c_B|); it is evaluated without the division, with float32 rounding margins.
        """
        num_cells = len(self.centroids)
        reach = np.eye(num_cells, dtype=bool)
        for c, rows in self._row_chunks():
            rows = rows[radius[rows] >= 0]
            if len(rows) == 0:
                continue
            to_centroids = np.maximum(self.sq_norms[rows, None] + self.centroid_sq[None]
                                      - 2 * self.points[rows] @ self.centroids.T, 0)
            beyond_bisector = to_centroids - to_centroids[:, c:c + 1] - 3 * self.sq_tolerance
            bound_reach = 2 * self.centroid_gap[c][None] * (radius[rows, None] + margin)
            reach[c] |= (beyond_bisector <= bound_reach).any(0)
        return reach | reach.T

    def _sq_distances(self, rows, cols):
        """Float32 squared distances ``|x|^2 + |y|^2 - 2 x.y``, computed in place in the product."""
        sq = self.points[rows] @ self.points[cols].T
        sq *= -2
        sq += self.sq_norms[rows, None]
        sq += self.sq_norms[cols][None]
        return sq


def _exact_distances(features, i, j, squared, max_elements: int = 1 << 24):
    """Eq. 9 ``d0 = sqrt((x_i - x_j)^T (x_i - x_j))`` in float64 (squared when asked), in chunks."""
    d0 = np.empty(len(i))
    step = max(1, max_elements // features.shape[1])
    for start in range(0, len(i), step):
        part = slice(start, start + step)
        diff = features[i[part]].astype(np.float64) - features[j[part]]
        d0[part] = np.einsum('ij,ij->i', diff, diff)
    return d0 if squared else np.sqrt(d0)


def _concatenate(arrays):
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


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
