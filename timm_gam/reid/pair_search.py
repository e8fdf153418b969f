"""Exact search for the inter-cluster image pairs whose merging cost is at most a threshold.

The merge rules (:mod:`timm_gam.reid.clustering`) need every such pair, without an n x n matrix. They
are found by an exact range search in a low-dimensional space whose distances bound the real ones
from below (a PCA projection plus the residual's norm, :class:`LowerBoundProjection`), over Voronoi
cells that a point opens only when the bisector bound says they may hold a partner
(:class:`VoronoiCells`); every pair found is then measured exactly, in float64 from the features, so
the projection and the cells decide the speed, never the result.
"""
import math
from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ['ClusterPairs', 'LowerBoundProjection', 'PairSearch', 'VoronoiCells']


@dataclass
class ClusterPairs:
    """Inter-cluster edges ``a < b`` with the single-linkage image distance ``d0`` between them."""
    a: np.ndarray
    b: np.ndarray
    d0: np.ndarray

    def __len__(self):
        return len(self.d0)


class PairSearch:
    """Finds the inter-cluster image pairs whose ``cost`` is at most a threshold, exactly.

    ``cost(d0, size_a, size_b)`` prices an image pair from its distance ``d0`` (Eq. 9, squared for
    ``distance='sqeuclidean'``) and the sizes of its two clusters. It must be ``d0`` plus a penalty
    that depends on ``size_a + size_b`` alone and does not fall as it grows (Eq. 10's balance term):
    that is what turns a threshold on the cost into a distance radius for each image.
    """

    def __init__(self, features, cluster_of, sizes, cost, distance, points_per_cell):
        self.features, self.cluster_of, self.sizes = features, cluster_of, sizes
        self.cost, self.squared = cost, distance == 'sqeuclidean'
        self.cells = VoronoiCells(LowerBoundProjection.fit(features)(features), points_per_cell)
        max_norm = max(float(np.sqrt(np.einsum('ij,ij->i', chunk, chunk, dtype=np.float64).max()))
                       for chunk in _row_chunks(features))
        max_d0 = (2 * max_norm) ** 2 if self.squared else 2 * max_norm
        self.largest_cost = float(cost(max_d0, 2 * sizes.max(), 0))
        self.smallest_penalty = float(cost(0.0, 2 * sizes.min(), 0))

    def nearby_pairs(self, neighbours: int = 3) -> ClusterPairs:
        """A cheap subset of pairs (nearest neighbours within each cell) to guess a threshold from."""
        i, j = self.cells.nearest_in_cell(self.cluster_of, neighbours)
        return self._cluster_pairs(i, j, _exact_distances(self.features, i, j, self.squared))

    def pairs_within(self, threshold: float) -> ClusterPairs:
        """Every inter-cluster pair with cost <= ``threshold`` (single linkage per cluster pair)."""
        own_penalty = self.cost(0.0, self.sizes[self.cluster_of], self.sizes.min())
        radius = threshold - own_penalty
        radius = np.sqrt(np.maximum(radius, 0)) if self.squared else radius
        radius[threshold - own_penalty < 0] = -1.0  # no partner can be cheap enough
        found_i, found_j, found_d0 = [], [], []
        for i, j in self.cells.pairs_within_radius(radius):
            other = self.cluster_of[i] != self.cluster_of[j]
            i, j = i[other], j[other]
            d0 = _exact_distances(self.features, i, j, self.squared)
            # measured block by block, so memory holds the pairs within the threshold, not the candidates
            cost = self.cost(d0, self.sizes[self.cluster_of[i]], self.sizes[self.cluster_of[j]])
            within = cost <= threshold
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
