"""recipes/publish.py: a training checkpoint becomes a complete Hub folder that timm loads offline.

The offline loading reuses test_hub's subprocess (``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read when
huggingface_hub is imported, so they are set in a fresh process).
"""
import json
import shlex
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard
from recipe_scripts import load_recipe
from test_hub import assert_same_tensors, run_offline
from tiny_config import tiny_config

from timm_gam import hub, model_card, release
from timm_gam.reid import LoadedEmbedder, ReidEmbedder, load_embedder
from timm_gam.reid.checkpoint import TrainingCheckpoint, load_checkpoint
from timm_gam.reid.config import FIELDS_WITHOUT_FLAG, TrainConfig
from timm_gam.reid.trainer import train

FP32_REPO_ID = 'timm-gam/test_convnext.publish-fp32'
FP16_REPO_ID = 'timm-gam/test_convnext.publish-fp16'


@pytest.fixture(scope='module')
def tiny_run(tiny_run):
    return tiny_run.config, tiny_run.metrics, tiny_run.checkpoint, tiny_run.data_root


@pytest.fixture(scope='module')
def published(tiny_run, tmp_path_factory):
    """fp32 and fp16 dry-run folders, metrics measured by the publish command on the synthetic query set."""
    _, _, checkpoint, data_root = tiny_run
    out = tmp_path_factory.mktemp('hub')
    publish = load_recipe('publish')
    common = ['--checkpoint', str(checkpoint), '--data-root', str(data_root), '--dry-run']
    fp32 = publish.main([*common, '--repo-id', FP32_REPO_ID, '--output', str(out / 'fp32')])
    fp16 = publish.main([*common, '--repo-id', FP16_REPO_ID, '--output', str(out / 'fp16'), '--fp16'])
    return fp32, fp16


def test_dry_run_writes_a_complete_folder(tiny_run, published):
    config, metrics, _, _ = tiny_run
    fp32, fp16 = published
    for folder in (fp32, fp16):
        assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    hf_config = json.loads((fp32 / 'config.json').read_text())
    assert hf_config['architecture'] == 'test_convnext'
    assert hf_config['num_classes'] == config.embed_dim
    pretrained_cfg = hf_config['pretrained_cfg']
    assert pretrained_cfg['input_size'] == [3, *config.image_size]  # trained size, not the model's default
    assert pretrained_cfg['mean'] == list(timm.data.IMAGENET_DEFAULT_MEAN)
    assert pretrained_cfg['crop_pct'] == 1.0
    assert safetensors.torch.load_file(fp16 / 'model.safetensors')['head.fc.weight'].dtype == torch.float16


def test_card_reports_what_publish_measured(tiny_run, published):
    config, metrics, _, data_root = tiny_run
    card = (published[0] / 'README.md').read_text()
    assert 'Measured by `recipes/publish.py` on the published fp32 weights' in card
    # the same weights on the same data: the numbers of the run's own last evaluation
    row = ' | '.join(f'{metrics[k]:.1f}' for k in ('rank1', 'rank5', 'rank10', 'mAP'))
    assert f'| {row} |' in card
    assert str(data_root) not in card  # a path on the training machine means nothing on the Hub
    assert f'`{data_root.name}`' in card
    # the command names the run folder as runs/NAME and the data as DATA, not the training machine's paths
    assert f'--output runs/{Path(config.output).name}' in card and str(config.output) not in card
    assert '--data-root DATA' in card
    sections = ('## Usage', '## Results', '## Model', '## Training', '## Data and licence', '## Limitations')
    assert all(section in card for section in sections)
    assert "timm.create_model('test_convnext', pretrained=True)" in card and 'F.normalize' in card
    assert 'synthetic' in card and 'parameters' in card and 'GMACs' in card
    assert 'fp16 weights' in (published[1] / 'README.md').read_text()


def test_card_metadata_is_the_hubs_and_repeats_the_table(tiny_run, published):
    _, metrics, _, data_root = tiny_run
    card = ModelCard.load(published[0] / 'README.md')
    assert card.data.pipeline_tag == 'image-feature-extraction'
    assert card.data.license == 'apache-2.0'  # synthetic images: no third-party terms
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {'rank1': round(metrics['rank1'], 1), 'mAP': round(metrics['mAP'], 1)}
    baseline = release.measure_colour_histogram(data_root)
    row = ' | '.join(f'{baseline[k]:.1f}' for k in ('rank1', 'rank5', 'rank10', 'mAP'))
    assert 'colour histogram' in card.text and f'| {row} |' in card.text
    assert '@inproceedings{nikhal2021unsupervised' in card.text


def test_folders_load_offline_with_the_published_tensors(tiny_run, published, tmp_path):
    _, _, checkpoint, _ = tiny_run
    cache, out = tmp_path / 'cache', tmp_path / 'loaded'
    out.mkdir()
    hub.install_into_hf_cache(published[0], FP32_REPO_ID, cache_dir=cache)
    hub.install_into_hf_cache(published[1], FP16_REPO_ID, cache_dir=cache)
    result = run_offline(cache, out, [(f'hf-hub:{FP32_REPO_ID}', {}), (f'hf-hub:{FP16_REPO_ID}', {})])
    assert result.returncode == 0, result.stderr
    trained = load_checkpoint(checkpoint)['model']
    assert_same_tensors(trained, safetensors.torch.load_file(out / '0.safetensors'))
    rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in trained.items()}
    assert_same_tensors(rounded, safetensors.torch.load_file(out / '1.safetensors'))


def test_without_data_root_the_card_copies_the_checkpoint_history(tiny_run, tmp_path):
    _, metrics, checkpoint, _ = tiny_run
    loaded = load_embedder(checkpoint=checkpoint)
    folder = release.write_release_folder(loaded, tmp_path / 'hub', FP32_REPO_ID)
    card = (folder / 'README.md').read_text()
    assert 'Copied from the training checkpoint\'s own evaluation' in card
    assert f'{metrics["mAP"]:.1f} |' in card


def test_a_checkpoint_saved_mid_stage_has_no_metrics_to_copy(tiny_run):
    _, _, checkpoint, _ = tiny_run
    saved = TrainingCheckpoint.load(checkpoint)
    assert saved.last_evaluation()['rank1'] == saved.state.history['stages'][-1]['rank1']
    # weights trained past the last evaluation
    saved.state.epoch_in_stage, saved.state.steps = 1, saved.state.steps + 3
    assert saved.last_evaluation() is None


def test_recipe_command_sets_every_flag_of_the_recipe(tiny_run):
    """The card's command, parsed by recipes/unsup_reid.py, gives back the run's configuration; every
    TrainConfig field is either a recipe flag or counted among those without one."""
    config, _, _, _ = tiny_run
    recipe = load_recipe('unsup_reid')
    flags = set(vars(recipe.parse_args([])))
    no_flag = {f.name for f in fields(TrainConfig)} - flags
    assert no_flag == set(FIELDS_WITHOUT_FLAG)
    saved = json.loads(Path(config.output, 'config.json').read_text())
    command = shlex.split(model_card.recipe_command(saved))
    assert command[:2] == ['python', 'recipes/unsup_reid.py']
    rebuilt = recipe.build_config(recipe.parse_args(command[2:]))
    for name in flags & {f.name for f in fields(TrainConfig)}:
        assert getattr(rebuilt, name) == getattr(config, name), name
    # the epoch lists, empty by default (no flag), given as lists of numbers when set
    with_lists = {**saved, 'lr_milestones': [25, 44], 'keep_checkpoints': [32]}
    rebuilt = recipe.build_config(recipe.parse_args(shlex.split(model_card.recipe_command(with_lists))[2:]))
    assert rebuilt.lr_milestones == (25, 44) and rebuilt.keep_checkpoints == (32,)


def test_a_run_resumed_with_changed_settings_is_given_as_its_commands_in_order(tmp_path):
    # the card must reproduce the run as it was made: started with one configuration, continued with another
    first = tiny_config(tmp_path / 'run', model='test_convnext', stages=1)
    train(first)
    final = tiny_config(tmp_path / 'run', model='test_convnext', stages=2, lr=0.05, compile=False,
                        size_update='refresh')
    train(final, resume=True)
    state = TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state
    (resumed,) = state.history['resumed_with']
    assert resumed['epoch'] == 3 and resumed['changes'] == {'lr': [None, 0.05], 'stages': [1, 2],
                                                            'size_update': ['step', 'refresh']}
    lines = model_card.recipe_commands(asdict(final), state).splitlines()
    assert lines[1] == '# continued after 3 epochs, with changed settings:'
    recipe = load_recipe('unsup_reid')
    started = recipe.build_config(recipe.parse_args(shlex.split(lines[0])[2:]))
    for name in set(asdict(first)) - set(FIELDS_WITHOUT_FLAG) - {'output'}:
        assert getattr(started, name) == getattr(first, name), name
    resume_args = recipe.parse_args(shlex.split(lines[2])[2:])
    assert resume_args.resume and resume_args.output == first.output
    given = {k: v for k, v in vars(resume_args).items()
             if k in asdict(final) and v is not None and k != 'output'}
    assert given == {'lr': 0.05, 'stages': 2, 'size_update': 'refresh'}


def test_a_resume_prints_what_it_changes_against_the_saved_run(tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    saved = asdict(tiny_config(run, model='test_convnext'))
    del saved['camera_proxies']  # saved before the field existed: that run used its default
    (run / 'config.json').write_text(json.dumps(saved))
    recipe = load_recipe('unsup_reid')
    config = recipe.build_config(recipe.parse_args(['--output', str(run), '--resume', '--camera-proxies',
                                                    '--stages', str(saved['stages'] + 1)]))
    assert config.camera_proxies and config.stages == saved['stages'] + 1
    assert capsys.readouterr().out.strip() == ('[resume] changing the saved configuration: stages '
                                               f"{saved['stages']} -> {saved['stages'] + 1}, camera_proxies "
                                               'False -> True')


def test_registry_mismatch_names_what_pretrained_true_would_get_wrong():
    loaded = LoadedEmbedder(ReidEmbedder(timm.create_model('test_convnext', num_classes=64)),
                            (128, 64), 'tiny')  # the registered g4 size, another embedding size
    message = release.registry_mismatch(loaded, 'timm-gam/gam_resnet50_g4.unsup_market1501dev')
    assert 'num_classes=64 (registered: 0)' in message and 'input_size' not in message
    loaded.image_size = (64, 32)
    message = release.registry_mismatch(loaded, 'timm-gam/gam_resnet50_g4.unsup_market1501dev')
    assert 'input_size=(3, 64, 32) (registered: (3, 128, 64))' in message
    assert release.registry_mismatch(loaded, FP32_REPO_ID) is None  # not a registered tag


def test_upload_without_a_token_stops_with_the_remedy(published, monkeypatch):
    monkeypatch.setattr(release, 'get_token', lambda: None)
    with pytest.raises(RuntimeError, match='hf auth login.*--dry-run'):
        release.publish(published[0], FP32_REPO_ID)


def test_upload_failure_names_the_repo_and_the_remedy(published, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError('network unreachable')
    monkeypatch.setattr(release, 'push_to_hub', offline)
    with pytest.raises(RuntimeError, match=f'{FP32_REPO_ID} failed .*network unreachable.*--dry-run'):
        release.publish(published[0], FP32_REPO_ID, token='hf_test')


def test_fp16_refuses_weights_beyond_its_range(tiny_run):
    loaded = load_embedder(checkpoint=tiny_run[2])
    with torch.no_grad():
        loaded.backbone.head.fc.bias[0] = 1e5
    with pytest.raises(ValueError, match=r'head.fc.bias .*\(leave out --fp16\)'):
        release.round_weights(loaded.backbone, torch.float16)


def test_a_new_release_keeps_the_folders_earlier_ones_as_rows(tiny_run, tmp_path):
    _, metrics, checkpoint, _ = tiny_run
    folder = tmp_path / 'hub'
    folder.mkdir()
    # a card of the format before "These weights:" lines: its label comes from its Training section
    (folder / 'README.md').write_text(
        '## Results\n\n| rank-1 | rank-5 | rank-10 | mAP |\n|---|---|---|---|\n'
        '| 21.2 | 40.3 | 48.7 | 13.1 |\n\n'
        '## Training\n\nStopped: 6 epochs in all. Training took 1.1 h of wall time (evaluations included; '
        '40 minutes\nwithout them) on a CPU.\n')
    release.write_release_folder(load_embedder(checkpoint=checkpoint), folder, FP32_REPO_ID)
    first = model_card.earlier_releases((folder / 'README.md').read_text())
    this = {k: round(metrics[k], 1) for k in ('rank1', 'rank5', 'rank10', 'mAP')}
    assert [{k: v for k, v in r.items() if k != 'release'} for r in first] == [
        this, dict(rank1=21.2, rank5=40.3, rank10=48.7, mAP=13.1)]
    assert first[1]['release'] == '6 epochs, 40 training minutes'

    # written again from the same run: not a release of its own
    release.write_release_folder(load_embedder(checkpoint=checkpoint), folder, FP32_REPO_ID)
    assert model_card.earlier_releases((folder / 'README.md').read_text()) == first

    # a later run's release: the previous two become the earlier rows, newest first
    card = (folder / 'README.md').read_text()
    (folder / 'README.md').write_text(card.replace(f'These weights: {first[0]["release"]}.',
                                                   'These weights: an older run.'))
    release.write_release_folder(load_embedder(checkpoint=checkpoint), folder, FP32_REPO_ID)
    text = (folder / 'README.md').read_text()
    assert [r['release'] for r in model_card.earlier_releases(text)] == [
        first[0]['release'], 'an older run', '6 epochs, 40 training minutes']
    assert '| 6 epochs, 40 training minutes | 21.2 | 40.3 | 48.7 | 13.1 |' in text


def test_a_warm_started_run_names_the_weights_it_started_from(tiny_run):
    """A run from ``--pretrained`` weights is not from scratch: the card and the release line say where it
    started (the model's default pretrained weights in timm's registry), so an earlier release's epochs
    are not read as this one's."""
    _, _, checkpoint, _ = tiny_run
    loaded = load_embedder(checkpoint=checkpoint)
    scratch = model_card.model_card(loaded, FP32_REPO_ID, metrics=None, measured_by_publish=False)
    assert 'from scratch (no ImageNet weights)' in scratch and 'warm-started' not in scratch
    assert 'warm-started' not in model_card.release_summary(loaded.checkpoint)

    loaded.checkpoint.config['pretrained'] = True
    source = timm.models.get_pretrained_cfg(loaded.checkpoint.config['model']).hf_hub_id
    warm = model_card.model_card(loaded, FP32_REPO_ID, metrics=None, measured_by_publish=False)
    assert "warm-started from the weights `timm.create_model('test_convnext', pretrained=True)`" in warm
    assert f'`{source}` as it stood then' in warm and 'from scratch' not in warm
    assert model_card.release_summary(loaded.checkpoint).endswith(f', warm-started from `{source}`')


def test_the_card_gives_the_curve_of_the_evaluations_after_each_stage(tiny_run):
    """Without timed evaluations the card still shows whether the run was rising: one row per stage's."""
    _, _, checkpoint, _ = tiny_run
    loaded = load_embedder(checkpoint=checkpoint)
    card = model_card.model_card(loaded, FP32_REPO_ID, metrics=None, measured_by_publish=False)
    stages = [r for r in loaded.checkpoint.state.history['stages'] if 'mAP' in r]
    assert len(stages) >= 2 and not loaded.checkpoint.state.history.get('timed')
    curve = card.split('| minutes | epoch | stage | clusters | rank-1 | mAP |')[1].split('\n\n')[0]
    rows = [row.split('|')[1:-1] for row in curve.strip().splitlines()[1:]]
    assert [(int(stage), float(m)) for _, _, stage, _, _, m in rows] == [
        (r['stage'], round(r['mAP'], 1)) for r in stages]


def test_weights_released_again_quote_the_training_of_their_release():
    card = ('# g4\n\n## Model\n\n| a | b |\n\n## Training\n\nTrained for 60 epochs.\n\n| minutes | mAP |\n'
            '|---|---|\n| 20.0 | 15.4 |\n\n## Data and licence\n\nResearch only.\n')
    section = model_card.training_section(card)
    assert section == 'Trained for 60 epochs.\n\n| minutes | mAP |\n|---|---|\n| 20.0 | 15.4 |'
    config = {'pretrained': True, 'model': 'gam_resnet50_g4', 'retrieval_features': 'pooled'}
    paragraph = model_card._unchanged_weights_paragraph(config, section)
    assert 'Not trained further' in paragraph and 'compared by their pooled features' in paragraph
    assert '`timm-gam/gam_resnet50_g4.unsup_market1501dev`' in paragraph  # the registered source
    assert '> Trained for 60 epochs.\n>\n> | minutes | mAP |' in paragraph
    assert 'not recorded here' in model_card._unchanged_weights_paragraph(config, None)
    assert model_card.training_section('# no training section\n') is None
