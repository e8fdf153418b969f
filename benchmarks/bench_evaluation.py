"""Time CMC + mAP on a Market-1501-sized problem: fast path vs a per-query arg-sort loop.

    python benchmarks/bench_evaluation.py [--queries 3368 --gallery 15913 --ids 751 --cams 6]

The synthetic problem mimics Market-1501's test split: every query identity has gallery images in
several cameras, the gallery also holds distractors (pid 0), and distances are noisy so correct
matches are spread over the ranking. Both implementations must return identical numbers.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from timm_gam.reid.evaluation import evaluate_rank


def market_like_problem(num_queries, num_gallery, num_ids, num_cams, seed=0):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_queries)
    g_pids = np.where(rng.random(num_gallery) < 0.2, 0, rng.integers(1, num_ids + 1, num_gallery))
    q_cams, g_cams = rng.integers(0, num_cams, num_queries), rng.integers(0, num_cams, num_gallery)
    same_identity = q_pids[:, None] == g_pids[None]
    distmat = (rng.random((num_queries, num_gallery), dtype=np.float32) + 0.15 * ~same_identity)
    return distmat.astype(np.float32), q_pids, g_pids, q_cams, g_cams


def loop_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid's python ``eval_market1501`` loop (stable arg-sort), the reference being timed."""
    order = np.argsort(distmat, axis=1, kind='stable')
    all_cmc, all_ap = [], []
    for q in range(distmat.shape[0]):
        keep = ~((g_pids[order[q]] == q_pids[q]) & (g_camids[order[q]] == q_camids[q]))
        hits = (g_pids[order[q]][keep] == q_pids[q]).astype(np.int32)
        if not hits.any():
            continue
        all_cmc.append(np.minimum(hits.cumsum(), 1)[:max_rank])
        all_ap.append((hits.cumsum() / np.arange(1.0, len(hits) + 1) * hits).sum() / hits.sum())
    return np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc), float(np.mean(all_ap))


def median_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--queries', type=int, default=3368)
    p.add_argument('--gallery', type=int, default=15913)
    p.add_argument('--ids', type=int, default=751)
    p.add_argument('--cams', type=int, default=6)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    problem = market_like_problem(args.queries, args.gallery, args.ids, args.cams)
    fast_s, (cmc, mean_ap) = median_time(lambda: evaluate_rank(*problem), args.repeats)
    loop_s, (ref_cmc, ref_ap) = median_time(lambda: loop_rank(*problem), max(1, args.repeats // 2))
    identical = np.array_equal(cmc, ref_cmc) and abs(mean_ap - ref_ap) <= 1e-12 * ref_ap

    print(f'problem: {args.queries} queries x {args.gallery} gallery, {args.ids} ids, {args.cams} cameras')
    print('| implementation | median time (s) | rank-1 | mAP |\n|---|---|---|---|')
    print(f'| evaluate_rank (sort + binary search) | {fast_s:.3f} | {cmc[0]:.4f} | {mean_ap:.6f} |')
    print(f'| per-query arg-sort loop (torchreid python) | {loop_s:.3f} | {ref_cmc[0]:.4f} | {ref_ap:.6f} |')
    print(f'speed-up {loop_s / fast_s:.1f}x, identical CMC and mAP (rel. 1e-12): {identical}')
    if not identical:
        raise SystemExit('fast evaluation disagrees with the loop reference')


if __name__ == '__main__':
    main()
