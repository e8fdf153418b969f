"""End to end on tiny synthetic images: the schedule, retrieval, checkpoints and resuming.

``test_efficientnet_gn`` is timm's tiny test network with GroupNorm: it learns on these images within a
few epochs (timm's ``test_convnext`` collapses to a constant embedding at this learning rate).
"""
import json

import pytest
import torch
from tiny_config import tiny_config

from timm_gam.model_card import model_card
from timm_gam.reid.checkpoint import CheckpointError, load_checkpoint
from timm_gam.reid.embedding import load_embedder
from timm_gam.reid.eval_only import evaluate_run
from timm_gam.reid.trainer import train


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp('run'), model='test_efficientnet_gn')
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


def test_idl_alone_keeps_every_image_its_own_class(tmp_path):
    # --loss idl is the paper's IDL row: instance discrimination (Eq. 4-6) with no cluster loss to merge for
    config = tiny_config(tmp_path, model='test_efficientnet_gn', loss='idl')
    metrics = train(config)
    n = metrics['num_train_images']
    assert [stage['num_clusters'] for stage in metrics['history']] == [n] * (config.stages + 1)
    events = [json.loads(line) for line in open(f'{config.output}/log.jsonl')]
    assert not [e for e in events if e['event'] == 'merge']
    epochs = [e for e in events if e['event'] == 'epoch']
    assert epochs and all(e['acl'] == 0 and e['idl'] > 0 for e in epochs)


def test_idl_only_warm_up_then_acl(tmp_path):
    # acl_from_stage=1: stage 0 trains IDL alone, the later stages merge and add ACL (Eq. 11)
    config = tiny_config(tmp_path, model='test_efficientnet_gn', acl_from_stage=1)
    metrics = train(config)
    events = [json.loads(line) for line in open(f'{config.output}/log.jsonl')]
    epochs = [e for e in events if e['event'] == 'epoch']
    assert [e['acl'] == 0 for e in epochs] == [e['stage'] == 0 for e in epochs]
    assert len([e for e in events if e['event'] == 'merge']) == config.stages
    assert metrics['history'][-1]['num_clusters'] < metrics['num_train_images']


def test_run_folder_has_valid_log_metrics_and_checkpoint(tiny_run):
    config, metrics = tiny_run
    lines = [json.loads(line) for line in open(f'{config.output}/log.jsonl')]
    assert [e['event'] for e in lines].count('stage') == config.stages + 1
    saved = json.load(open(f'{config.output}/metrics.json'))
    assert {'rank1', 'rank5', 'rank10', 'mAP', 'num_clusters', 'wall_time_s'} <= set(saved)
    state = load_checkpoint(f'{config.output}/checkpoint.pt')
    assert state['state']['stage'] == config.stages + 1
    assert len(state['state']['cluster_labels']) == metrics['num_train_images']


def test_eval_only_reproduces_final_metrics(tiny_run, tmp_path):
    config, metrics = tiny_run
    checkpoint = f'{config.output}/checkpoint.pt'
    data = f'{config.output}/data/synthetic'
    again = evaluate_run(tiny_config(tmp_path / 'eval', data_root=data), checkpoint=checkpoint)
    for key in ('rank1', 'mAP'):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)


def test_checkpoint_of_another_model_is_refused(tiny_run, tmp_path):
    config, _ = tiny_run
    other = tiny_config(config.output, model='test_convnext')
    with pytest.raises(CheckpointError, match='test_efficientnet_gn'):
        train(other, resume=True)


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    """Stop after stage 0, resume: same clusters and weights as one run in a go."""
    train(tiny_config(tmp_path / 'straight', model='test_efficientnet_gn'))
    train(tiny_config(tmp_path / 'split', model='test_efficientnet_gn', stages=0))
    train(tiny_config(tmp_path / 'split', model='test_efficientnet_gn'), resume=True)
    a = load_checkpoint(tmp_path / 'straight' / 'checkpoint.pt')
    b = load_checkpoint(tmp_path / 'split' / 'checkpoint.pt')
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key
    assert torch.equal(a['state']['memory']['centroids'], b['state']['memory']['centroids'])


def test_batch_plus_memory_adds_the_memory_term_to_eq_6(tmp_path):
    # --idl-negatives batch+memory: the step's instance term is Eq. 6 on the batch's views plus the
    # non-parametric softmax against every image's memory slot, computed here from a copy of the model
    import copy

    from timm_gam.reid.checkpoint import RunState
    from timm_gam.reid.losses import idl_loss, instance_memory_loss
    from timm_gam.reid.trainer import Trainer
    trainer = Trainer(tiny_config(tmp_path, model='test_efficientnet_gn', loss='idl',
                                  idl_negatives='batch+memory'))
    state = RunState(cluster_labels=torch.arange(len(trainer.splits.train)))
    trainer._begin_stage(state)
    memory = state.instance_memory.centroids.clone()
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, *trainer.config.image_size, generator=generator) for _ in range(2)]
    index = torch.tensor([0, 3, 5, 7])
    embeddings = copy.deepcopy(trainer.model)(torch.cat(views))
    anchor, augmented = embeddings[:4], embeddings[4:]
    expected = idl_loss(anchor, augmented) + instance_memory_loss(embeddings, index.repeat(2), memory)

    losses = trainer.train_step((views, index), state)
    torch.testing.assert_close(losses['idl'], expected.detach())
    untouched = torch.ones(len(memory), dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(state.instance_memory.centroids[untouched], memory[untouched])
    assert not torch.equal(state.instance_memory.centroids[index], memory[index])


def test_mean_teacher_is_the_moving_average_of_the_trained_weights(tmp_path):
    # --mean-teacher-decay d: after every step, teacher = d * teacher + (1 - d) * weights, buffers included
    from timm_gam.reid.checkpoint import RunState
    from timm_gam.reid.trainer import Trainer
    decay = 0.9
    trainer = Trainer(tiny_config(tmp_path, model='test_efficientnet_gn', mean_teacher_decay=decay))
    assert trainer.inference_model is trainer.mean_teacher.module
    state = RunState(cluster_labels=torch.arange(len(trainer.splits.train)))
    trainer._begin_stage(state)
    expected = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        views = [torch.randn(4, 3, *trainer.config.image_size, generator=generator) for _ in range(2)]
        index = torch.randint(len(trainer.splits.train), (4,), generator=generator)
        trainer.train_step((views, index), state)
        for name, value in trainer.model.state_dict().items():
            averaged = decay * expected[name] + (1 - decay) * value
            expected[name] = averaged if value.is_floating_point() else value
    teacher = trainer.mean_teacher.module.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(teacher[name], value, msg=name)
    trained = trainer.model.state_dict()
    assert any(not torch.equal(teacher[name], trained[name]) for name in trained)


def test_a_run_with_a_mean_teacher_evaluates_and_saves_the_teacher(tmp_path):
    # the stage evaluations embed with the teacher, and the checkpoint's inference weights are the teacher's:
    # eval-only of the checkpoint gives the run's own final figures; the trained weights are kept for resuming
    config = tiny_config(tmp_path / 'run', model='test_efficientnet_gn', mean_teacher_decay=0.5)
    metrics = train(config)
    saved = load_checkpoint(f'{config.output}/checkpoint.pt')
    assert set(saved['mean_teacher']) == set(saved['model'])
    assert any(not torch.equal(saved['mean_teacher'][k], saved['model'][k]) for k in saved['model'])
    again = evaluate_run(tiny_config(tmp_path / 'eval', data_root=f'{config.output}/data/synthetic'),
                         checkpoint=f'{config.output}/checkpoint.pt')
    for key in ('rank1', 'mAP'):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)
    card = model_card(load_embedder(checkpoint=f'{config.output}/checkpoint.pt'), 'timm-gam/tiny',
                      metrics=None, measured_by_publish=False)
    card = ' '.join(card.split())
    assert "the released weights a mean teacher's" in card and 'decay 0.5 per step' in card


def test_resume_with_a_mean_teacher_matches_uninterrupted(tmp_path):
    options = dict(model='test_efficientnet_gn', mean_teacher_decay=0.5)
    train(tiny_config(tmp_path / 'straight', **options))
    train(tiny_config(tmp_path / 'split', **options, stages=0))
    train(tiny_config(tmp_path / 'split', **options), resume=True)
    a = load_checkpoint(tmp_path / 'straight' / 'checkpoint.pt')
    b = load_checkpoint(tmp_path / 'split' / 'checkpoint.pt')
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    for weights in ('model', 'mean_teacher'):
        for key, value in a[weights].items():
            assert torch.equal(value, b[weights][key]), (weights, key)


def test_lr_milestones_drop_the_rate_after_the_named_epochs():
    from timm_gam.reid.config import TrainConfig, learning_rate
    periodic, milestones = TrainConfig(lr_decay_epochs=25), TrainConfig(lr_milestones=(25, 50))
    epochs = range(60)
    assert [learning_rate(milestones, e) for e in epochs] == [learning_rate(periodic, e) for e in epochs]
    early = TrainConfig(lr_milestones=(25, 44))
    expected = [0.1] * 25 + [0.1 * 0.1] * 19 + [0.1 * 0.1 * 0.1] * 16
    assert [learning_rate(early, e) for e in range(60)] == pytest.approx(expected, rel=1e-12)


def test_the_recipe_takes_epoch_lists_on_its_command_line(tmp_path):
    from recipe_scripts import load_recipe
    recipe = load_recipe('unsup_reid')
    args = ['--preset', 'cpu-dbscan', '--output', str(tmp_path), '--lr-milestones', '25', '44',
            '--keep-checkpoints', '32']
    config = recipe.build_config(recipe.parse_args(args))
    assert config.lr_milestones == (25, 44) and config.keep_checkpoints == (32,)


def test_a_kept_checkpoint_resumes_elsewhere_as_the_run_from_its_epoch(tmp_path):
    """``keep_checkpoints``: the copy of epoch 2 (the end of the warm-up), resumed in another folder, ends
    exactly where the run it was kept from ended; ``lr_milestones`` set the logged rates."""
    import shutil
    config = tiny_config(tmp_path / 'run', model='test_efficientnet_gn', keep_checkpoints=(2,),
                         lr_milestones=(3,))
    train(config)
    kept = tmp_path / 'run' / 'checkpoint-epoch002.pt'
    assert load_checkpoint(kept)['state']['epoch'] == 2
    events = [json.loads(line) for line in open(tmp_path / 'run' / 'log.jsonl')]
    assert [e['lr'] for e in events if e['event'] == 'epoch'] == pytest.approx([0.1, 0.1, 0.1, 0.01])
    assert [e['epoch'] for e in events if e['event'] == 'kept_checkpoint'] == [2]

    (tmp_path / 'branch').mkdir()
    shutil.copyfile(kept, tmp_path / 'branch' / 'checkpoint.pt')
    train(tiny_config(tmp_path / 'branch', model='test_efficientnet_gn', keep_checkpoints=(2,),
                      lr_milestones=(3,)), resume=True)
    a, b = (load_checkpoint(tmp_path / folder / 'checkpoint.pt') for folder in ('run', 'branch'))
    assert a['state']['epoch'] == b['state']['epoch'] == 4
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key
