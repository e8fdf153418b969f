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
exact range search in a low-dimensional space whose distances bound the real ones from below (a PCA
projection plus the residual's norm), over Voronoi cells that a point opens only when the bisector
bound says they may hold a partner; every pair found is then measured exactly. The merge process
then runs on those pairs. If it
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

    The search runs in a low-dimensional space whose distances never exceed the real ones
    (:class:`LowerBoundProjection`), over Voronoi cells that are opened only when the bisector bound
    says they may hold a partner (:class:`VoronoiCells`). Every pair that passes is then measured
    exactly, in float64 from the features, and kept if its cost is within the threshold; so the
    projection and the cells decide the speed, never the result.
    """

    def __init__(self, features, cluster_of, sizes, size_penalty, distance, points_per_cell):
        self.features, self.cluster_of, self.sizes = features, cluster_of, sizes
        self.size_penalty, self.squared = size_penalty, distance == 'sqeuclidean'
        self.cells = VoronoiCells(LowerBoundProjection.fit(features)(features), points_per_cell)
        max_norm = max(float(np.sqrt(np.einsum('ij,ij->i', chunk, chunk, dtype=np.float64).max()))
                       for chunk in _row_chunks(features))
        max_d0 = (2 * max_norm) ** 2 if self.squared else 2 * max_norm
        self.largest_cost = float(balanced_cost(max_d0, 2 * sizes.max(), 0, size_penalty))
        self.smallest_penalty = float(balanced_cost(0.0, 2 * sizes.min(), 0, size_penalty))

    def nearby_pairs(self, neighbours: int = 3) -> ClusterPairs:
        """A cheap subset of pairs (nearest neighbours within each cell) to guess a threshold from."""
        i, j = self.cells.nearest_in_cell(self.cluster_of, neighbours)
        return self._cluster_pairs(i, j, _exact_distances(self.features, i, j, self.squared))

    def pairs_within(self, threshold: float) -> ClusterPairs:
        """Every inter-cluster pair with Eq. 10 cost <= ``threshold`` (single linkage per cluster pair)."""
        own_penalty = balanced_cost(0.0, self.sizes[self.cluster_of], self.sizes.min(), self.size_penalty)
        radius = threshold - own_penalty
        radius = np.sqrt(np.maximum(radius, 0)) if self.squared else radius
        radius[threshold - own_penalty < 0] = -1.0  # no partner can be cheap enough
        found_i, found_j, found_d0 = [], [], []
        for i, j in self.cells.pairs_within_radius(radius):
            other = self.cluster_of[i] != self.cluster_of[j]
            i, j = i[other], j[other]
            d0 = _exact_distances(self.features, i, j, self.squared)
            # measured block by block, so memory holds the pairs within the threshold, not the candidates
            within = balanced_cost(d0, self.sizes[self.cluster_of[i]], self.sizes[self.cluster_of[j]],
                                   self.size_penalty) <= threshold
            found_i.append(i[within])
            found_j.append(j[within])
            found_d0.append(d0[within])
        return self._cluster_pairs(_concatenate(found_i), _concatenate(found_j),
                                   np.concatenate(found_d0) if found_d0 else np.empty(0))

    def grown_threshold(self, threshold) -> float:
        """Doubles the distance part of the threshold, up to the cost that admits every pair."""
        least_growth = 1e-3 * (self.largest_cost - self.smallest_penalty)
        distance_part = max(threshold - self.smallest_penalty, least_growth)
        return min(self.smallest_penalty + 2 * distance_part, self.largest_cost)

    def _cluster_pairs(self, i, j, d0) -> ClusterPairs:
        """Image pairs with their exact ``d0``, reduced to the smallest one per cluster pair."""
        a, b = self.cluster_of[i], self.cluster_of[j]
        a, b = np.minimum(a, b), np.maximum(a, b)
        order = np.argsort(d0, kind='stable')
        _, first = np.unique(a[order] * np.int64(len(self.sizes)) + b[order], return_index=True)
        closest = order[first]
        return ClusterPairs(a[closest], b[closest], d0[closest])


class LowerBoundProjection:
    """Maps ``x`` to ``z = [Q^T (x - m), |(I - Q Q^T)(x - m)|]`` with ``|z(x) - z(y)| <= |x - y|``.

    ``Q`` (d x p, orthonormal) holds the principal directions of a sample of the features. Splitting
    ``x - y`` into its part in span(Q) and the residual ``r``, ``|x - y|^2 = |Q^T (x - y)|^2 + |r_x - r_y|^2``
    and ``|r_x - r_y| >= | |r_x| - |r_y| |``, so distances in the (p + 1)-dimensional space bound the
    real ones from below: a range search there misses no pair, at p / d of the cost. Re-ID embeddings
    concentrate on few directions, so the bound is tight; where the sample shows no such
    concentration (isotropic features), the features are used as they are (``basis`` None).
    """
    WIDTHS = (16, 32, 64, 128)
    # a wider projection is cheap next to the candidates a loose bound lets through, so ask for 80%
    MIN_ENERGY = 0.8

    def __init__(self, mean: np.ndarray, basis):
        self.mean, self.basis = mean, basis

    @classmethod
    def fit(cls, features: np.ndarray, sample_size: int = 1024, seed: int = 0) -> 'LowerBoundProjection':
        """Principal directions of a random sample, as few as keep ``MIN_ENERGY`` of its variance."""
        n, dim = features.shape
        mean = features.mean(0, dtype=np.float64)
        rows = np.random.default_rng(seed).choice(n, min(n, sample_size), replace=False)
        centred = features[np.sort(rows)].astype(np.float64) - mean
        _, singular, directions = np.linalg.svd(centred, full_matrices=False)
        kept_energy = np.cumsum(singular ** 2) / max((singular ** 2).sum(), np.finfo(float).tiny)
        for width in cls.WIDTHS:
            if width <= dim // 4 and width <= len(singular) and kept_energy[width - 1] >= cls.MIN_ENERGY:
                return cls(mean, np.linalg.qr(directions[:width].T)[0])  # QR: orthonormal to rounding
        return cls(mean, None)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(n, p + 1) float32 points whose distances bound the features' distances from below."""
        width = features.shape[1] if self.basis is None else self.basis.shape[1] + 1
        points = np.empty((len(features), width), dtype=np.float32)
        start = 0
        for chunk in _row_chunks(features):
            points[start:start + len(chunk)] = self._project(chunk.astype(np.float64) - self.mean)
            start += len(chunk)
        return points

    def _project(self, centred):
        if self.basis is None:
            return centred  # centred, so float32 rounding is relative to the spread, not the offset
        projected = centred @ self.basis
        residual_sq = np.einsum('ij,ij->i', centred, centred) - np.einsum('ij,ij->i', projected, projected)
        return np.hstack([projected, np.sqrt(np.maximum(residual_sq, 0))[:, None]])


class VoronoiCells:
    """Points grouped by their nearest k-means centroid, for exact pruned range searches.

    For a point ``x`` of cell ``A`` and any point ``y`` of cell ``B``, ``|x - y|`` is at least the
    distance from ``x`` to the bisector of the two centroids, ``(|x - c_B|^2 - |x - c_A|^2) / (2 |c_A -
    c_B|)``; each point opens only the cells this bound leaves in its reach. Float32 distances filter
    with a safety margin covering their rounding.
    """

    def __init__(self, points: np.ndarray, points_per_cell: int, seed: int = 0):
        n, dim = points.shape
        num_cells = max(1, min(n // max(points_per_cell, 1), 4096))  # centroid gaps: num_cells^2 doubles
        self.centroids = self._centroids(points, num_cells, seed)
        nearest_centroid = faiss.IndexFlatL2(dim)
        nearest_centroid.add(self.centroids)
        assignment = nearest_centroid.search(points, 1)[1][:, 0]
        self.order = np.argsort(assignment, kind='stable')
        self.starts = np.searchsorted(assignment[self.order], np.arange(num_cells + 1))
        self.cell_of = assignment[self.order]
        self.points = points[self.order]  # cell by cell, so a cell is one contiguous block
        self.sq_norms = np.einsum('ij,ij->i', self.points, self.points)
        # float32 rounding of |x|^2 + |y|^2 - 2 x.y is below d * eps * max|x|^2; keep a 2x margin
        self.sq_tolerance = float(2 * dim * np.finfo(np.float32).eps * max(self.sq_norms.max(), 1e-12))
        self.centroid_sq = np.einsum('ij,ij->i', self.centroids, self.centroids)
        centroids = self.centroids.astype(np.float64)  # the gaps scale the radius: keep them accurate
        sq = np.einsum('ij,ij->i', centroids, centroids)
        self.centroid_gap = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * centroids @ centroids.T, 0))

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
        for c in range(len(self.centroids)):
            cols = np.arange(self.starts[c], self.starts[c + 1])
            k = min(neighbours, len(cols) - 1)
            if k < 1:
                continue
            for rows in _slices(self.starts[c], self.starts[c + 1], 1024):
                rows = np.arange(rows.start, rows.stop)
                block = self._sq_distances(rows, cols)
                block[cluster_of[self.order[rows]][:, None] == cluster_of[self.order[cols]][None]] = np.inf
                nearest = np.argpartition(block, k - 1, axis=1)[:, :k].ravel()
                r = np.repeat(np.arange(len(rows)), k)
                valid = np.isfinite(block[r, nearest])
                found_i.append(self.order[rows[r[valid]]])
                found_j.append(self.order[cols[nearest[valid]]])
        return _concatenate(found_i), _concatenate(found_j)

    def pairs_within_radius(self, radius, max_rows: int = 2048):
        """Yields image pairs (i, j), chunk by chunk, including every pair with |x_i - x_j| <=
        max(radius[i], radius[j]) (and some a little farther: the float32 margin).

        Each pair is searched once, from the point in the lower-numbered cell, with the larger of its
        own radius and the largest radius in the other cell; a negative radius needs no partner.
        """
        radius = radius[self.order]
        margin = math.sqrt(self.sq_tolerance)
        largest_in_cell = np.full(len(self.centroids), -1.0)
        np.maximum.at(largest_in_cell, self.cell_of, radius)
        for rows in _slices(0, len(radius), max_rows):
            rows = np.arange(rows.start, rows.stop)
            reach = np.maximum(radius[rows, None], largest_in_cell[None])  # (rows, cells)
            reachable = (reach >= 0) & self._within_bisector_bound(rows, reach + margin)
            reachable &= self.cell_of[rows, None] <= np.arange(len(self.centroids))[None]
            found_i, found_j = [], []
            for cell, group_rows in _rows_by_cell(reachable, rows):
                cols = slice(self.starts[cell], self.starts[cell + 1])
                sq = self._sq_distances(group_rows, cols)
                pair_reach = np.maximum(radius[group_rows, None], radius[None, cols])
                r, k = np.nonzero((pair_reach >= 0) & (sq <= (pair_reach + margin) ** 2 + self.sq_tolerance))
                found_i.append(self.order[group_rows[r]])
                found_j.append(self.order[cols.start + k])
            yield _concatenate(found_i), _concatenate(found_j)

    def _within_bisector_bound(self, rows, reach):
        """(rows, cells) mask: may a point of the cell lie within ``reach`` of the row's point?

        Bisector bound ``(|x - c_B|^2 - |x - c_A|^2) <= 2 |c_A - c_B| |x - y|``, without the division;
        three float32 tolerances cover the two distances to centroids and the cell assignment.
        """
        to_centroids = self.points[rows] @ self.centroids.T
        to_centroids *= -2
        to_centroids += self.sq_norms[rows, None]
        to_centroids += self.centroid_sq[None]
        own = self.cell_of[rows]
        beyond_bisector = to_centroids - to_centroids[np.arange(len(rows)), own][:, None]
        return beyond_bisector <= 2 * self.centroid_gap[own] * reach + 3 * self.sq_tolerance

    def _sq_distances(self, rows, cols):
        """Float32 squared distances ``|x|^2 + |y|^2 - 2 x.y``, computed in place in the product."""
        sq = self.points[rows] @ self.points[cols].T
        sq *= -2
        sq += self.sq_norms[rows, None]
        sq += self.sq_norms[cols][None]
        return sq


def _rows_by_cell(reachable, rows):
    """(cell, rows that reach it) for every cell reached in a (rows, cells) mask."""
    cells, members = np.nonzero(reachable.T)  # cell-major, so each cell's rows are one run
    if len(cells) == 0:
        return []
    breaks = np.flatnonzero(np.diff(cells)) + 1
    return zip(cells[np.r_[0, breaks]].tolist(), np.split(rows[members], breaks), strict=True)


def _exact_distances(features, i, j, squared, max_elements: int = 1 << 20):
    """Eq. 9 ``d0 = sqrt((x_i - x_j)^T (x_i - x_j))`` in float64 (squared when asked), in chunks."""
    d0 = np.empty(len(i))
    step = max(1, max_elements // features.shape[1])
    for start in range(0, len(i), step):
        part = slice(start, start + step)
        diff = features[i[part]].astype(np.float64) - features[j[part]]
        d0[part] = np.einsum('ij,ij->i', diff, diff)
    return d0 if squared else np.sqrt(d0)


def _row_chunks(array, rows: int = 65536):
    """Consecutive row blocks, so float64 working copies stay small at a million images."""
    for part in _slices(0, len(array), rows):
        yield array[part]


def _slices(begin, end, step):
    return [slice(start, min(start + step, end)) for start in range(begin, end, step)]


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
