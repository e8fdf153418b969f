"""The jobs behind the ``timm-gam`` command, run once :mod:`timm_gam_cli` has parsed and checked them.

The recipe subcommands hand their arguments to the recipes, which stay the readable entry points;
``extract`` and ``search`` index a folder of person crops and query it (:mod:`timm_gam.reid.gallery`).
"""
import logging
import sys
from pathlib import Path

from timm_gam_cli import RECIPE_COMMANDS
from timm_gam_cli import main as main  # python -m timm_gam.cli is the timm-gam command

__all__ = ['run', 'run_recipe', 'main']

MAX_NAMED_SKIPPED = 5  # unreadable files named on the summary line; the log names every one


def run_recipe(name: str, argv: list[str]) -> int:
    from importlib import import_module

    module_name, before = RECIPE_COMMANDS[name]
    recipe = import_module(f'timm_gam.recipes.{module_name}')
    if hasattr(recipe, 'run_cli'):
        return recipe.run_cli([*before, *argv])
    recipe.main([*before, *argv])
    return 0


def _skipped_line(skipped: list[str]) -> str:
    if not skipped:
        return ''
    named = ', '.join(skipped[:MAX_NAMED_SKIPPED])
    more = f' and {len(skipped) - MAX_NAMED_SKIPPED} more' if len(skipped) > MAX_NAMED_SKIPPED else ''
    return f'; skipped {len(skipped)} unreadable file(s): {named}{more}'


def extract(args) -> int:
    from .reid.feature_extractor import FeatureExtractor
    from .reid.gallery import extract_gallery

    extractor = FeatureExtractor(args.model, checkpoint=args.checkpoint, device=args.device,
                                 batch_size=args.batch_size)
    gallery = extract_gallery(extractor, args.images)
    path = gallery.save(args.output)
    print(f'[extract] {len(gallery.paths)} images under {args.images}: {extractor}'
          f'{_skipped_line(gallery.skipped)} -> {path}')
    return 0


def _load_queries(paths: list[str]):
    from .reid.datasets import ImageLoadError, load_image

    queries = []
    for path in paths:
        try:
            queries.append((path, load_image(path)))
        except ImageLoadError:
            raise ValueError(f'query {path} is not a readable image: pass image files to --query') from None
    return queries


def search(args) -> int:
    from .reid.datasets import load_image
    from .reid.gallery import Gallery, search_gallery

    gallery = Gallery.load(args.features)
    queries = _load_queries(args.query)  # before the model: a bad query should not wait for the weights
    extractor = gallery.extractor(device=args.device)
    distances, indices = search_gallery(gallery.features, extractor([image for _, image in queries]).numpy(),
                                        top_k=args.top_k, index=args.index, gallery_file=args.features)
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


def _one_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def run(args, argv: list[str]) -> int:
    """Run a parsed, checked command; errors the user can fix are one line and exit status 2."""
    # the library's messages (ONNX cache, skipped files) go through logging: the command shows timm-gam's,
    # not the INFO lines of every library beneath it
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('[%(name)s] %(message)s'))
    library = logging.getLogger('timm_gam')
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    from .hub import MissingWeightsError

    try:
        if args.command == 'eval':
            return run_recipe('eval', argv[1:])
        return {'extract': extract, 'search': search}[args.command](args)
    except (ValueError, OSError, MissingWeightsError) as error:  # OSError: the Hub, the disk
        print(f'timm-gam {args.command}: error: {_one_line(error)}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
