"""Fixtures shared across test modules."""
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_scripts import RECIPE, RECIPE_ENV
from release_checkpoints import TinyRun, tiny_training_run


@pytest.fixture(scope='session')
def default_run(tmp_path_factory) -> tuple[Path, str]:
    """The README's first command, ``python recipes/unsup_reid.py`` with no argument, run once for the
    session in a fresh working folder: (its run folder, what it printed)."""
    cwd = tmp_path_factory.mktemp('default_run')
    result = subprocess.run([sys.executable, str(RECIPE)], cwd=cwd, env=RECIPE_ENV, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd / 'runs' / 'unsup_reid-synthetic', result.stdout


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> TinyRun:
    """One finished two-stage smoke run for every test that reads a trained run: its checkpoint,
    log.jsonl, metrics and synthetic data set. Read it, write elsewhere."""
    return tiny_training_run(tmp_path_factory.mktemp('tiny_run'))
