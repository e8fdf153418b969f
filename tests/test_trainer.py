"""End to end on tiny synthetic images: the schedule, retrieval, checkpoints and resuming.

``test_efficientnet_gn`` is timm's tiny test network with GroupNorm: it learns on these images within a
few epochs (timm's ``test_convnext`` collapses to a constant embedding at this learning rate).
"""
import json

import pytest
import torch

from timm_gam.reid.checkpoint import CheckpointError, load_checkpoint
from timm_gam.reid.trainer import TrainConfig, evaluate_run, train

TINY = dict(image_size=(64, 32), embed_dim=64, batch_size=16, warmup_epochs=2, epochs_per_stage=1,
            stages=2, merge_percent=0.2, lr_decay_epochs=10, workers=0, eval_batch_size=64,
            synthetic=dict(num_train_identities=12, num_test_identities=8, num_cameras=3,
                           images_per_identity_per_camera=2, image_size=(64, 32)))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    config = TrainConfig(output=str(tmp_path_factory.mktemp('run')), model='test_efficientnet_gn', **TINY)
    return config, train(config)


def test_clusters_fall_as_scheduled(tiny_run):
    config, metrics = tiny_run
    counts = [stage['num_clusters'] for stage in metrics['history']]
    n = metrics['num_train_images']
    per_stage = round(config.merge_percent * n)
    assert counts == [n, n - per_stage, n - 2 * per_stage]


def test_retrieval_improves_over_the_untrained_model(tiny_run):
    _, metrics = tiny_run
    assert metrics['mAP'] > metrics['untrained']['mAP']


def test_run_folder_has_valid_log_metrics_and_checkpoint(tiny_run):
    config, metrics = tiny_run
    lines = [json.loads(line) for line in open(f'{config.output}/log.jsonl')]
    assert [e['event'] for e in lines].count('stage') == config.stages + 1
    saved = json.load(open(f'{config.output}/metrics.json'))
    assert {'rank1', 'rank5', 'rank10', 'mAP', 'num_clusters', 'wall_time_s'} <= set(saved)
    state = load_checkpoint(f'{config.output}/checkpoint.pt')
    assert state['state']['stage'] == config.stages + 1
    assert len(state['state']['cluster_labels']) == metrics['num_train_images']


def test_eval_only_reproduces_final_metrics(tiny_run):
    config, metrics = tiny_run
    checkpoint = f'{config.output}/checkpoint.pt'
    again = evaluate_run(TrainConfig(output=config.output, **TINY), checkpoint=checkpoint)
    for key in ('rank1', 'mAP'):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)


def test_checkpoint_of_another_model_is_refused(tiny_run, tmp_path):
    config, _ = tiny_run
    other = TrainConfig(output=config.output, **{**TINY, 'model': 'test_convnext'})
    with pytest.raises(CheckpointError, match='test_efficientnet_gn'):
        train(other, resume=True)


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    """Stop after stage 0, resume: same clusters and weights as one run in a go."""
    straight = TrainConfig(output=str(tmp_path / 'straight'), model='test_efficientnet_gn', **TINY)
    train(straight)
    first_leg = TrainConfig(output=str(tmp_path / 'split'), model='test_efficientnet_gn',
                            **{**TINY, 'stages': 0})
    train(first_leg)
    second_leg = TrainConfig(output=str(tmp_path / 'split'), model='test_efficientnet_gn', **TINY)
    train(second_leg, resume=True)
    a = load_checkpoint(tmp_path / 'straight' / 'checkpoint.pt')
    b = load_checkpoint(tmp_path / 'split' / 'checkpoint.pt')
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    for key, value in a['model'].items():
        assert torch.allclose(value.float(), b['model'][key].float(), atol=1e-5), key
