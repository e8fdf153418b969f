"""SpCL's reliability criterion against its definitions written out with Python sets, image by image."""
import numpy as np
import pytest
from sklearn.cluster import DBSCAN
from test_time_budget import minute_per_step  # noqa: F401

from timm_gam.reid.cluster_reliability import reliability, reliable_clusters


def members(labels, i):
    """The images of x_i's cluster; an outlier (-1) is a cluster of its own."""
    return {i} if labels[i] < 0 else {j for j, label in enumerate(labels) if label == labels[i]}


def reference_iou(labels, other):
    return np.array([len(members(labels, i) & members(other, i)) / len(members(labels, i) | members(other, i))
                     for i in range(len(labels))])


def reference_reliable(labels, tight, loose, threshold=None):
    independence, compactness = reference_iou(labels, loose), reference_iou(labels, tight)
    clusters = sorted({label for label in labels if label >= 0})
    best_indep = {c: max(independence[i] for i in range(len(labels)) if labels[i] == c) for c in clusters}
    best_comp = {c: max(compactness[i] for i in range(len(labels)) if labels[i] == c) for c in clusters}
    if threshold is None:
        # SpCL's code: the clusters of two or more sorted from the most independent, the value at round(0.9 n)
        values = sorted((best_indep[c] for c in clusters if list(labels).count(c) > 1), reverse=True)
        threshold = values[min(len(values) - 1, int(np.round(len(values) * 0.9)))]
    kept = {i: labels[i] for i in range(len(labels)) if labels[i] >= 0
            and best_indep[labels[i]] >= threshold and compactness[i] >= best_comp[labels[i]]}
    kept = {i: c for i, c in kept.items() if list(kept.values()).count(c) > 1}
    order = sorted(set(kept.values()))
    return np.array([order.index(kept[i]) if i in kept else -1 for i in range(len(labels))]), threshold


def three_clusterings(seed, n=120, gap=0.15):
    """DBSCAN at eps and eps -/+ gap on blobs of points, some close enough to merge."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 6, size=(12, 2))
    points = centres[rng.integers(len(centres), size=n)] + rng.normal(scale=0.35, size=(n, 2))
    distance = np.linalg.norm(points[:, None] - points[None], axis=2)

    def at(eps):
        return DBSCAN(eps=eps, min_samples=3, metric='precomputed').fit_predict(distance)
    return at(0.45), at(0.45 - gap), at(0.45 + gap)


@pytest.mark.parametrize('seed', range(6))
def test_iou_of_an_images_two_clusters_matches_the_sets(seed):
    labels, tight, loose = three_clusterings(seed)
    np.testing.assert_allclose(reliability(labels, loose), reference_iou(labels, loose))
    np.testing.assert_allclose(reliability(labels, tight), reference_iou(labels, tight))


@pytest.mark.parametrize('seed', range(6))
def test_reliable_clusters_match_spcls_rule_written_out(seed):
    labels, tight, loose = three_clusterings(seed)
    kept, threshold = reliable_clusters(labels, tight, loose)
    expected, expected_threshold = reference_reliable(labels, tight, loose)
    assert threshold == pytest.approx(expected_threshold)
    np.testing.assert_array_equal(kept, expected)
    assert (kept >= 0).sum() < (labels >= 0).sum()  # the criterion drops something on these blobs
    # a later clustering keeps the first one's threshold
    later, later_tight, later_loose = three_clusterings(seed + 100)
    kept_later, same = reliable_clusters(later, later_tight, later_loose, threshold)
    assert same == threshold
    expected_later, _ = reference_reliable(later, later_tight, later_loose, threshold)
    np.testing.assert_array_equal(kept_later, expected_later)


def test_clusters_that_do_not_change_with_eps_are_kept_whole():
    labels = np.array([0, 0, 0, -1, 1, 1, 1, 1])
    kept, threshold = reliable_clusters(labels, tight=labels, loose=labels)
    np.testing.assert_array_equal(kept, labels)
    assert threshold == 1.0


def test_a_cluster_that_merges_when_eps_loosens_is_dropped_and_a_split_keeps_its_larger_part():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    loose = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])  # clusters 0 and 1 merge
    tight = np.array([0, 0, 0, 1, 1, 2, 2, 2, -1, -1])  # cluster 2 loses two images
    kept, _ = reliable_clusters(labels, tight, loose, independence_threshold=0.8)
    np.testing.assert_array_equal(kept, [-1, -1, -1, -1, -1, 0, 0, 0, -1, -1])


def test_a_dbscan_stage_with_a_gap_keeps_the_reliable_clusters_and_the_first_threshold():
    # begin_stage on embeddings of 40 people: the labels are the criterion's on DBSCAN at eps and eps -/+ gap
    # of the same Jaccard distances; the threshold set at the first clustering is kept by the next
    import torch

    from timm_gam.reid.checkpoint import RunState
    from timm_gam.reid.config import TrainConfig
    from timm_gam.reid.density_clustering import dbscan_labels, k_reciprocal_jaccard_distance
    from timm_gam.reid.distributed import ProcessGroup
    from timm_gam.reid.stages import begin_stage
    generator = torch.Generator().manual_seed(0)
    people = torch.randn(40, 32, generator=generator)
    config = TrainConfig(clustering='dbscan', dbscan_eps=0.5, reliability_gap=0.05, warmup_epochs=0)
    state = RunState(stage=1, cluster_labels=torch.arange(400))
    thresholds = []
    for noise in (0.5, 0.6):
        embeddings = people.repeat_interleave(10, 0) + noise * torch.randn(400, 32, generator=generator)
        merged = begin_stage(config, state, embeddings, [0] * 400, ProcessGroup())
        distance = k_reciprocal_jaccard_distance(embeddings)
        tight, labels, loose = (dbscan_labels(distance, eps, 4) for eps in (0.45, 0.5, 0.55))
        expected, threshold = reliable_clusters(labels, tight, loose, thresholds[0] if thresholds else None)
        np.testing.assert_array_equal(state.cluster_labels.numpy(), expected)
        assert merged['outliers'] == (expected < 0).sum() and (expected >= 0).sum() > 100
        assert merged['dbscan_clustered'] == (labels >= 0).sum()
        thresholds.append(state.independence_threshold)
        assert threshold == state.independence_threshold == merged['independence_threshold']
    assert thresholds[0] == thresholds[1]


def test_a_run_with_the_criterion_resumes_exactly(tmp_path, minute_per_step):  # noqa: F811
    import torch
    from test_time_budget import assert_same_weights, straight_and_budgeted
    straight, a, _, b = straight_and_budgeted(tmp_path, clustering='dbscan', reliability_gap=0.02, stages=2)
    assert a['state']['independence_threshold'] == b['state']['independence_threshold'] is not None
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    assert_same_weights(a, b)
    from timm_gam.model_card import model_card
    from timm_gam.reid.embedding import load_embedder
    card = model_card(load_embedder(checkpoint=tmp_path / 'straight' / 'checkpoint.pt'), 'timm-gam/tiny',
                      metrics=None, measured_by_publish=False)
    expected = "eps +- 0.02 neither merges nor splits kept (SpCL's reliability criterion"
    assert expected in ' '.join(card.split())
