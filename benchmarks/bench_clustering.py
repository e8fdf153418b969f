"""Time one bottom-up merging step (4% of n merges, Eq. 9-10) against BUC's dense n x n approach.

    python benchmarks/bench_clustering.py                        # Market-1501 size and 100k
    python benchmarks/bench_clustering.py --n 1000000 --dim 256 --data calibrated --repeats 1 --no-dense

Embeddings are synthetic and L2-normalised, in two kinds: 'calibrated' has the structure measured
on real Market-1501 embeddings (see calibrated_embeddings), 'diffuse' is isotropic blobs, the worst
case for pruning. Two states are timed: the first stage (every image a singleton) and mid-training
(pure clusters of ~3 images). Each
configuration runs in a fresh process so its peak RSS is its own; tracemalloc adds the peak of
Python/numpy allocations during the merge alone (the dense step allocates through torch, which
tracemalloc does not see, so it is reported by peak RSS). Where the dense matrix fits (n <= 12,936), the
dense BUC-style step runs too and the two partitions must be identical.
"""
import argparse
import multiprocessing
import resource
import statistics
import time
import tracemalloc

import faiss
import numpy as np
import torch

from timm_gam.reid.clustering import merge_clusters

DENSE_LIMIT = 12936


def calibrated_embeddings(n, dim, images_per_id=16, images_per_tracklet=4, spectrum_knee=8, spectrum_decay=4,
                          within_identity=0.5, within_tracklet=0.1, offset=0.6, seed=0, chunk=100_000):
    """(n, dim) float32 unit embeddings shaped like those measured on Market-1501, and their identity.

    Measured (docs/performance.md), after two epochs of IDL+ACL: 90% of the variance lies in about
    10 principal axes, all embeddings share a mean direction (so typical distances are below
    sqrt(2)), images of one identity are only loosely closer than others, and nearest-neighbour
    distances have a long low tail (consecutive frames of one camera's track are near-duplicates).
    Here the variance along the k-th axis falls as ``(1 + k / knee)^-decay``; identity centres,
    tracklet centres and frame deviations all follow it, with ``within_identity`` and
    ``within_tracklet`` the shares of variance below the identity and the tracklet. Axis-aligned,
    since every step of the search is rotation-invariant.
    """
    rng = np.random.default_rng(seed)
    axis_std = (1 + np.arange(dim, dtype=np.float32) / spectrum_knee) ** (-spectrum_decay / 2)
    axis_std /= np.linalg.norm(axis_std)
    num_ids = max(1, n // images_per_id)
    num_tracklets = max(1, n // images_per_tracklet)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32) * axis_std * np.sqrt(1 - within_identity)
    centres[:, -1] += offset  # the shared mean direction, on an axis of negligible variance
    tracklet_identity = rng.integers(0, num_ids, num_tracklets)
    tracklets = (centres[tracklet_identity] + np.sqrt(within_identity - within_tracklet) * axis_std
                 * rng.standard_normal((num_tracklets, dim), dtype=np.float32))
    tracklet = rng.integers(0, num_tracklets, n)
    features = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        part = tracklet[start:start + chunk]
        frame = rng.standard_normal((len(part), dim), dtype=np.float32) * axis_std
        features[start:start + chunk] = _unit(tracklets[part] + np.sqrt(within_tracklet) * frame)
    return features, tracklet_identity[tracklet]


def diffuse_blobs(n, dim, images_per_id=16, ids_per_look=50, seed=0, chunk=100_000):
    """(n, dim) float32 unit embeddings with isotropic noise: the worst case for pruning.

    Identities of ~16 images scattered around identity centres that group by 'look' (people dressed
    alike). The noise fills all ``dim`` directions, so the merge radius is close to the distance
    between neighbouring identities and no bound separates much.
    """
    rng = np.random.default_rng(seed)
    num_ids = max(1, n // images_per_id)
    looks = _unit(rng.standard_normal((max(1, num_ids // ids_per_look), dim), dtype=np.float32))
    id_centres = _unit(looks[rng.integers(0, len(looks), num_ids)]
                       + _unit(rng.standard_normal((num_ids, dim), dtype=np.float32)))
    identity = rng.integers(0, num_ids, n)
    features = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        ids = identity[start:start + chunk]
        noise = _unit(rng.standard_normal((len(ids), dim), dtype=np.float32))
        features[start:start + chunk] = _unit(id_centres[ids] + 0.6 * noise)
    return features, identity


GENERATORS = {'calibrated': calibrated_embeddings, 'diffuse': diffuse_blobs}


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def initial_labels(identity, state, seed=0):
    """Singletons (first stage), or pure clusters of ~3 images of one identity (mid-training)."""
    if state == 'singletons':
        return np.arange(len(identity))
    return identity * 6 + np.random.default_rng(seed).integers(0, 6, len(identity))


def dense_buc_step(features, labels, num_merges, size_penalty):
    """BUC's way: the full n x n cost matrix, arg-sorted, walked until num_merges unions."""
    x = torch.from_numpy(features)
    _, cluster, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    cluster_t, sizes_t = torch.from_numpy(cluster), torch.from_numpy(sizes).float()
    sq = (x * x).sum(1)
    cost = (sq[:, None] + sq[None]).addmm_(x, x.T, alpha=-2).clamp_(min=0).sqrt_()
    cost += size_penalty * (sizes_t[cluster_t][:, None] + sizes_t[cluster_t][None])
    cost.masked_fill_(cluster_t[:, None] == cluster_t[None], float('inf'))
    order = torch.argsort(cost.view(-1))  # each pair appears twice; the second copy is skipped below
    parent = list(range(len(sizes)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    merges, n = 0, len(features)
    for start in range(0, len(order), 1 << 16):
        for flat in order[start:start + (1 << 16)].tolist():
            a, b = find(cluster[flat // n]), find(cluster[flat % n])
            if a != b:
                parent[b] = a
                merges += 1
                if merges == num_merges:
                    roots = np.array([find(c) for c in cluster])
                    return np.unique(roots, return_inverse=True)[1]
    raise RuntimeError('not enough pairs to merge')


def same_partition(labels_a, labels_b):
    pairs = np.unique(np.stack([labels_a, labels_b]), axis=1)
    return pairs.shape[1] == len(np.unique(labels_a)) == len(np.unique(labels_b))


def run_config(n, dim, data, state, repeats, with_dense, threads, size_penalty=0.005, fraction=0.04):
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    features, identity = GENERATORS[data](n, dim)
    labels = initial_labels(identity, state)
    num_merges = int(fraction * n)
    times, result = [], None
    tracemalloc.start()
    for _ in range(repeats):
        start = time.perf_counter()
        result = merge_clusters(features, labels, num_merges, size_penalty, with_costs=True)
        times.append(time.perf_counter() - start)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    row = dict(merges=num_merges, seconds=statistics.median(times), traced_mb=traced_peak / 2**20,
               candidates=result.num_candidate_pairs,
               rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if with_dense:  # runs last, so the process peak RSS afterwards is the dense step's
        start = time.perf_counter()
        dense = dense_buc_step(features, labels, num_merges, size_penalty)
        row['dense_seconds'] = time.perf_counter() - start
        row['dense_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row['identical'] = same_partition(dense, result.labels)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, nargs='+', default=[12936, 100_000])
    p.add_argument('--dim', type=int, nargs='+', default=[2048, 256], help='one per --n, or one for all')
    p.add_argument('--data', nargs='+', choices=sorted(GENERATORS), default=['calibrated', 'diffuse'])
    p.add_argument('--states', nargs='+', default=['singletons', 'mid-training'])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-dense', action='store_true', help='skip the dense reference even where it fits')
    args = p.parse_args(argv)
    dims = args.dim if len(args.dim) == len(args.n) else args.dim[:1] * len(args.n)

    print('| data | n | d | state | merges | time (s, median) | traced peak (MB) | peak RSS (MB) '
          '| candidate pairs | dense time (s) | dense peak RSS (MB) | identical |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    context = multiprocessing.get_context('spawn')
    for data in args.data:
        for n, dim in zip(args.n, dims, strict=True):
            for state in args.states:
                with context.Pool(1, maxtasksperchild=1) as pool:  # a fresh process: its own peak RSS
                    row = pool.apply(run_config, (n, dim, data, state, args.repeats,
                                                  n <= DENSE_LIMIT and not args.no_dense, args.threads))
                dense = (f"{row['dense_seconds']:.2f} | {row['dense_rss_mb']:.0f} | {row['identical']}"
                         if 'dense_seconds' in row else '- | - | -')
                print(f"| {data} | {n} | {dim} | {state} | {row['merges']} | {row['seconds']:.2f} "
                      f"| {row['traced_mb']:.0f} | {row['rss_mb']:.0f} | {row['candidates']} | {dense} |",
                      flush=True)
                if row.get('identical') is False:
                    raise SystemExit('the certified merge disagrees with the dense reference')


if __name__ == '__main__':
    main()
