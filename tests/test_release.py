"""The committed release under hub/: timm's real Hub code path loads exactly those weights offline, and
the recipe's ``--eval-only --pretrained`` reproduces the numbers its model card states."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
from test_hub import run_offline

from timm_gam import hub

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = 'timm-gam/gam_resnet50_g4.unsup_market1501dev'
RELEASE = REPO_ROOT / 'hub' / 'gam_resnet50_g4.unsup_market1501dev'
MARKET_DEV = REPO_ROOT.parent / 'shared' / 'data' / 'market1501-dev'


@pytest.fixture(scope='module')
def hf_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp('hf_cache')
    hub.install_into_hf_cache(RELEASE, REPO_ID, cache_dir=cache)
    return cache


def card_metrics() -> dict:
    """The rank-1/5/10 and mAP row of the model card's results table."""
    card = (RELEASE / 'README.md').read_text()
    row = re.search(r'\| rank-1 \| rank-5 \| rank-10 \| mAP \|\n\|[-|]+\|\n\|([^\n]+)\|', card)
    values = [float(v) for v in row.group(1).split('|')]
    return dict(zip(('rank1', 'rank5', 'rank10', 'mAP'), values, strict=True))


def test_release_folder_is_complete_and_small():
    assert {p.name for p in RELEASE.iterdir()} == {'README.md', 'config.json', 'model.safetensors'}
    assert (RELEASE / 'model.safetensors').stat().st_size < 25 * 2 ** 20
    config = json.loads((RELEASE / 'config.json').read_text())
    assert config['architecture'] == 'gam_resnet50_g4'
    assert config['pretrained_cfg']['input_size'] == [3, 64, 32]


def test_pretrained_true_loads_the_committed_weights(hf_cache, tmp_path):
    result = run_offline(hf_cache, tmp_path, [('gam_resnet50_g4', {})])
    assert result.returncode == 0, result.stderr
    loaded = safetensors.torch.load_file(tmp_path / '0.safetensors')
    committed = safetensors.torch.load_file(RELEASE / 'model.safetensors')
    assert loaded.keys() == committed.keys()
    for name, tensor in committed.items():
        assert loaded[name].dtype.is_floating_point == tensor.dtype.is_floating_point, name
        assert (loaded[name].to(tensor.dtype) == tensor).all(), name


@pytest.mark.skipif(not MARKET_DEV.is_dir(), reason='market1501-dev is not beside the checkout')
def test_eval_only_pretrained_reproduces_the_card(hf_cache, tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(hf_cache), HF_HUB_OFFLINE='1', TIMM_GAM_PROGRESS='0')
    result = subprocess.run(  # no size flag: the embedding and input sizes come from the weights
        [sys.executable, str(REPO_ROOT / 'recipes' / 'unsup_reid.py'), '--eval-only', '--pretrained',
         '--model', 'gam_resnet50_g4', '--data-root', str(MARKET_DEV), '--workers', '0',
         '--output', str(tmp_path / 'eval')],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    measured = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    for key, value in card_metrics().items():
        assert measured[key] == pytest.approx(value, abs=0.05), key
