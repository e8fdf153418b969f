"""Bad input for the recipe: one ``error: ...`` line naming the path and the fix, exit status 2.

Image-level problems (corrupt, zero-byte, grayscale, 16-bit files, misnamed files, the name parser) are
covered where they are detected, in ``test_datasets.py``; here the whole command line meets them, plus the
checkpoint and training-time failures: another model's checkpoint, a corrupt one, a loss gone NaN.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from recipe_scripts import load_recipe

from timm_gam.reid import trainer
from timm_gam.reid.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from timm_gam.reid.datasets import prepare_data
from timm_gam.reid.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / 'recipes' / 'unsup_reid.py'
SMOKE = ['--preset', 'smoke', '--model', 'test_convnext']


recipe = load_recipe('unsup_reid')


def run_recipe(capsys, *args) -> str:
    """Run the command line in this process; return its error line after checking the exit status is 2."""
    assert recipe.run_cli([*SMOKE, *map(str, args)]) == 2
    err = capsys.readouterr().err
    # whatever was printed before it (a progress bar on a terminal), the error comes last, on lines of its own
    match = re.search(r'(?:^|[\r\n])(error: .*)', err, flags=re.DOTALL)
    assert match and 'Traceback' not in err, err
    return match.group(1)


def write_image(path: Path, seed: int = 0, size=(64, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


@pytest.fixture(scope='module')
def warmed_up(tmp_path_factory):
    """A finished one-stage smoke run: its folder and the bytes of its (good) checkpoint."""
    output = tmp_path_factory.mktemp('warmed_up')
    assert recipe.run_cli([*SMOKE, '--output', str(output), '--warmup-epochs', '1', '--stages', '0']) == 0
    return output, (output / 'checkpoint.pt').read_bytes()


def copy_run(warmed_up, tmp_path) -> Path:
    output, _ = warmed_up
    copy = tmp_path / 'run'
    shutil.copytree(output, copy, symlinks=True)
    return copy


# -- data --------------------------------------------------------------------------------------------


def test_missing_data_root(capsys, tmp_path):
    err = run_recipe(capsys, '--data-root', tmp_path / 'nowhere', '--output', tmp_path / 'out')
    assert f'{tmp_path / "nowhere"} does not exist' in err and '--data-root' in err


def test_empty_data_root(capsys, tmp_path):
    (tmp_path / 'empty').mkdir()
    err = run_recipe(capsys, '--data-root', tmp_path / 'empty', '--output', tmp_path / 'out')
    assert f'{tmp_path / "empty"} is empty' in err


def test_misnamed_market_folders(capsys, tmp_path):
    for folder in ('train', 'query', 'bounding_box_test'):
        write_image(tmp_path / 'data' / folder / '0001_c1s1_000001_00.jpg')
    err = run_recipe(capsys, '--data-root', tmp_path / 'data', '--output', tmp_path / 'out')
    assert 'not in Market-1501 layout' in err and "'bounding_box_train'" in err and 'Rename' in err


def test_the_command_line_itself_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(RECIPE), *SMOKE, '--data-root', str(tmp_path / 'nowhere')],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith('error: data root') and 'Traceback' not in result.stderr


def tiny_folder_config(root: Path, output: Path, **overrides) -> TrainConfig:
    values = dict(output=str(output), data_root=str(root), layout='folder', model='test_convnext',
                  image_size=(64, 32), embed_dim=16, batch_size=8, warmup_epochs=1, epochs_per_stage=1,
                  stages=1, merge_percent=0.5, workers=0)
    return TrainConfig(**{**values, **overrides})


def logged_losses(output: Path) -> list[float]:
    events = [json.loads(line) for line in open(output / 'log.jsonl')]
    return [e[key] for e in events if e['event'] == 'epoch' for key in ('loss', 'idl', 'acl')]


def test_one_image_only_trains(tmp_path):
    write_image(tmp_path / 'data' / 'only.jpg')
    metrics = train(tiny_folder_config(tmp_path / 'data', tmp_path / 'out'))
    assert metrics['num_train_images'] == 1 and metrics['num_clusters'] == 1
    assert np.isfinite(logged_losses(tmp_path / 'out')).all()


def test_identical_images_train_and_merge_at_zero_distance(tmp_path):
    """Every embedding equal: IDL and ACL stay finite, and ties at distance 0 still merge as scheduled."""
    write_image(tmp_path / 'data' / 'a.jpg')
    for i in range(1, 8):
        shutil.copy(tmp_path / 'data' / 'a.jpg', tmp_path / 'data' / f'copy{i}.jpg')
    metrics = train(tiny_folder_config(tmp_path / 'data', tmp_path / 'out'))
    assert [stage['num_clusters'] for stage in metrics['history']] == [8, 4]
    assert np.isfinite(logged_losses(tmp_path / 'out')).all()


# -- checkpoints -------------------------------------------------------------------------------------


def test_resume_with_another_model_names_both(capsys, warmed_up, tmp_path):
    run = copy_run(warmed_up, tmp_path)
    err = run_recipe(capsys, '--output', run, '--resume', '--model', 'test_efficientnet_gn')
    assert str(run / 'checkpoint.pt') in err and "'test_convnext'" in err and '--model test_convnext' in err


def test_resume_with_another_embedding_size(capsys, warmed_up, tmp_path):
    run = copy_run(warmed_up, tmp_path)
    err = run_recipe(capsys, '--output', run, '--resume', '--embed-dim', '32')
    assert 'embedding size 64' in err and '--embed-dim 64' in err


def test_resume_on_other_images_is_refused(capsys, warmed_up, tmp_path):
    """Cluster labels are keyed by position in the training list: another list must not inherit them."""
    run = copy_run(warmed_up, tmp_path)
    train_folder = run / 'data' / 'synthetic' / 'bounding_box_train'
    os.remove(sorted(train_folder.iterdir())[0])
    err = run_recipe(capsys, '--output', run, '--resume', '--data-root', run / 'data' / 'synthetic')
    assert 'was trained on another list of images' in err and '--data-root' in err


def test_eval_only_with_weights_that_do_not_fit(capsys, warmed_up, tmp_path):
    output, _ = warmed_up
    state = load_checkpoint(output / 'checkpoint.pt')
    state['model'] = {name: value[..., :1] for name, value in state['model'].items()}  # wrong shapes
    save_checkpoint({k: v for k, v in state.items() if k != 'format'}, tmp_path / 'mangled.pt')
    err = run_recipe(capsys, '--eval-only', '--checkpoint', tmp_path / 'mangled.pt',
                     '--data-root', output / 'data' / 'synthetic')
    assert str(tmp_path / 'mangled.pt') in err and "'test_convnext'" in err


@pytest.mark.parametrize('content', [b'', b'not a checkpoint\n', 'half'], ids=['empty', 'text', 'truncated'])
def test_eval_only_with_a_corrupt_checkpoint(capsys, warmed_up, tmp_path, content):
    output, good_bytes = warmed_up
    bad = tmp_path / 'checkpoint.pt'
    bad.write_bytes(good_bytes[:len(good_bytes) // 2] if content == 'half' else content)
    err = run_recipe(capsys, '--eval-only', '--checkpoint', bad, '--data-root', output / 'data' / 'synthetic')
    assert f'checkpoint {bad} could not be read' in err and 'corrupt' in err


def test_eval_only_with_a_missing_checkpoint(capsys, warmed_up, tmp_path):
    output, _ = warmed_up
    err = run_recipe(capsys, '--eval-only', '--checkpoint', tmp_path / 'gone.pt',
                     '--data-root', output / 'data' / 'synthetic')
    assert f'{tmp_path / "gone.pt"} does not exist' in err


# -- a loss gone NaN ---------------------------------------------------------------------------------


def test_exploding_learning_rate_stops_and_keeps_the_checkpoint(capsys, warmed_up, tmp_path):
    run = copy_run(warmed_up, tmp_path)
    _, good_bytes = warmed_up
    err = run_recipe(capsys, '--output', run, '--resume', '--stages', '1', '--lr', '1e6')
    assert 'stage 1 epoch 1: the loss became nan' in err and f'{run / "checkpoint.pt"} is kept' in err
    assert (run / 'checkpoint.pt').read_bytes() == good_bytes


def test_nan_gradients_in_an_epochs_last_step_never_reach_the_checkpoint(monkeypatch, warmed_up, tmp_path):
    """A finite loss with NaN gradients poisons the weights silently; the epoch's end must catch it."""
    run = copy_run(warmed_up, tmp_path)
    _, good_bytes = warmed_up
    train_images = prepare_data(run / 'data' / 'synthetic').train
    steps_per_epoch = len(train_images) // recipe.PRESETS['smoke']['batch_size']
    real_idl_loss, calls = trainer.idl_loss, []

    def idl_with_nan_gradient_in_the_last_step(*args, **kwargs):
        loss = real_idl_loss(*args, **kwargs)
        calls.append(loss)
        if len(calls) < steps_per_epoch:
            return loss
        return torch.where(torch.tensor(True), loss, (-loss.abs() - 1).sqrt())  # value kept, gradient NaN

    monkeypatch.setattr(trainer, 'idl_loss', idl_with_nan_gradient_in_the_last_step)
    config = TrainConfig(output=str(run), model='test_convnext', **{**recipe.PRESETS['smoke'], 'stages': 1})
    with pytest.raises(FloatingPointError, match='stage 1 epoch 1: the weights became non-finite'):
        train(config, resume=True)
    assert (run / 'checkpoint.pt').read_bytes() == good_bytes


# -- safe loading ------------------------------------------------------------------------------------


class _WritesAFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), 'w')


def test_a_pickle_with_arbitrary_objects_is_not_unpickled(tmp_path):
    marker = tmp_path / 'payload-ran'
    torch.save({'format': CHECKPOINT_FORMAT, 'payload': _WritesAFileWhenUnpickled(marker)},
               tmp_path / 'evil.pt')
    with pytest.raises(CheckpointError, match='could not be read'):
        load_checkpoint(tmp_path / 'evil.pt')
    assert not marker.exists()


def test_hub_weights_load_from_safetensors_never_from_a_pickle(monkeypatch, tmp_path):
    """A Hub repo with only a pickled ``pytorch_model.bin``: timm falls back to it, and must not run code."""
    import huggingface_hub
    import timm
    from timm.models import load_state_dict_from_hf

    from timm_gam.hub import install_into_hf_cache, save_hub_folder
    folder = save_hub_folder(timm.create_model('test_convnext'), tmp_path / 'folder')
    marker = tmp_path / 'payload-ran'
    torch.save({'payload': _WritesAFileWhenUnpickled(marker)}, folder / 'pytorch_model.bin')
    snapshot = install_into_hf_cache(folder, 'someone/evil', cache_dir=tmp_path / 'cache')
    (snapshot / 'model.safetensors').unlink()  # leave only the pickle to fall back on
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(RuntimeError, match='weights_only=True blocked loading'):
        load_state_dict_from_hf('someone/evil', cache_dir=tmp_path / 'cache')
    assert not marker.exists()


# -- the configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize('field, value', [
    ('layout', 'imagenet'), ('loss', 'triplet'), ('cluster_distance', 'cosine'), ('size_update', 'never'),
    ('embed_dim', 0), ('image_size', (64,)), ('temperature', 0.0), ('memory_momentum', 1.0),
    ('greyscale_view', 1.5), ('batch_size', 0), ('lr', -0.1), ('momentum', 1.5), ('weight_decay', -1e-4),
    ('lr_decay_epochs', 0),
    ('lr_decay', 0.0), ('warmup_epochs', -1), ('epochs_per_stage', 0), ('stages', -1), ('merge_percent', 0.0),
    ('merge_percent', 1.5), ('size_penalty', -0.01), ('max_cluster_size', 0), ('target_clusters', 0),
    ('workers', -1), ('device', 'gpu0'), ('eval_batch_size', 0), ('log_every', 0),
    ('synthetic', {'num_people': 3}), ('final_image_size', (64,)), ('final_size_epochs', -1),
    ('lr_milestones', (44, 25)), ('lr_milestones', (0,)), ('keep_checkpoints', (32, 32)),
])
def test_every_bad_field_is_refused_when_the_config_is_made(field, value):
    """Not at the first merge after an hour of warm-up: when the config is made, naming the field."""
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize('schedule, problem', [
    (dict(final_image_size=(128, 64)), '--final-size-epochs'),
    (dict(final_size_epochs=4), '--final-image-size'),
    (dict(final_image_size=(128, 64), final_size_epochs=61, warmup_epochs=20, stages=20, epochs_per_stage=2),
     'only 60 epochs'),
])
def test_a_resolution_schedule_needs_both_its_settings_and_fits_the_schedule(schedule, problem):
    with pytest.raises(ValueError, match=problem):
        TrainConfig(**schedule)


def test_the_command_line_offers_the_librarys_choices():
    from timm_gam.reid.clustering import DISTANCES, SIZE_UPDATES
    from timm_gam.reid.datasets import LAYOUTS
    for flag, choices in (('--layout', LAYOUTS), ('--cluster-distance', DISTANCES),
                          ('--size-update', SIZE_UPDATES), ('--loss', trainer.LOSSES)):
        for choice in choices:
            recipe.parse_args([flag, choice])
        with pytest.raises(SystemExit):
            recipe.parse_args([flag, 'not-a-choice'])
