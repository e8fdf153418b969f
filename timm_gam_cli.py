"""timm-gam: one command for the project's jobs.

  timm-gam train [ARGS]       label-free training (recipes/unsup_reid.py; train --help lists its flags)
  timm-gam eval [ARGS]        rank-1/5/10 and mAP of trained or published weights on a data set
  timm-gam publish [ARGS]     a checkpoint as a Hub folder, uploaded (recipes/publish.py)
  timm-gam export [ARGS]      ONNX, checked with onnxruntime (recipes/export_onnx.py)
  timm-gam visualize [ARGS]   attention maps, ranked lists, t-SNE, curves (recipes/visualize.py)
  timm-gam extract --images DIR --output FILE.npz [--model NAME | --checkpoint PATH]
  timm-gam search --features FILE.npz --query IMAGE... [--top-k 10] [--output ranks.png]

extract and search index a folder of person crops and query it (docs/features.md).
"""
# This module sits outside the timm_gam package on purpose: importing timm_gam registers its models with
# timm, which imports torch (seconds). Parsing and checking the arguments here first lets --help, --version
# and bad input answer at once, and nothing is loaded or written for a command that cannot run.
import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# recipe subcommands: (recipe module, arguments put before the user's)
RECIPE_COMMANDS = {
    'train': ('unsup_reid', []),
    'eval': ('unsup_reid', ['--eval-only']),
    'publish': ('publish', []),
    'export': ('export_onnx', []),
    'visualize': ('visualize', []),
}
# whose --help and flags the recipe itself gives (eval's are the few of --eval-only, parsed here)
PASS_THROUGH = ('train', 'publish', 'export', 'visualize')
# timm.list_pretrained('gam_*'): the released weights (tests/test_command_front.py keeps the two equal)
RELEASED_WEIGHTS = tuple(f'gam_resnet50_g{groups}.unsup_market1501dev' for groups in (2, 4, 8, 16))
DEFAULT_MODEL = 'gam_resnet50_g4'


class OneLineParser(argparse.ArgumentParser):
    """Bad input answers in one line with exit status 2, as argparse's own errors do, without the usage."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


def package_version() -> str:
    try:
        return version('timm-gam')
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        return 'unknown (not installed: pip install -e .)'


def build_parser() -> OneLineParser:
    p = OneLineParser(prog='timm-gam', description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--version', action='version', version=f'timm-gam {package_version()}')
    commands = p.add_subparsers(dest='command', required=True, metavar='COMMAND', parser_class=OneLineParser)
    for name in PASS_THROUGH:
        commands.add_parser(name, help=f'recipes/{RECIPE_COMMANDS[name][0]}.py', add_help=False)

    evaluate = commands.add_parser('eval', help='rank-1/5/10 and mAP of a checkpoint or of published weights')
    weights = evaluate.add_mutually_exclusive_group(required=True)
    weights.add_argument('--checkpoint', help='a checkpoint.pt of a training run')
    weights.add_argument('--pretrained', action='store_true', help='the published weights of --model')
    evaluate.add_argument('--model', help=f'with --pretrained: a released model (default {DEFAULT_MODEL}) or '
                                          'hf-hub:org/name')
    evaluate.add_argument('--data-root', required=True,
                          help='a data set in the Market-1501 layout (its query/ and bounding_box_test/)')
    evaluate.add_argument('--layout', help='auto, market1501, dukemtmc, ... (default auto)')
    evaluate.add_argument('--output',
                          help='folder for metrics.json and log.jsonl (default runs/unsup_reid-eval)')
    evaluate.add_argument('--embed-dim', type=int, help='expected embedding size (default: from the weights)')
    evaluate.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'),
                          help='expected input size (default: from the weights)')
    evaluate.add_argument('--workers', type=int, help='data loading processes')
    evaluate.add_argument('--device', help='auto, cpu, cuda, cuda:1, ...')

    extract = commands.add_parser('extract', help='features of every image under a folder, saved as .npz')
    extract.add_argument('--model', help=f'a released model (default {DEFAULT_MODEL}) or hf-hub:org/name: '
                                         'its published weights')
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
    return p


def model_problem(model: str | None) -> str | None:
    """Why ``model`` has no published weights to load, or None when it has (or is a Hub id to try)."""
    if model is None or model.startswith('hf-hub:') or model in RELEASED_WEIGHTS:
        return None
    if any(name.split('.')[0] == model for name in RELEASED_WEIGHTS):
        return None
    released = ', '.join(name.split('.')[0] for name in RELEASED_WEIGHTS)
    return (f'no published weights named {model!r} (released: {released}); for weights of your own pass '
            '--checkpoint RUN/checkpoint.pt, or --model hf-hub:org/name for a Hub repo')


def _file_problem(path: str, what: str, suffix: str, flag: str) -> str | None:
    if Path(path).suffix != suffix:
        return f'{what} {path} must end in {suffix}: pass {flag} {Path(path).with_suffix(suffix).name}'
    return None


def input_problem(args) -> str | None:
    """The first problem with the arguments that a look at the file system can find, as one line."""
    if args.command == 'extract':
        images = Path(args.images)
        checks = [
            (not images.is_dir(), f'{images} is not a folder: pass --images DIR, a folder of person crops'),
            (args.checkpoint is not None and not Path(args.checkpoint).is_file(),
             f'checkpoint {args.checkpoint} does not exist: pass --checkpoint RUN/checkpoint.pt'),
            (args.batch_size < 1, f'--batch-size must be at least 1, got {args.batch_size}'),
        ]
        problems = [message for failed, message in checks if failed]
        problems.append(_file_problem(args.output, 'gallery file', '.npz', '--output'))
        if args.checkpoint is None:
            problems.append(model_problem(args.model))
    elif args.command == 'search':
        features = Path(args.features)
        problems = [f'gallery file {features} does not exist: make one with timm-gam extract'
                    if not features.is_file() else None]
        problems += [f'query image {query} does not exist: pass image files to --query'
                     for query in args.query if not Path(query).is_file()]
        problems.append(f'--top-k must be at least 1, got {args.top_k}' if args.top_k < 1 else None)
        if args.output is not None:
            problems.append(_file_problem(args.output, 'ranked-list image', '.png', '--output'))
    elif args.command == 'eval':
        problems = [
            f'checkpoint {args.checkpoint} does not exist: pass --checkpoint RUN/checkpoint.pt'
            if args.checkpoint is not None and not Path(args.checkpoint).is_file() else None,
            f'{args.data_root} is not a folder: pass --data-root DIR, a data set in the Market-1501 layout'
            if not Path(args.data_root).is_dir() else None,
            model_problem(args.model) if args.pretrained else None,
            '--model goes with --pretrained; a checkpoint names its own model'
            if args.checkpoint and args.model else None,
        ]
    else:
        problems = []
    return next((problem for problem in problems if problem), None)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        from timm_gam.cli import run_recipe

        return run_recipe(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = input_problem(args)
    if problem:
        parser.exit(2, f'timm-gam {args.command}: error: {problem}\n')
    from timm_gam.cli import run

    return run(args, argv)


if __name__ == '__main__':
    sys.exit(main())
