"""Figures of a re-ID model as PNG files: attention maps, ranked retrieval, t-SNE, training curves.

    python recipes/visualize.py attention --checkpoint runs/g4/checkpoint.pt \\
        --checkpoint runs/cbam/checkpoint.pt --data-root ../shared/data/market1501-dev \\
        --output docs/figures/attention.png
    python recipes/visualize.py ranks --checkpoint runs/g4/checkpoint.pt --data-root DATA --output ranks.png
    python recipes/visualize.py tsne --checkpoint runs/buc/checkpoint.pt --checkpoint runs/g4/checkpoint.pt \\
        --data-root DATA --output tsne.png
    python recipes/visualize.py curves runs/g4 runs/r50 --output curves.png

Models come from training checkpoints (``--checkpoint``, repeatable) or pretrained weights (``--pretrained
gam_resnet50_g4``, repeatable); each model is fed images at the size it was trained with. Images are drawn
from the query split of ``--data-root`` (seeded), or given with ``--images``.
"""
import argparse
import random

import timm_gam  # noqa: F401  (registers the GAM and CBAM models with timm)
from timm_gam.reid import load_image, load_reid_dataset
from timm_gam.reid.embedding import load_embedders
from timm_gam.visualize import (
    MAP_KINDS,
    choose_identities,
    plot_attention,
    plot_ranked_retrieval,
    plot_training_curves,
    plot_tsne,
)


def add_model_args(p):
    p.add_argument('--checkpoint', action='append', default=[], help='checkpoint.pt of a training run')
    p.add_argument('--pretrained', action='append', default=[], metavar='MODEL',
                   help='a model with pretrained weights, e.g. gam_resnet50_g4 or hf-hub:org/name')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest='command', required=True)

    attention = commands.add_parser('attention', help='attention maps over the input (paper Fig. 5)')
    add_model_args(attention)
    attention.add_argument('--data-root', help='take --num-images query images from this data set')
    attention.add_argument('--images', nargs='+', help='image files to show instead')
    attention.add_argument('--num-images', type=int, default=4)
    attention.add_argument('--map', choices=MAP_KINDS, default='auto',
                           help='attention: GAM/CBAM spatial gate (Eq. 3); activation: channel-mean '
                                'features; auto: attention where the model has it (default)')
    attention.add_argument('--blocks', choices=['last', 'stages'], default='last',
                           help='the final residual block (as Fig. 5) or the last block of each stage')

    ranks = commands.add_parser('ranks', help='queries and their top-k gallery images')
    add_model_args(ranks)
    ranks.add_argument('--data-root', required=True, help='Market-1501 layout with query/gallery')
    ranks.add_argument('--num-queries', type=int, default=6)
    ranks.add_argument('--top-k', type=int, default=10)

    tsne = commands.add_parser('tsne', help='t-SNE of chosen identities, one panel per model (paper Fig. 4)')
    add_model_args(tsne)
    tsne.add_argument('--data-root', required=True, help='Market-1501 layout; its query + gallery images')
    tsne.add_argument('--num-ids', type=int, default=18, help='identities with the most images (paper: 18)')
    tsne.add_argument('--ids', type=int, nargs='+', help='these identities instead')
    tsne.add_argument('--perplexity', type=float, default=30.0)

    curves = commands.add_parser('curves', help='loss, clusters and rank-1/mAP of training runs')
    curves.add_argument('runs', nargs='+', help='run folders holding log.jsonl')

    for command in (attention, ranks, tsne, curves):
        command.add_argument('--output', required=True, help='PNG file to write')
        command.add_argument('--seed', type=int, default=0, help='picks the images and queries shown')
    return p.parse_args(argv)


def pick(items, count, seed):
    """``count`` items drawn reproducibly, in their original order."""
    chosen = sorted(random.Random(seed).sample(range(len(items)), min(count, len(items))))
    return [items[i] for i in chosen]


def one_model(args):
    models = load_embedders(args.checkpoint, args.pretrained)
    if len(models) > 1:
        raise SystemExit(f'{args.command} shows one model; got {len(models)} (--checkpoint / --pretrained)')
    return models[0]


def main(argv=None):
    args = parse_args(argv)
    if args.command == 'attention':
        if bool(args.images) == bool(args.data_root):
            raise SystemExit('attention: give either --images FILE... or --data-root DIR')
        paths = args.images or [im.path for im in pick(load_reid_dataset(args.data_root).query,
                                                       args.num_images, args.seed)]
        models = load_embedders(args.checkpoint, args.pretrained)
        path = plot_attention(models, [load_image(p) for p in paths], args.output, map_kind=args.map,
                              blocks=args.blocks)
    elif args.command == 'ranks':
        splits = load_reid_dataset(args.data_root)
        queries = pick(range(len(splits.query)), args.num_queries, args.seed)
        path = plot_ranked_retrieval(one_model(args), splits.query, splits.gallery, queries, args.output,
                                     top_k=args.top_k)
    elif args.command == 'tsne':
        splits = load_reid_dataset(args.data_root)
        images = splits.query + splits.gallery
        identities = args.ids or choose_identities(images, args.num_ids)
        models = load_embedders(args.checkpoint, args.pretrained)
        path = plot_tsne(models, images, identities, args.output, perplexity=args.perplexity,
                         seed=args.seed)
    else:
        path = plot_training_curves(args.runs, args.output)
    print(f'[visualize] wrote {path}')
    return path


if __name__ == '__main__':
    main()
