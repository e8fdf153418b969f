"""timm's own model test-suite against the models timm_gam registers (see scripts/run_timm_suite.sh).

Its 74 tests take 7.5 CPU-minutes (15 minutes on two busy cores), so it is marked slow and left out of the
default run:
``bash scripts/env.sh python -m pytest -m slow tests/test_timm_suite.py``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[1] / 'scripts' / 'run_timm_suite.sh'


@pytest.mark.slow
def test_timm_model_suite_passes_for_all_registered_models():
    result = subprocess.run(
        ['bash', str(RUNNER), '-x'], env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
