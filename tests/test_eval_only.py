"""``recipes/unsup_reid.py --eval-only``: the model's sizes come from its weights, a test set alone is
enough, and the figures land in ``--output`` as a training run's do."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from recipe_scripts import RECIPE, load_recipe
from test_release import RELEASE, REPO_ID

from timm_gam import hub
from timm_gam.reid.datasets import MARKET_FOLDERS

recipe = load_recipe('unsup_reid')


@pytest.fixture(scope='module')
def tiny_run(tiny_run, tmp_path_factory):
    """The session's smoke run, and a copy of its test split alone (query/ and bounding_box_test/)."""
    data = tmp_path_factory.mktemp('testset') / 'market'
    for split in ('query', 'gallery'):
        folder = MARKET_FOLDERS[split]
        shutil.copytree(tiny_run.data_root / folder, data / folder)
    return tiny_run.config, tiny_run.metrics, str(tiny_run.checkpoint), data


def test_a_test_set_alone_is_enough_and_the_figures_are_written(tiny_run, tmp_path):
    _, metrics, checkpoint, testset = tiny_run
    output = tmp_path / 'eval'
    assert recipe.run_cli(['--eval-only', '--checkpoint', checkpoint, '--data-root', str(testset),
                           '--output', str(output)]) == 0
    written = json.loads((output / 'metrics.json').read_text())
    for key in ('rank1', 'rank5', 'rank10', 'mAP'):
        assert written[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert written['embed_dim'] == 64 and written['image_size'] == [64, 32]
    (event,) = [json.loads(line) for line in (output / 'log.jsonl').read_text().splitlines()]
    assert event['event'] == 'eval' and event['mAP'] == written['mAP']


def test_the_sizes_come_from_the_checkpoint_not_the_preset(tiny_run, tmp_path):
    """The paper preset (2048-d, 256x128) is the default with --data-root; the checkpoint is 64-d, 64x32."""
    _, metrics, checkpoint, testset = tiny_run
    metrics_again = recipe.main(['--eval-only', '--checkpoint', checkpoint, '--data-root', str(testset),
                                 '--output', str(tmp_path / 'eval')])
    assert metrics_again['mAP'] == pytest.approx(metrics['mAP'], abs=1e-6)


@pytest.mark.parametrize('flags, message', [
    (['--embed-dim', '32'], 'embeds in 64 dimensions, not 32'),
    (['--image-size', '128', '64'], 'was trained on 64x32 images, not 128x64'),
    (['--model', 'test_efficientnet_gn'], "holds a 'test_convnext' model"),
])
def test_a_flag_that_contradicts_the_weights_is_an_error(tiny_run, tmp_path, capsys, flags, message):
    _, _, checkpoint, testset = tiny_run
    output = tmp_path / 'eval'
    assert recipe.run_cli(['--eval-only', '--checkpoint', checkpoint, '--data-root', str(testset),
                           '--output', str(output), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_a_training_run_folder_is_not_overwritten(tiny_run, capsys):
    config, _, checkpoint, testset = tiny_run
    before = open(f'{config.output}/metrics.json').read()
    assert recipe.run_cli(['--eval-only', '--checkpoint', checkpoint, '--data-root', str(testset),
                           '--output', config.output]) == 2
    assert 'holds a training run' in capsys.readouterr().err
    assert open(f'{config.output}/metrics.json').read() == before


def test_one_model_must_be_named(tiny_run, capsys):
    _, _, checkpoint, testset = tiny_run
    assert recipe.run_cli(['--eval-only', '--data-root', str(testset)]) == 2
    assert '--checkpoint' in capsys.readouterr().err
    assert recipe.run_cli(['--checkpoint', checkpoint]) == 2  # a checkpoint without --eval-only
    assert '--resume' in capsys.readouterr().err


def test_pretrained_weights_are_evaluated_at_their_own_size(tiny_run, tmp_path):
    """The published g4 gives 2048-d pooled features at 128x64: no flag needed, and --embed-dim 1024 (its
    training head's size) is refused, not rebuilt."""
    *_, testset = tiny_run
    hub.install_into_hf_cache(RELEASE, REPO_ID, cache_dir=tmp_path / 'cache')
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'cache'), HF_HUB_OFFLINE='1', TIMM_GAM_PROGRESS='0')
    command = [sys.executable, str(RECIPE), '--eval-only', '--pretrained', '--data-root', str(testset),
               '--workers', '0']
    result = subprocess.run([*command, '--output', str(tmp_path / 'eval')], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert written['embed_dim'] == 2048 and written['image_size'] == [128, 64]
    assert written['pretrained'] == 'gam_resnet50_g4'
    result = subprocess.run([*command, '--embed-dim', '1024', '--output', str(tmp_path / 'other')], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert 'embeds in 2048 dimensions, not 1024' in result.stderr
    result = subprocess.run([*command, '--retrieval-features', 'head', '--output', str(tmp_path / 'head')],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert 'has no embedding head' in result.stderr and 'leave out --retrieval-features head' in result.stderr


def test_pretrained_weights_missing_from_an_offline_cache_are_one_error_with_the_fix(tiny_run, tmp_path):
    *_, testset = tiny_run
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'empty-cache'), HF_HUB_OFFLINE='1',
               TIMM_GAM_PROGRESS='0')
    command = [sys.executable, str(RECIPE), '--eval-only', '--pretrained', '--data-root', str(testset),
               '--workers', '0', '--output', str(tmp_path / 'eval')]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no weights for 'gam_resnet50_g4' in the Hugging Face Hub cache")
    assert 'Traceback' not in result.stderr
