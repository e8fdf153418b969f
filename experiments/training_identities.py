"""Retrieval among the training split's own people: a second set of identities to check a comparison on.

    python experiments/training_identities.py --data-root ../shared/data/market1501-dev \
        --pretrained gam_resnet50_g4 --retrieval-features head pooled

The dev-test split has 100 people; a difference between two models or two readouts of one model may be
that split's doing. This scores the same weights on the 400 people of the training split instead: the
query is the first image (by file name) of each person in each camera, the gallery the other training
images, under the Market-1501 protocol (a query's own camera's images of its person are ignored). The
training saw these images without their labels, so this checks other people, not unseen images; compare
models on it side by side only.
"""
import argparse
from collections.abc import Sequence

from timm_gam.reid.datasets import ReidImage, prepare_data
from timm_gam.reid.embedding import RETRIEVAL_FEATURES, load_embedder
from timm_gam.reid.evaluation import evaluate_model


def first_per_person_and_camera(images: Sequence[ReidImage]) -> tuple[list[ReidImage], list[ReidImage]]:
    """(query, gallery): each person's first image in each camera, by file name; the rest."""
    seen, query, gallery = set(), [], []
    for image in sorted(images, key=lambda image: str(image.path)):
        key = (image.pid, image.camid)
        (gallery if key in seen else query).append(image)
        seen.add(key)
    return query, gallery


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', required=True, help='a Market-1501 layout (bounding_box_train/ is read)')
    p.add_argument('--checkpoint', nargs='*', default=[], help='checkpoint.pt files of training runs')
    p.add_argument('--pretrained', nargs='*', default=[], help='model names, their pretrained weights scored')
    p.add_argument('--retrieval-features', nargs='+', choices=RETRIEVAL_FEATURES, default=[None],
                   help="the readouts to score each model with (default: each model's own)")
    args = p.parse_args(argv)
    if not args.checkpoint and not args.pretrained:
        p.error('no model given: pass --checkpoint RUN/checkpoint.pt or --pretrained MODEL_NAME')
    query, gallery = first_per_person_and_camera(prepare_data(args.data_root).train)
    print(f'{len(query):,} queries, {len(gallery):,} gallery images, {len({im.pid for im in query})} people')
    print('| model | features | rank-1 | rank-5 | rank-10 | mAP |\n|---|---|---|---|---|---|')
    results = []
    sources = ([{'checkpoint': path} for path in args.checkpoint]
               + [{'pretrained': name} for name in args.pretrained])
    for source in sources:
        for features in args.retrieval_features:
            loaded = load_embedder(**source, retrieval_features=features)
            metrics = evaluate_model(loaded.embedder, query, gallery, loaded.image_size)
            readout = loaded.retrieval_features
            print(f'| {loaded.label} | {readout} | {metrics["rank1"]:.1f} | {metrics["rank5"]:.1f} '
                  f'| {metrics["rank10"]:.1f} | {metrics["mAP"]:.1f} |', flush=True)
            results.append({'model': loaded.label, 'features': readout, **metrics})
    return results


if __name__ == '__main__':
    main()
