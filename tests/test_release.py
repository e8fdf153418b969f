"""The committed releases under hub/: timm's real Hub code path loads exactly those weights offline, the
registered cfg describes them, and both the recipe's ``--eval-only --pretrained`` and timm's own transform
from the pretrained cfg reproduce the numbers each model card states."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard
from test_hub import run_offline

import timm_gam  # noqa: F401  registers the models
from timm_gam import hub

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASES = sorted(p for p in (REPO_ROOT / 'hub').iterdir() if p.is_dir())
# the paper's main model, whose release other tests (feature extractor, eval-only) load
REPO_ID = 'timm-gam/gam_resnet50_g4.unsup_market1501dev'
RELEASE = REPO_ROOT / 'hub' / 'gam_resnet50_g4.unsup_market1501dev'
MARKET_DEV = REPO_ROOT.parent / 'shared' / 'data' / 'market1501-dev'
needs_market_dev = pytest.mark.skipif(not MARKET_DEV.is_dir(),
                                      reason='market1501-dev is not beside the checkout')

# embeds market1501-dev's query and gallery with each model timm creates with pretrained=True, fed by
# timm's own eval transform from the model's pretrained cfg, and writes the scores as <out>/<name>.json
TIMM_TRANSFORM_SCRIPT = """
import json, sys
import timm, timm_gam
from timm_gam.reid import ReidEmbedder, extract_embeddings, load_reid_dataset
from timm_gam.reid.evaluation import evaluate_split
out, data_root, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
splits = load_reid_dataset(data_root)
for name in names:
    model = ReidEmbedder(timm.create_model(name, pretrained=True)).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model.backbone))
    query, gallery = (extract_embeddings(model, split, transform) for split in (splits.query, splits.gallery))
    json.dump(evaluate_split(query, gallery, splits.query, splits.gallery), open(f'{out}/{name}.json', 'w'))
"""


def architecture(release: Path) -> str:
    return json.loads((release / 'config.json').read_text())['architecture']


def repo_id(release: Path) -> str:
    return f'timm-gam/{release.name}'


@pytest.fixture(scope='module')
def hf_cache(tmp_path_factory):
    """A Hub cache holding every committed release, as a download would leave it."""
    cache = tmp_path_factory.mktemp('hf_cache')
    for release in RELEASES:
        hub.install_into_hf_cache(release, repo_id(release), cache_dir=cache)
    return cache


def card_metrics(release: Path) -> dict:
    """The rank-1/5/10 and mAP row of the model card's results table."""
    card = (release / 'README.md').read_text()
    row = re.search(r'\| rank-1 \| rank-5 \| rank-10 \| mAP \|\n\|[-|]+\|\n\|([^\n]+)\|', card)
    values = [float(v) for v in row.group(1).split('|')]
    return dict(zip(('rank1', 'rank5', 'rank10', 'mAP'), values, strict=True))


def test_every_gam_resnet50_has_a_release():
    assert sorted(architecture(r) for r in RELEASES) == sorted(
        f'gam_resnet50_g{groups}' for groups in (2, 4, 8, 16))


@pytest.mark.parametrize('release', RELEASES, ids=lambda r: r.name)
def test_release_folder_is_complete_small_and_registered(release):
    assert {p.name for p in release.iterdir()} == {'README.md', 'config.json', 'model.safetensors'}
    weights = safetensors.torch.load_file(release / 'model.safetensors')
    assert {t.dtype for t in weights.values() if t.dtype.is_floating_point} == {torch.float16}  # fp16
    assert (release / 'model.safetensors').stat().st_size < 40 * 2 ** 20  # g2, the largest: 34 MiB
    saved = json.loads((release / 'config.json').read_text())['pretrained_cfg']
    registered = timm.create_model(architecture(release)).pretrained_cfg  # what pretrained=True uses
    assert registered['hf_hub_id'] == repo_id(release)
    for key in ('input_size', 'num_classes', 'pool_size', 'mean', 'std', 'interpolation', 'crop_pct',
                'crop_mode'):
        assert json.loads(json.dumps(registered[key])) == saved[key], key  # tuples as config.json has lists
    assert saved['crop_mode'] == 'squash'  # training resized whole crops: timm must not cut out the centre


@pytest.mark.parametrize('release', RELEASES, ids=lambda r: r.name)
def test_every_card_follows_the_hubs_metadata_and_matches_its_table(release):
    card = ModelCard.load(release / 'README.md')  # huggingface_hub's own parser, as the Hub reads it
    data = card.data
    assert data.pipeline_tag == 'image-feature-extraction' and data.library_name == 'timm'
    assert data.license == 'other' and data.license_name and data.license_link
    assert data.datasets == ['market1501']
    table = card_metrics(release)
    results = {r.metric_type: r for r in data.eval_results}
    assert results.keys() == {'rank1', 'mAP'}
    for key, result in results.items():
        assert result.metric_value == table[key], key
        assert '100-identity' in result.dataset_name and result.dataset_split
    text = card.text
    words = ' '.join(text.split())
    assert '100-identity subset of Market-1501' in words and 'not comparable with published' in words
    assert '| 29.1 | 46.4 | 55.5 | 14.7 |' in text  # the colour histogram on the same split (docs/results.md)
    assert 'pip install' in text and '@inproceedings{nikhal2021unsupervised' in text
    stages = json.loads(re.search(r'--stages (\d+)', text)[1]) if '--stages' in text else None
    stopped = re.search(r'in stage (\d+) \(stages 0 to (\d+)\)', text)
    assert stopped is None or int(stopped[2]) == stages


def test_pretrained_true_loads_the_committed_weights(hf_cache, tmp_path):
    result = run_offline(hf_cache, tmp_path, [(architecture(r), {}) for r in RELEASES])
    assert result.returncode == 0, result.stderr
    for index, release in enumerate(RELEASES):
        loaded = safetensors.torch.load_file(tmp_path / f'{index}.safetensors')
        committed = safetensors.torch.load_file(release / 'model.safetensors')
        assert loaded.keys() == committed.keys(), release.name
        for name, tensor in committed.items():
            assert loaded[name].dtype.is_floating_point == tensor.dtype.is_floating_point, name
            assert (loaded[name].to(tensor.dtype) == tensor).all(), (release.name, name)


@needs_market_dev
def test_timm_transform_from_the_pretrained_cfg_reproduces_every_card(hf_cache, tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(hf_cache), HF_HUB_OFFLINE='1', TIMM_GAM_PROGRESS='0')
    names = [architecture(r) for r in RELEASES]
    result = subprocess.run([sys.executable, '-c', TIMM_TRANSFORM_SCRIPT, str(tmp_path), str(MARKET_DEV),
                             json.dumps(names)], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    for name, release in zip(names, RELEASES, strict=True):
        measured = json.loads((tmp_path / f'{name}.json').read_text())
        for key, value in card_metrics(release).items():
            assert measured[key] == pytest.approx(value, abs=0.05), (release.name, key)


@needs_market_dev
def test_eval_only_pretrained_reproduces_the_card(hf_cache, tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(hf_cache), HF_HUB_OFFLINE='1', TIMM_GAM_PROGRESS='0')
    result = subprocess.run(  # no size flag: the embedding and input sizes come from the weights
        [sys.executable, str(REPO_ROOT / 'recipes' / 'unsup_reid.py'), '--eval-only', '--pretrained',
         '--model', 'gam_resnet50_g4', '--data-root', str(MARKET_DEV), '--workers', '0',
         '--output', str(tmp_path / 'eval')],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    measured = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    for key, value in card_metrics(RELEASE).items():
        assert measured[key] == pytest.approx(value, abs=0.05), key


def test_the_g4_release_says_its_weights_are_the_earlier_ones_and_how_those_were_trained():
    """g4 was released again without a training step, to be compared by its pooled features: its card
    says so and quotes the Training section of the release whose weights it carries."""
    text = (RELEASE / 'README.md').read_text()
    training = text[text.index('## Training'):text.index('## Data and licence')]
    assert 'Not trained further' in training and 'pooled features' in training
    assert '> with loss `idl+acl`, clusters formed afresh by DBSCAN' in training
    assert '60 epochs in all' in training
