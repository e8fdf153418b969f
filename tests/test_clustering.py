"""Bottom-up merging (Eq. 9-10): hand-computed merge orders for both the dense statement of the rule and
the fast exact path, and merge-for-merge agreement of the two on many small random problems."""
import functools
import warnings

import numpy as np
import pytest
import torch

from timm_gam.reid.clustering import balanced_cost, cluster_purity, dense_merge, merge_clusters
from timm_gam.reid.pair_search import LowerBoundProjection, PairSearch


def dense_reference(features, labels, num_merges, size_penalty, distance='euclidean', size_update='step',
                    max_cluster_size=None):
    """The library's statement of the rule on the full distance matrix: (labels, merge costs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'only', UserWarning)  # the size cap may forbid some merges
        result = dense_merge(features, labels, num_merges, size_penalty, distance=distance,
                             size_update=size_update, max_cluster_size=max_cluster_size)
    return result.labels, result.merge_costs


def random_problem(rng, n, dim, existing_clusters):
    features = rng.normal(size=(n, dim))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = rng.integers(0, n // 2, n) * 7 - 3 if existing_clusters else rng.permutation(n) + 100
    return features, labels


@pytest.mark.parametrize('distance', ['euclidean', 'sqeuclidean'])
@pytest.mark.parametrize('size_update', ['step', 'refresh'])
def test_matches_dense_reference_merge_for_merge(distance, size_update):
    rng = np.random.default_rng(0)
    for case in range(24):
        n = int(rng.integers(6, 50))
        features, labels = random_problem(rng, n, int(rng.integers(2, 12)), existing_clusters=case % 2 == 1)
        num_clusters = len(np.unique(labels))
        num_merges = int(rng.integers(1, num_clusters))
        penalty = float(rng.choice([0.0, 0.005, 0.05]))
        cap = [None, 3, 6][case % 3]
        expected_labels, expected_costs = dense_reference(features, labels, num_merges, penalty, distance,
                                                          size_update, cap)
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'only', UserWarning)  # the size cap may forbid some merges
            result = merge_clusters(features, labels, num_merges, penalty, distance=distance,
                                     size_update=size_update, max_cluster_size=cap,
                                     points_per_cell=[256, 4][case % 2], with_costs=True)
        np.testing.assert_array_equal(result.labels, expected_labels, err_msg=f'case {case}')
        np.testing.assert_allclose(result.merge_costs, expected_costs, rtol=1e-12, err_msg=f'case {case}')
        assert result.merge_costs.size == 0 or result.merge_costs[-1] <= result.threshold


def low_rank_problem(rng, n, dim=64, intrinsic_dim=5, noise=0.02):
    """Unit embeddings concentrated on a few directions, as learned re-ID embeddings are."""
    latent = rng.normal(size=(n, intrinsic_dim)) @ rng.normal(size=(intrinsic_dim, dim))
    features = latent + noise * rng.normal(size=(n, dim))
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_projection_bounds_every_distance_from_below():
    rng = np.random.default_rng(1)
    features = low_rank_problem(rng, 300)
    projection = LowerBoundProjection.fit(features)
    assert projection.basis is not None and projection.basis.shape[1] < 64  # the concentrated case projects
    z = projection(features).astype(np.float64)
    true = np.linalg.norm(features[:, None] - features[None], axis=-1)
    bound = np.linalg.norm(z[:, None] - z[None], axis=-1)
    assert (bound <= true + 1e-6).all()
    assert np.median(bound / np.maximum(true, 1e-12)) > 0.9  # and tight where the energy is
    isotropic = random_problem(rng, 300, 64, existing_clusters=False)[0]
    assert LowerBoundProjection.fit(isotropic).basis is None  # nothing to gain: the features as they are


@pytest.mark.parametrize('size_update', ['step', 'refresh'])
def test_projected_search_matches_dense_reference(size_update):
    rng = np.random.default_rng(2)
    for case in range(4):
        features = low_rank_problem(rng, 120)
        labels = rng.permutation(120) if case % 2 == 0 else rng.integers(0, 45, 120)
        num_merges = int(rng.integers(5, 25))
        penalty = [0.005, 0.05][case // 2]
        expected_labels, expected_costs = dense_reference(features, labels, num_merges, penalty,
                                                          size_update=size_update)
        result = merge_clusters(features, labels, num_merges, penalty, size_update=size_update,
                                 points_per_cell=16, with_costs=True)
        np.testing.assert_array_equal(result.labels, expected_labels, err_msg=f'case {case}')
        np.testing.assert_allclose(result.merge_costs, expected_costs, rtol=1e-12, err_msg=f'case {case}')


def test_threshold_widens_until_certified(monkeypatch):
    # Five pairs of tight blobs, the pairs far apart, each blob an existing cluster. The threshold is
    # guessed from each image's nearest other-cluster images, which only join blobs within a pair:
    # 5 unions, one short of 6, so the search must widen until the sixth union certifies.
    rng = np.random.default_rng(4)
    pair_centres = np.repeat(10 * np.eye(5, 3) + np.arange(5)[:, None], 2, axis=0)
    blob_centres = pair_centres + np.tile([[0.0, 0, 0], [0.5, 0, 0]], (5, 1))
    features = np.repeat(blob_centres, 8, axis=0) + 0.01 * rng.normal(size=(80, 3))
    labels = np.repeat(np.arange(10), 8)
    searches = []
    original = PairSearch.pairs_within
    monkeypatch.setattr(PairSearch, 'pairs_within',
                        lambda self, threshold: searches.append(threshold) or original(self, threshold))
    result = merge_clusters(features, labels, 6, 0.005, with_costs=True)
    expected_labels, expected_costs = dense_reference(features, labels, 6, 0.005)
    assert len(searches) >= 2 and searches == sorted(searches)
    np.testing.assert_array_equal(result.labels, expected_labels)
    np.testing.assert_allclose(result.merge_costs, expected_costs, rtol=1e-12)


def line(*xs):
    return np.array(xs, dtype=np.float64)[:, None]


# both implementations of one merging step, each returning a MergeResult
BOTH = pytest.mark.parametrize('merge', [functools.partial(merge_clusters, with_costs=True), dense_merge],
                               ids=['merge_clusters', 'dense_merge'])


@BOTH
def test_balance_term_changes_which_pair_merges_first(merge):
    # A = {0, 0.05} (an existing cluster of 2), B = {0.15}, C = {1.0}, D = {1.11}:
    # lambda = 0:    A-B costs 0.10 < C-D 0.11, so A and B merge.
    # lambda = 0.02: A-B costs 0.10 + 0.02 * 3 = 0.16 > C-D 0.11 + 0.02 * 2 = 0.15, so C and D merge.
    features, labels = line(0.0, 0.05, 0.15, 1.0, 1.11), np.array([0, 0, 1, 2, 3])
    assert merge(features, labels, 1, 0.0).labels.tolist() == [0, 0, 0, 1, 2]
    result = merge(features, labels, 1, 0.02)
    assert result.labels.tolist() == [0, 0, 1, 2, 2]
    assert result.merge_costs == pytest.approx([0.15])


@BOTH
def test_step_sizes_chain_while_refresh_and_cap_do_not(merge):
    # Singletons 0, 1, 2.05 and 20, 21.12 with lambda 0.1, two merges. Step-start costs:
    # (0,1) 1.2 < (1,2.05) 1.25 < (20,21.12) 1.32, so BUC chains {0, 1, 2.05}. Refreshed after the
    # first union, (1,2.05) costs 1.05 + 0.1 * 3 = 1.35 > 1.32; a size cap of 2 forbids it outright.
    features, labels = line(0.0, 1.0, 2.05, 20.0, 21.12), np.arange(5)
    assert merge(features, labels, 2, 0.1).labels.tolist() == [0, 0, 0, 1, 2]
    assert merge(features, labels, 2, 0.1, size_update='refresh').labels.tolist() == [0, 0, 1, 2, 2]
    assert merge(features, labels, 2, 0.1, max_cluster_size=2).labels.tolist() == [0, 0, 1, 2, 2]


@BOTH
def test_cluster_distance_is_single_linkage_and_sqeuclidean_option(merge):
    # clusters {0, 3} and {3.5}: closest images are 0.5 apart although the centroid is 2 away
    features, labels = line(0.0, 3.0, 3.5, 10.0), np.array([5, 5, 9, 7])
    result = merge(features, labels, 1, 0.0, distance='sqeuclidean')
    assert result.labels.tolist() == [0, 0, 0, 1] and result.merge_costs == pytest.approx([0.25])


def test_partition_invariant_to_image_order_and_accepts_torch():
    rng = np.random.default_rng(3)
    features, labels = random_problem(rng, 300, 16, existing_clusters=False)
    perm = rng.permutation(300)
    merged = merge_clusters(torch.from_numpy(features).float(), torch.from_numpy(labels), 40,
                            points_per_cell=16)
    merged_perm = merge_clusters(features[perm].astype(np.float32), labels[perm], 40, points_per_cell=16)
    assert merged.dtype == np.int64 and merged.max() + 1 == 300 - 40
    assert partition(merged) == partition(merged_perm, rows=perm)


def partition(labels, rows=None):
    rows = np.arange(len(labels)) if rows is None else rows
    groups = {}
    for row, label in zip(rows, labels, strict=True):
        groups.setdefault(label, set()).add(int(row))
    return {frozenset(g) for g in groups.values()}


@BOTH
def test_impossible_merges_warn_and_bad_input_is_named(merge):
    features, labels = line(0.0, 1.0, 2.0, 3.0), np.arange(4)
    with pytest.warns(UserWarning, match='only 2 of 3 merges'):
        merged = merge(features, labels, 3, max_cluster_size=2)
    assert len(np.unique(merged.labels)) == 2
    with pytest.raises(ValueError, match='num_merges'):
        merge(features, labels, 4)
    with pytest.raises(ValueError, match='labels must be 4 integers'):
        merge(features, labels[:3], 1)
    with pytest.raises(ValueError, match='distance'):
        merge(features, labels, 1, distance='cosine')


def test_balanced_cost_is_eq10():
    assert balanced_cost(0.3, 2, 5, 0.005) == pytest.approx(0.3 + 0.005 * 7)


def test_cluster_purity():
    # cluster 0 = ids (1, 1, 2) -> 2 right; cluster 1 = ids (3, 4) -> 1 right (tie counts once)
    assert cluster_purity([0, 0, 0, 1, 1], [1, 1, 2, 3, 4]) == pytest.approx(3 / 5)
    assert cluster_purity(np.arange(4), [7, 7, 8, 8]) == 1.0
