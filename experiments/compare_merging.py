"""Compare the bottom-up merging variants on the same embeddings: BUC's step-start sizes, sizes
refreshed after each union, a maximum cluster size, and merging on camera-centred embeddings.

    python experiments/compare_merging.py --checkpoint runs/g4/checkpoint.pt \\
        --data-root ../shared/data/market1501-dev --merge-percent 0.05 --stages 18

Embeds the training images once with the checkpoint's model, then runs the merge stages back to back
with each variant (no training in between, so only the merging rule differs) and prints, per stage,
the number of clusters, the purity against the file-name identities (a diagnostic only), the share of
images in the largest cluster and the pairwise F-score of the partition, and below it the share of the
clusters of two or more images that hold images of more than one camera.
"""
import argparse
import json

import numpy as np
import torch

import timm_gam  # noqa: F401  (registers the models)
from timm_gam.reid.cameras import camera_centred
from timm_gam.reid.clustering import cluster_purity, merge_clusters
from timm_gam.reid.datasets import load_reid_dataset
from timm_gam.reid.embedding import extract_embeddings, load_embedder
from timm_gam.reid.transforms import build_eval_transform


def pairwise_f_score(labels: np.ndarray, true_ids: np.ndarray) -> float:
    """F-score of same-cluster pairs against same-identity pairs (BUC reports this family of scores)."""
    def same_pairs(keys):
        _, counts = np.unique(keys, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())
    _, joint = np.unique(np.stack([labels, true_ids]), axis=1, return_inverse=True)
    both, predicted, actual = same_pairs(joint), same_pairs(labels), same_pairs(true_ids)
    if both == 0:
        return 0.0
    precision, recall = both / predicted, both / actual
    return 2 * precision * recall / (precision + recall)


def cross_camera_share(labels: np.ndarray, cameras: np.ndarray) -> float:
    """Share of the clusters of two or more images whose images come from more than one camera."""
    _, pairs = np.unique(np.stack([labels, cameras]), axis=1, return_index=True)
    cameras_per_cluster = np.bincount(labels[pairs])
    multi = np.bincount(labels) > 1
    return float((cameras_per_cluster[multi] > 1).mean()) if multi.any() else 0.0


def run_variant(embeddings, true_ids, cameras, stages, num_merges, size_penalty, camera_centred_merge=False,
                **variant) -> list[dict]:
    features = embeddings
    if camera_centred_merge:
        features = camera_centred(torch.as_tensor(embeddings), cameras).numpy()
    labels = np.arange(len(embeddings))
    rows = []
    for stage in range(1, stages + 1):
        labels = merge_clusters(features, labels, num_merges, size_penalty, **variant)
        sizes = np.bincount(labels)
        rows.append({'stage': stage, 'num_clusters': len(sizes),
                     'purity': cluster_purity(labels, true_ids),
                     'largest_cluster_share': sizes.max() / len(labels),
                     'pairwise_f': pairwise_f_score(labels, true_ids),
                     'cross_camera_share': cross_camera_share(labels, cameras)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True)
    p.add_argument('--data-root', required=True)
    p.add_argument('--merge-percent', type=float, default=0.05)
    p.add_argument('--stages', type=int, default=18)
    p.add_argument('--size-penalty', type=float, default=0.005)
    p.add_argument('--max-cluster-size', type=int, default=40)
    p.add_argument('--json', help='also write the rows to this file')
    args = p.parse_args(argv)

    loaded = load_embedder(checkpoint=args.checkpoint)
    images = load_reid_dataset(args.data_root).train
    transform = build_eval_transform(loaded.image_size)
    embeddings = extract_embeddings(loaded.embedder, images, transform, batch_size=128).numpy()
    true_ids = np.array([im.pid for im in images])
    cameras = np.array([im.camid for im in images])
    num_merges = int(round(args.merge_percent * len(images)))

    cap = args.max_cluster_size
    variants = {
        'step (BUC)': dict(size_update='step'),
        'refresh': dict(size_update='refresh'),
        f'step, max size {cap}': dict(size_update='step', max_cluster_size=cap),
        f'refresh, max size {cap}': dict(size_update='refresh', max_cluster_size=cap),
        f'refresh, max size {cap}, camera-centred': dict(size_update='refresh', max_cluster_size=cap,
                                                          camera_centred_merge=True),
    }
    results = {name: run_variant(embeddings, true_ids, cameras, args.stages, num_merges, args.size_penalty,
                                 **variant) for name, variant in variants.items()}

    print(f'{len(images)} images, {len(set(true_ids))} identities, {num_merges} merges per stage')
    print(f'| stage | clusters | {" | ".join(results)} |')
    print('|---|---|' + '---|' * len(results))
    for stage in range(args.stages):
        cells = ['{purity:.3f} / {largest_cluster_share:.3f} / {pairwise_f:.3f}'.format(**r[stage])
                 for r in results.values()]
        clusters = next(iter(results.values()))[stage]['num_clusters']
        print(f'| {stage + 1} | {clusters} | {" | ".join(cells)} |')
    print('cells: purity / largest-cluster share / pairwise F-score')
    print(f'| stage | {" | ".join(results)} |')
    print('|---|' + '---|' * len(results))
    for stage in range(args.stages):
        cells = [f'{r[stage]["cross_camera_share"]:.3f}' for r in results.values()]
        print(f'| {stage + 1} | {" | ".join(cells)} |')
    print('cells: share of the clusters of 2+ images that span cameras')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
