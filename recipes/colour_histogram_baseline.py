"""Evaluate the hand-crafted HSV stripe-histogram baseline on a query/gallery split.

    python recipes/colour_histogram_baseline.py --data-root ../shared/data/market1501-dev

Same protocol and metrics as ``recipes/unsup_reid.py --eval-only``, so the numbers sit side by side.
"""
import argparse
import json
import time

from timm_gam.reid.colour_histogram import colour_histogram_embeddings
from timm_gam.reid.datasets import EVALUATION_SPLITS, LAYOUTS, prepare_data
from timm_gam.reid.evaluation import evaluate_split


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', required=True, help='Market-1501 or DukeMTMC-reID layout')
    p.add_argument('--layout', default='auto', choices=LAYOUTS)
    p.add_argument('--stripes', type=int, default=6)
    args = p.parse_args(argv)

    start = time.perf_counter()
    splits = prepare_data(args.data_root, layout=args.layout, splits=EVALUATION_SPLITS)
    query = colour_histogram_embeddings(splits.query, stripes=args.stripes)
    gallery = colour_histogram_embeddings(splits.gallery, stripes=args.stripes)
    metrics = evaluate_split(query, gallery, splits.query, splits.gallery)
    metrics['seconds'] = time.perf_counter() - start
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == '__main__':
    main()
