"""scripts/gpu_paper_run.sh end to end on the CPU, in a tiny form: the same commands, the smoke preset.

On the GPU the script trains ``--preset paper``; here the flags after DATA and OUT replace the preset
with the smoke one on a tiny synthetic Market set, so every step (decoded data path, channels_last,
time budget, timed evaluations, publishing with measured figures) runs as it will there.
"""
import json
import subprocess
import sys
from pathlib import Path

from recipe_scripts import RECIPE_ENV
from tiny_config import make_tiny_market

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'gpu_paper_run.sh'


def test_the_gpu_script_trains_evaluates_and_writes_a_hub_folder(tmp_path):
    data = make_tiny_market(tmp_path / 'data')
    out = tmp_path / 'out'
    env = dict(RECIPE_ENV, PYTHON=sys.executable, BUDGET_MIN='100', EVAL_EVERY_MIN='100')
    result = subprocess.run(['bash', str(SCRIPT), str(data), str(out), '--preset', 'smoke', '--device', 'cpu',
                             '--model', 'test_efficientnet_gn'], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((out / 'run' / 'config.json').read_text())
    assert (config['data_path'], config['channels_last'], config['workers']) == ('decoded', True, 0)
    assert config['time_budget_min'] == 100 and config['image_size'] == [64, 32]
    metrics = json.loads((out / 'run' / 'metrics.json').read_text())
    # the trained weights retrieve better than the same network untrained, on the same split: random
    # embeddings, or weights the run never changed, would not
    assert metrics['mAP'] > metrics['untrained']['mAP']
    hub = out / 'hub'
    assert {'model.safetensors', 'config.json', 'README.md'} <= {p.name for p in hub.iterdir()}
    assert json.loads((hub / 'config.json').read_text())['pretrained_cfg']['input_size'] == [3, 64, 32]
    assert 'training took' in (out / 'machine.txt').read_text()
