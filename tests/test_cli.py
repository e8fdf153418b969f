"""The ``timm-gam`` command: the recipes behind its subcommands, as installed with the package."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from timm_gam import cli


def test_the_console_command_is_installed_and_lists_its_jobs():
    timm_gam = Path(sys.executable).parent / 'timm-gam'  # where pip put this environment's scripts
    assert timm_gam.is_file(), 'pip install -e . installs the timm-gam command'
    result = subprocess.run([str(timm_gam), '--help'], capture_output=True, text=True, cwd='/')
    assert result.returncode == 0
    for command in ('train', 'eval', 'publish', 'export', 'visualize', 'extract', 'search'):
        assert command in result.stdout


def test_recipe_subcommands_hand_their_arguments_to_the_recipes(capsys):
    try:
        cli.main(['train', '--help'])
    except SystemExit as exit:
        assert exit.code == 0
    assert '--warmup-epochs' in capsys.readouterr().out  # recipes/unsup_reid.py's own flags


def test_eval_is_the_recipes_eval_only(tiny_run, tmp_path):
    output = tmp_path / 'eval'
    assert cli.main(['eval', '--checkpoint', str(tiny_run.checkpoint), '--data-root', str(tiny_run.data_root),
                     '--output', str(output)]) == 0
    assert json.loads((output / 'metrics.json').read_text())['mAP'] == pytest.approx(tiny_run.metrics['mAP'],
                                                                                    abs=1e-6)
