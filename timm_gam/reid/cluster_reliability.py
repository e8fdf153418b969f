"""Which of DBSCAN's clusters to trust: SpCL's self-paced reliability criterion (beyond the paper).

A cluster whose images are one person tends to stay as it is when DBSCAN's eps changes a little; one that
joins two people, or hangs on by a chain of images, merges with others when eps grows or falls apart when
it shrinks. SpCL (Ge et al., NeurIPS 2020, Sec. 3.2) measures both on the clusterings at ``eps - gap``
(tight) and ``eps + gap`` (loose) of the same distances, with the Intersection-over-Union of the clusters
that hold an image ``x_i``, where ``I(x_i)`` is its cluster at eps and an outlier is a cluster of its own:

* independence ``R_indep(x_i) = |I(x_i) ∩ I_loose(x_i)| / |I(x_i) ∪ I_loose(x_i)|`` (Eq. 5): high when the
  cluster does not merge with others as eps loosens;
* compactness ``R_comp(x_i) = |I(x_i) ∩ I_tight(x_i)| / |I(x_i) ∪ I_tight(x_i)|`` (Eq. 6): high when the
  image stays with the cluster as eps tightens.

As SpCL's code applies them, a cluster is kept where the best independence of its images reaches the
threshold, and of a kept cluster only the images with its best compactness stay in it (those of its
largest part under the tight eps); every other image becomes an outlier, as does a cluster left with
one image. The independence threshold is set once, at the first clustering, to the value that 90% of
the clusters of two or more images reach, and kept for the rest of the run.
"""
import numpy as np

__all__ = ['INDEPENDENCE_QUANTILE', 'reliability', 'reliable_clusters']

INDEPENDENCE_QUANTILE = 0.9  # SpCL's code: the 10% least independent clusters at the first clustering go


def _with_outliers_as_singletons(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64).copy()
    outliers = labels < 0
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(outliers.sum())
    return labels


def reliability(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per image, the IoU of its cluster under ``labels`` and its cluster under ``other`` (Eq. 5-6); -1
    labels are clusters of one image."""
    a, b = _with_outliers_as_singletons(labels), _with_outliers_as_singletons(other)
    size_a, size_b = np.bincount(a)[a], np.bincount(b)[b]
    _, pair, both = np.unique(np.stack([a, b]), axis=1, return_inverse=True, return_counts=True)
    shared = both[pair.ravel()]  # images in both of x_i's clusters: those with x_i's pair of labels
    return shared / (size_a + size_b - shared)


def reliable_clusters(labels: np.ndarray, tight: np.ndarray, loose: np.ndarray,
                      independence_threshold: float | None = None) -> tuple[np.ndarray, float]:
    """DBSCAN's ``labels`` at eps with the unreliable images made outliers, as labels 0..C-1 and -1; and
    the independence threshold, computed from these clusters where ``independence_threshold`` is None
    (the run's first clustering) and returned unchanged otherwise.

    ``tight`` and ``loose`` are DBSCAN's labels for the same distances at ``eps - gap`` and ``eps + gap``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    clustered = labels >= 0
    independence, compactness = reliability(labels, loose), reliability(labels, tight)
    num_clusters = labels.max(initial=-1) + 1
    best_independence = np.full(num_clusters, -np.inf)
    best_compactness = np.full(num_clusters, -np.inf)
    np.maximum.at(best_independence, labels[clustered], independence[clustered])
    np.maximum.at(best_compactness, labels[clustered], compactness[clustered])
    if independence_threshold is None:
        several = np.bincount(labels[clustered], minlength=num_clusters) > 1
        values = np.sort(best_independence[several])[::-1]  # most independent first
        at = min(len(values) - 1, round(len(values) * INDEPENDENCE_QUANTILE))
        independence_threshold = float(values[at]) if len(values) else 0.0
    keep = clustered.copy()
    keep[clustered] = ((best_independence[labels[clustered]] >= independence_threshold)
                       & (compactness[clustered] >= best_compactness[labels[clustered]]))
    kept = np.where(keep, labels, -1)
    sizes = np.bincount(kept[keep], minlength=num_clusters)
    kept[keep] = np.where(sizes[kept[keep]] > 1, kept[keep], -1)
    # clusters renumbered 0..C-1 in the order of their old labels
    _, renumbered = np.unique(kept[kept >= 0], return_inverse=True)
    kept[kept >= 0] = renumbered
    return kept, independence_threshold
