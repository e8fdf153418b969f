"""``timm-gam``: one command for the project's jobs.

    timm-gam train [ARGS]       recipes/unsup_reid.py: label-free training (--help lists its flags)
    timm-gam eval [ARGS]        recipes/unsup_reid.py --eval-only
    timm-gam publish [ARGS]     recipes/publish.py: a checkpoint as a Hub folder, uploaded
    timm-gam export [ARGS]      recipes/export_onnx.py: ONNX, checked with onnxruntime
    timm-gam visualize [ARGS]   recipes/visualize.py: attention maps, ranked lists, t-SNE, curves
    timm-gam extract --model NAME|--checkpoint PATH --images DIR --output FILE.npz
    timm-gam search --features FILE.npz --query IMAGE... [--top-k 10] [--output ranks.png]

The first five hand their arguments to the recipes, which stay the readable entry points; ``extract``
and ``search`` index a folder of person crops and query it (:mod:`timm_gam.reid.gallery`).
"""
import argparse
import sys
from pathlib import Path

RECIPE_COMMANDS = {  # subcommand: (recipe module, arguments put before the user's)
    'train': ('unsup_reid', []),
    'eval': ('unsup_reid', ['--eval-only']),
    'publish': ('publish', []),
    'export': ('export_onnx', []),
    'visualize': ('visualize', []),
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog='timm-gam', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, (module, _) in RECIPE_COMMANDS.items():
        commands.add_parser(name, help=f'recipes/{module}.py', add_help=False)

    extract = commands.add_parser('extract', help='features of every image under a folder, saved as .npz')
    extract.add_argument('--model', help='registered name or hf-hub:org/name: its pretrained weights '
                                         '(default gam_resnet50_g4)')
    extract.add_argument('--checkpoint', help='a checkpoint.pt of recipes/unsup_reid.py: its weights instead')
    extract.add_argument('--images', required=True, help='folder of person crops, read recursively')
    extract.add_argument('--output', required=True, help='.npz file: features, paths, model and its cfg')
    extract.add_argument('--batch-size', type=int, default=32)
    extract.add_argument('--device', default='auto')

    search = commands.add_parser('search', help='the nearest gallery images of query images')
    search.add_argument('--features', required=True, help='.npz written by timm-gam extract')
    search.add_argument('--query', required=True, nargs='+', help='query image files')
    search.add_argument('--top-k', type=int, default=10)
    search.add_argument('--index', choices=('auto', 'exact', 'hnsw'), default='auto',
                        help='faiss index: exact (flat), hnsw (approximate, for millions), auto (by size)')
    search.add_argument('--output', help='PNG of the ranked lists (default: print them only)')
    search.add_argument('--device', default='auto')
    return p.parse_args(argv)


def run_recipe(name: str, argv: list[str]) -> int:
    from importlib import import_module

    module_name, before = RECIPE_COMMANDS[name]
    recipe = import_module(f'timm_gam.recipes.{module_name}')
    if hasattr(recipe, 'run_cli'):
        return recipe.run_cli([*before, *argv])
    recipe.main([*before, *argv])
    return 0


def extract(args) -> int:
    from .reid.feature_extractor import FeatureExtractor
    from .reid.gallery import extract_gallery

    extractor = FeatureExtractor(args.model, checkpoint=args.checkpoint, device=args.device,
                                 batch_size=args.batch_size)
    gallery = extract_gallery(extractor, args.images, progress=sys.stderr.isatty())
    path = gallery.save(args.output)
    skipped = f', skipped {gallery.skipped} unreadable file(s)' if gallery.skipped else ''
    print(f'[extract] {len(gallery.paths)} images under {args.images}: {extractor}{skipped} -> {path}')
    return 0


def search(args) -> int:
    from .reid.datasets import load_image
    from .reid.gallery import Gallery, search_gallery

    gallery = Gallery.load(args.features)
    extractor = gallery.extractor(device=args.device)
    queries = [(path, load_image(path)) for path in args.query]
    distances, indices = search_gallery(gallery.features, extractor([image for _, image in queries]).numpy(),
                                        top_k=args.top_k, index=args.index)
    root = Path(gallery.root)
    for (name, _), row_distances, row_indices in zip(queries, distances, indices, strict=True):
        print(f'{name}:')
        for rank, (distance, index) in enumerate(zip(row_distances, row_indices, strict=True), start=1):
            print(f'  {rank:3d}  {distance:.4f}  {root / gallery.paths[index]}')
    if args.output:
        from .visualize import plot_search_results

        matches = [[(gallery.paths[i], load_image(root / gallery.paths[i]), float(d))
                    for d, i in zip(row_d, row_i, strict=True)] for row_d, row_i in zip(distances, indices,
                                                                                          strict=True)]
        path = plot_search_results(queries, matches, args.output,
                                   f'{extractor.loaded.label}: top-{args.top_k} of {len(gallery.paths)} '
                                   'gallery images (Euclidean distance of normalised features)')
        print(f'[search] wrote {path}')
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in RECIPE_COMMANDS:
        return run_recipe(argv[0], argv[1:])
    args = parse_args(argv)
    try:
        return {'extract': extract, 'search': search}[args.command](args)
    except (ValueError, FileNotFoundError) as error:  # bad input: one line naming it and the fix
        print(f'error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
