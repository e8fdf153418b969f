"""Clustering from scratch at every stage: DBSCAN on the k-reciprocal Jaccard distance (beyond the paper).

The paper merges clusters bottom-up (Eq. 9-10, :mod:`~timm_gam.reid.clustering`): a union is never
undone, so an early mistake stays for the rest of the run, and every stage merges a fixed share of the
images whether or not the features support it. Today's label-free re-ID clusters the whole training set
again at the start of each stage instead, with DBSCAN on the Jaccard distance of k-reciprocal neighbour
sets, and leaves the images DBSCAN calls outliers out of the cluster loss (SpCL, Ge et al., NeurIPS
2020; Cluster Contrast, Dai et al., 2021). The number of clusters then follows from the features.

The distance is the re-ranking distance of Zhong et al. (CVPR 2017, Sec. 3), on L2-normalised
embeddings with the squared Euclidean distance ``d(p, g) = 2 - 2 cos(p, g)``:

* ``N(p, k)``: the k + 1 nearest images of p, p itself first;
* ``R(p, k) = {g in N(p, k) : p in N(g, k)}``, the k-reciprocal neighbours (Eq. 4);
* ``R*(p, k)``: R(p, k) joined by ``R(q, k/2)`` of each q in it that shares more than two thirds of its
  images with R(p, k) (Eq. 6);
* ``V_p``: weights ``exp(-d(p, g))`` on R*(p, k), normalised to sum to one (Eq. 7, normalised as the
  authors' code does), then averaged over ``N(p, k2)`` (local query expansion, Eq. 12);
* ``d_J(p, g) = 1 - sum min(V_p, V_g) / sum max(V_p, V_g)`` (Eq. 10-11).

k1 = 30, k2 = 6, eps = 0.6 and min_samples = 4 are SpCL's and Cluster Contrast's settings for
Market-1501.
"""
import faiss
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

__all__ = ['K1', 'K2', 'dbscan_clusters', 'dbscan_labels', 'k_reciprocal_jaccard_distance']

K1, K2 = 30, 6


def k_reciprocal_jaccard_distance(features: torch.Tensor, k1: int = K1, k2: int = K2) -> np.ndarray:
    """The (n, n) Jaccard distance of the images' k-reciprocal neighbour sets (Zhong et al., 2017)."""
    x = F.normalize(torch.as_tensor(features).float(), dim=1).numpy()
    n = len(x)
    k1, k2 = min(k1, n - 1), min(k2, n)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nearest = index.search(x, k1 + 1)
    nearest[:, 0] = np.arange(n)  # p first in N(p, k) even where a duplicate image ties with it

    def reciprocal(k: int) -> list[np.ndarray]:
        candidates = nearest[:, :k + 1]
        mutual = (nearest[candidates, :k + 1] == np.arange(n)[:, None, None]).any(axis=2)
        return [row[keep] for row, keep in zip(candidates, mutual, strict=True)]

    reciprocal_k1, reciprocal_half = reciprocal(k1), reciprocal(int(round(k1 / 2)))
    weights = np.zeros((n, n), dtype=np.float32)
    for p in range(n):
        own = reciprocal_k1[p]
        expanded = [own] + [reciprocal_half[q] for q in own
                            if len(np.intersect1d(reciprocal_half[q], own)) > 2 / 3 * len(reciprocal_half[q])]
        members = np.unique(np.concatenate(expanded))
        weight = np.exp(-(2 - 2 * x[members] @ x[p]))
        weights[p, members] = weight / weight.sum()
    expanded = np.stack([weights[nearest[p, :k2]].mean(axis=0) for p in range(n)])

    # sum_k min(V_p, V_g) through each column's non-zero rows: V is sparse, the pairs sharing a column few
    overlap = np.zeros((n, n), dtype=np.float32)
    for column in expanded.T:
        rows = np.flatnonzero(column)
        overlap[np.ix_(rows, rows)] += np.minimum.outer(column[rows], column[rows])
    # every V_p sums to one, so sum max(V_p, V_g) = 2 - sum min(V_p, V_g)
    distance = 1 - overlap / (2 - overlap)
    np.fill_diagonal(distance, 0)
    return np.clip(distance, 0, 1)


def dbscan_labels(distance: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    """Cluster labels 0..C-1 of DBSCAN (scikit-learn) on a precomputed ``distance``; -1 marks the
    outliers, which no cluster takes."""
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric='precomputed').fit_predict(distance)
    return labels.astype(np.int64)


def dbscan_clusters(features: torch.Tensor, eps: float = 0.6, min_samples: int = 4, k1: int = K1,
                    k2: int = K2) -> np.ndarray:
    """:func:`dbscan_labels` on the :func:`k_reciprocal_jaccard_distance` of ``features``."""
    return dbscan_labels(k_reciprocal_jaccard_distance(features, k1, k2), eps, min_samples)
