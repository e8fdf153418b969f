"""Every module of the package imports on its own, first, in a fresh interpreter: a user or a script may
``from timm_gam.onnx_export import export_onnx`` before anything else, and a circular import breaks only
that order."""
import json
import subprocess
import sys

# one interpreter for speed: torch and timm stay imported, timm_gam's modules are dropped before each import
FIRST_IMPORTS = """
import importlib, json, pkgutil, sys, warnings
warnings.simplefilter('ignore')  # timm warns when a model is registered again
import timm_gam
names = [m.name for m in pkgutil.walk_packages(timm_gam.__path__, 'timm_gam.')]
failures = {}
for name in names:
    for loaded in [m for m in sys.modules if m == 'timm_gam' or m.startswith('timm_gam.')]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as e:
        failures[name] = f'{type(e).__name__}: {e}'
print(json.dumps({'modules': names, 'failures': failures}))
"""


def test_every_module_imports_first_on_its_own():
    result = subprocess.run([sys.executable, '-c', FIRST_IMPORTS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {'timm_gam.onnx_export', 'timm_gam.onnx_cache', 'timm_gam.reid.trainer'} <= set(report['modules'])
    assert report['failures'] == {}
