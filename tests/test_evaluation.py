"""Market-1501 evaluation: hand-computed cases and a per-query loop reference (torchreid semantics)."""
import numpy as np
import pytest
import torch

from timm_gam.reid.evaluation import evaluate_embeddings, evaluate_rank, pairwise_euclidean


def loop_reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Plain per-query port of torchreid's python ``eval_market1501`` (stable sort for ties)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap = [], []
    for q in range(num_q):
        order = np.argsort(distmat[q], kind='stable')
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        hits = (g_pids[order][keep] == q_pids[q]).astype(np.int32)
        if not hits.any():
            continue
        cmc = np.minimum(hits.cumsum(), 1)[:max_rank]
        cmc = np.pad(cmc, (0, max_rank - len(cmc)), constant_values=1)
        all_cmc.append(cmc)
        precision_at_k = hits.cumsum() / np.arange(1.0, len(hits) + 1)
        all_ap.append((precision_at_k * hits).sum() / hits.sum())
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc)
    return cmc, float(np.mean(all_ap))


def random_problem(rng, num_q, num_g, num_ids, num_cams, ties=False):
    distmat = rng.random((num_q, num_g)).astype(np.float32)
    if ties:
        distmat = np.round(distmat * 4) / 4  # few distinct values, so the tie rule matters
    return (distmat, rng.integers(1, num_ids + 1, num_q), rng.integers(0, num_ids + 1, num_g),
            rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g))


def test_hand_computed_same_camera_removal_and_distractor():
    # Query pid 1 cam 0. Gallery in distance order: [pid 1 cam 0 (removed), distractor pid 0,
    # pid 1 cam 1, pid 2, pid 1 cam 2]. After removal the correct matches sit at ranks 2 and 4.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids, g_cams = np.array([1, 0, 1, 2, 1]), np.array([0, 1, 1, 1, 2])
    cmc, mean_ap = evaluate_rank(distmat, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    np.testing.assert_array_equal(cmc, [0, 1, 1, 1])
    assert mean_ap == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_query_without_valid_match_is_skipped():
    distmat = np.array([[0.1, 0.2], [0.2, 0.1]])
    # query 0 (pid 1, cam 0) only has a same-camera match; query 1 matches at rank 1
    cmc, mean_ap = evaluate_rank(distmat, np.array([1, 2]), np.array([1, 2]), np.array([0, 0]),
                                 np.array([0, 1]), max_rank=2)
    np.testing.assert_array_equal(cmc, [1, 1])
    assert mean_ap == 1.0


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match='no query has a correct match'):
        evaluate_rank(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 0]))


def test_small_gallery_lowers_max_rank(capsys):
    cmc, _ = evaluate_rank(np.array([[0.3, 0.1]]), np.array([1]), np.array([1, 2]), np.array([0]),
                           np.array([1, 1]), max_rank=50)
    assert cmc.shape == (2,) and 'quite small' in capsys.readouterr().out
    np.testing.assert_array_equal(cmc, [0, 1])


def test_shape_mismatch_names_the_argument():
    with pytest.raises(ValueError, match='g_camids'):
        evaluate_rank(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([0]))


@pytest.mark.parametrize('ties', [False, True])
def test_matches_loop_reference(ties):
    rng = np.random.default_rng(0)
    for _ in range(20):
        problem = random_problem(rng, num_q=int(rng.integers(1, 30)), num_g=int(rng.integers(1, 80)),
                                 num_ids=int(rng.integers(1, 10)), num_cams=3, ties=ties)
        try:
            expected = loop_reference_rank(*problem, max_rank=10)
        except ZeroDivisionError:
            with pytest.raises(ValueError):
                evaluate_rank(*problem, max_rank=10)
            continue
        cmc, mean_ap = evaluate_rank(*problem, max_rank=10)
        np.testing.assert_array_equal(cmc, expected[0])
        assert mean_ap == pytest.approx(expected[1], rel=1e-12)


def test_invariant_to_gallery_and_query_order():
    rng = np.random.default_rng(1)
    distmat, q_pids, g_pids, q_cams, g_cams = random_problem(rng, 40, 200, 15, 4)
    qp, gp = rng.permutation(40), rng.permutation(200)
    cmc, mean_ap = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    cmc_p, mean_ap_p = evaluate_rank(distmat[qp][:, gp], q_pids[qp], g_pids[gp], q_cams[qp], g_cams[gp])
    np.testing.assert_array_equal(cmc, cmc_p)
    assert mean_ap == pytest.approx(mean_ap_p, rel=1e-12)


def test_pairwise_euclidean_matches_direct_formula():
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    expected = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    np.testing.assert_allclose(pairwise_euclidean(q, g), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pairwise_euclidean(torch.from_numpy(q), torch.from_numpy(g)), expected,
                               rtol=1e-5, atol=1e-5)


def test_evaluate_embeddings_reports_percent():
    feats = np.eye(4, dtype=np.float32)
    metrics = evaluate_embeddings(feats, feats, np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4]),
                                  np.zeros(4), np.ones(4))
    assert metrics == {'rank1': 100.0, 'rank5': 100.0, 'rank10': 100.0, 'mAP': 100.0}
