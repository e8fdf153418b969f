"""Import a script of ``recipes/`` as a module, so tests call its ``main`` / ``run_cli`` in-process."""
import importlib.util
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / 'recipes'


def load_recipe(name: str):
    """``recipes/{name}.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, RECIPES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
