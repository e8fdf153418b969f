"""The scripts of ``recipes/`` and ``experiments/`` for tests: imported as modules (to call ``main`` /
``run_cli`` in-process), or run as commands (``RECIPE`` with ``RECIPE_ENV``: progress bars off, so output
is plain lines)."""
import importlib.util
import os
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / 'recipes'
EXPERIMENTS = Path(__file__).resolve().parents[1] / 'experiments'
RECIPE = RECIPES / 'unsup_reid.py'
RECIPE_ENV = dict(os.environ, TIMM_GAM_PROGRESS='0')


def load_recipe(name: str):
    """``recipes/{name}.py`` as a fresh module."""
    return _load(RECIPES / f'{name}.py')


def load_experiment(name: str):
    """``experiments/{name}.py`` as a fresh module."""
    return _load(EXPERIMENTS / f'{name}.py')


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
