"""DBSCAN on the k-reciprocal Jaccard distance, against the definitions of Zhong et al. (2017) written
out with Python sets on a dense distance matrix."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timm_gam.reid.density_clustering import dbscan_clusters, k_reciprocal_jaccard_distance


def jaccard_by_definition(features: torch.Tensor, k1: int, k2: int) -> np.ndarray:
    x = F.normalize(features.double(), dim=1).numpy()
    n = len(x)
    d = 2 - 2 * x @ x.T
    order = np.argsort(d, axis=1, kind='stable')

    def neighbours(p, k):  # N(p, k): p and its k nearest
        return set(order[p, :k + 1].tolist())

    def reciprocal(p, k):  # R(p, k), Eq. 4
        return {g for g in neighbours(p, k) if p in neighbours(g, k)}

    v = np.zeros((n, n))
    for p in range(n):
        own = reciprocal(p, k1)
        expanded = set(own)
        for q in own:  # Eq. 6
            theirs = reciprocal(q, round(k1 / 2))
            if len(theirs & own) > 2 / 3 * len(theirs):
                expanded |= theirs
        members = sorted(expanded)
        v[p, members] = np.exp(-d[p, members])  # Eq. 7
        v[p] /= v[p].sum()
    v = np.stack([v[order[p, :k2]].mean(axis=0) for p in range(n)])  # local query expansion, Eq. 12
    jaccard = np.zeros((n, n))
    for p in range(n):
        for g in range(n):
            jaccard[p, g] = 1 - np.minimum(v[p], v[g]).sum() / np.maximum(v[p], v[g]).sum()  # Eq. 10-11
    return jaccard


def blobs(num_blobs: int, per_blob: int, spread: float, seed: int = 0, dim: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_blobs, dim, generator=generator)
    return centres.repeat_interleave(per_blob, 0) + spread * torch.randn(num_blobs * per_blob, dim,
                                                                           generator=generator)


@pytest.mark.parametrize('k1, k2, spread', [(6, 2, 0.3), (10, 3, 0.6), (20, 6, 1.0)])
def test_the_jaccard_distance_follows_the_definitions(k1, k2, spread):
    features = blobs(6, 9, spread)
    fast = k_reciprocal_jaccard_distance(features, k1, k2)
    assert fast.shape == (54, 54)
    np.testing.assert_allclose(fast, jaccard_by_definition(features, k1, k2), atol=1e-5)


def test_dbscan_finds_the_blobs_and_leaves_a_stray_image_out():
    features = torch.cat([blobs(5, 12, 0.2, seed=1), torch.randn(1, 16)])
    # k2 = 1: no query expansion, which would lend the stray its nearest blob's neighbour sets
    labels = dbscan_clusters(features, eps=0.6, min_samples=4, k1=11, k2=1)
    assert labels[-1] == -1  # the stray image: no cluster takes it
    blob_of = np.arange(60) // 12
    assert len(set(labels[:60])) == 5
    for blob in range(5):  # each blob one cluster, and no two blobs together
        assert len(set(labels[:60][blob_of == blob])) == 1
