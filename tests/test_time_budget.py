"""The time-to-accuracy protocol: a training-minute budget, evaluations at fixed training minutes.

The trainer's clock is replaced by one on which each optimiser step takes a minute, so where a budget
stops a run depends on the steps alone: neither on the machine's speed nor on how often the trainer
reads its clock.
"""
import pytest
import torch
from tiny_config import tiny_config

import timm_gam.reid.trainer as trainer_module
from timm_gam.model_card import model_card, release_summary
from timm_gam.reid.checkpoint import TrainingCheckpoint, load_checkpoint
from timm_gam.reid.embedding import load_embedder
from timm_gam.reid.eval_only import evaluate_run
from timm_gam.reid.trainer import TrainingClock, train

MODEL = 'test_efficientnet_gn'


class MinutePerStep(TrainingClock):
    """A minute of training per optimiser step taken since the clock started; evaluations take none."""
    steps_taken = 0  # by every optimiser of this test, counted by the fixture

    def __init__(self, seconds_before: float = 0.0):
        super().__init__(seconds_before)
        self.steps_at_start = MinutePerStep.steps_taken

    def seconds(self) -> float:
        return self.seconds_before + 60 * (MinutePerStep.steps_taken - self.steps_at_start)

    def paused(self):
        import contextlib
        return contextlib.nullcontext()


@pytest.fixture
def minute_per_step(monkeypatch):
    step = torch.optim.SGD.step

    def counted_step(self, *args, **kwargs):
        MinutePerStep.steps_taken += 1
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.SGD, 'step', counted_step)
    monkeypatch.setattr(trainer_module, 'TrainingClock', MinutePerStep)


def straight_and_budgeted(tmp_path, **options) -> tuple[dict, dict, dict, dict]:
    """One run in a go, and the same run stopped by a budget after step 2 (of 3 in the first epoch) then
    resumed with budget to spare: (metrics, checkpoint) of each."""
    straight = train(tiny_config(tmp_path / 'straight', model=MODEL, **options))
    train(tiny_config(tmp_path / 'split', model=MODEL, **options, time_budget_min=2))
    resumed = train(tiny_config(tmp_path / 'split', model=MODEL, **options, time_budget_min=1e9), resume=True)
    return (straight, load_checkpoint(tmp_path / 'straight' / 'checkpoint.pt'),
            resumed, load_checkpoint(tmp_path / 'split' / 'checkpoint.pt'))


def assert_same_weights(a: dict, b: dict):
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key


def test_a_budget_stops_mid_epoch_and_evaluates_there(tmp_path, minute_per_step):
    stopped = train(tiny_config(tmp_path / 'run', model=MODEL, time_budget_min=2))
    state = TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state
    assert (state.stage, state.epoch, state.step_in_epoch, state.steps) == (0, 0, 2, 2)
    assert stopped['steps'] == 2 and 'mAP' in stopped  # the weights at the budget were evaluated
    assert TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').last_evaluation()['steps'] == 2


def test_a_larger_budget_continues_exactly(tmp_path, minute_per_step):
    straight, a, resumed, b = straight_and_budgeted(tmp_path)
    assert a['state']['steps'] == b['state']['steps'] == straight['steps']
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    assert_same_weights(a, b)
    assert torch.equal(a['state']['memory']['centroids'], b['state']['memory']['centroids'])
    assert resumed['mAP'] == straight['mAP']


def test_evaluations_at_every_mark_of_training_minutes(tmp_path, minute_per_step):
    metrics = train(tiny_config(tmp_path / 'run', model=MODEL, stages=0, eval_every_min=2))
    timed = metrics['timed']
    # six steps of a minute each: a mark every two
    marks = [(r['mark_min'], r['train_minutes'], r['steps']) for r in timed]
    assert marks == [(2, 2, 2), (4, 4, 4), (6, 6, 6)]
    assert all({'rank1', 'mAP', 'num_clusters', 'epoch'} <= set(r) for r in timed)


def test_the_decoded_data_path_resumes_exactly_too(tmp_path, minute_per_step):
    _, a, _, b = straight_and_budgeted(tmp_path, data_path='decoded', workers=0, stages=1)
    assert_same_weights(a, b)


def test_instance_memory_and_camera_centred_merging_train_and_resume(tmp_path, minute_per_step):
    straight, a, _, b = straight_and_budgeted(tmp_path, idl_negatives='memory', camera_centred_merge=True,
                                              stages=1)
    assert a['state']['instance_memory']['centroids'].shape[0] == straight['num_train_images']
    assert torch.equal(a['state']['instance_memory']['centroids'], b['state']['instance_memory']['centroids'])
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    assert_same_weights(a, b)


def test_dbscan_clustering_trains_leaves_outliers_out_and_resumes_exactly(tmp_path, minute_per_step):
    straight, a, _, b = straight_and_budgeted(tmp_path, clustering='dbscan', stages=1)
    labels = a['state']['cluster_labels']
    assert (labels >= -1).all() and straight['num_clusters'] == int(labels.max()) + 1
    assert 0 < straight['outliers'] == int((labels < 0).sum()) < len(labels)  # the record counts them
    assert a['state']['memory']['centroids'].shape[0] == straight['num_clusters']
    assert torch.equal(labels, b['state']['cluster_labels'])
    assert_same_weights(a, b)
    card = model_card(load_embedder(checkpoint=tmp_path / 'straight' / 'checkpoint.pt'), 'timm-gam/tiny',
                      metrics=None, measured_by_publish=False)
    assert f"{straight['outliers']:,} images in none: DBSCAN's outliers" in card


def test_the_identity_upper_bound_clusters_by_identity_and_is_never_released(tmp_path):
    from timm_gam import release
    from timm_gam.reid.datasets import prepare_data
    metrics = train(tiny_config(tmp_path / 'run', model=MODEL, clustering='identities', stages=1))
    state = TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state
    identities = [im.pid for im in prepare_data(tmp_path / 'run' / 'data' / 'synthetic', 'auto').train]
    first_label = {}
    for label, identity in zip(state.cluster_labels.tolist(), identities, strict=True):
        assert first_label.setdefault(identity, label) == label  # one cluster per person, one person each
    assert len(set(first_label.values())) == len(first_label) and metrics['cluster_purity'] == 1.0
    with pytest.raises(ValueError, match='not label-free'):
        release.write_release_folder(load_embedder(checkpoint=tmp_path / 'run' / 'checkpoint.pt'),
                                     tmp_path / 'hub', 'timm-gam/tiny')


def test_camera_options_and_the_identity_bound_need_the_file_names_metadata(tmp_path):
    from PIL import Image
    folder = tmp_path / 'plain'
    folder.mkdir()
    for i in range(4):
        Image.new('RGB', (32, 64), (i * 40, 0, 0)).save(folder / f'img{i}.jpg')
    with pytest.raises(ValueError, match='camera of every training image'):
        train(tiny_config(tmp_path / 'run', model=MODEL, data_root=str(folder), camera_centred_merge=True))
    with pytest.raises(ValueError, match='--camera-proxies needs the camera of every training image'):
        train(tiny_config(tmp_path / 'run', model=MODEL, data_root=str(folder), camera_proxies=True))
    with pytest.raises(ValueError, match="--clustering identities needs every training image's identity"):
        train(tiny_config(tmp_path / 'run', model=MODEL, data_root=str(folder), clustering='identities'))


def test_the_card_of_a_budgeted_run_says_so_and_gives_its_curve(tmp_path, minute_per_step):
    from timm_gam import release
    from timm_gam.reid.embedding import load_embedder
    # marks at 2 and 4 minutes, the budget's end at 5: all before stage 0 ends (6 steps)
    train(tiny_config(tmp_path / 'run', model=MODEL, time_budget_min=5, eval_every_min=2))
    loaded = load_embedder(checkpoint=tmp_path / 'run' / 'checkpoint.pt')
    folder = release.write_release_folder(loaded, tmp_path / 'hub', 'timm-gam/test.budget')
    card = (folder / 'README.md').read_text()
    assert 'Stopped by its time budget of 5 training minutes' in card
    curve = card.split('| minutes | epoch | stage | clusters | rank-1 | mAP |')[1].split('\n\n')[0]
    rows = curve.strip().splitlines()[1:]  # after the separator, one row per timed evaluation
    assert [row.split('|')[1].strip() for row in rows] == ['2.0', '4.0', '5.0']
    epochs = [float(row.split('|')[2]) for row in rows]  # a minute per step: the epoch grows with them
    assert epochs == sorted(epochs) and epochs[0] > 0


def test_a_resume_can_switch_on_the_memories_part_way_through_a_stage(tmp_path, minute_per_step):
    # a pilot branches from a run's checkpoint with changed flags: the memories it now needs are built
    # from the weights at the resume, and the stage's clusters stay as they were
    train(tiny_config(tmp_path / 'run', model=MODEL, loss='idl', time_budget_min=2))
    assert TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state.instance_memory is None
    train(tiny_config(tmp_path / 'run', model=MODEL, loss='idl+acl', idl_negatives='batch+memory',
                      time_budget_min=4), resume=True)
    state = TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state
    n = len(state.cluster_labels)
    assert (state.stage, state.steps) == (0, 4)
    assert torch.equal(state.cluster_labels, torch.arange(n))
    assert state.instance_memory.centroids.shape[0] == n and state.memory.centroids.shape[0] == n


@pytest.mark.parametrize('data_path', ['files', 'decoded'])
def test_a_resolution_schedule_trains_the_last_epochs_larger_and_resumes_across_the_switch(
        tmp_path, minute_per_step, monkeypatch, data_path):
    # the smoke schedule has 4 epochs; the last one at 96x48. The sizes are read off the network's
    # training inputs, not off anything the trainer reports
    trained_at = []
    create_embedder = trainer_module.create_embedder

    def record_training_input(module, inputs):
        if module.training:
            trained_at.append(tuple(inputs[0].shape[-2:]))

    def recording_embedder(*args, **kwargs):
        model = create_embedder(*args, **kwargs)
        model.register_forward_pre_hook(record_training_input)
        return model
    monkeypatch.setattr(trainer_module, 'create_embedder', recording_embedder)
    options = dict(model=MODEL, final_image_size=(96, 48), final_size_epochs=1, data_path=data_path,
                   workers=0)

    straight = train(tiny_config(tmp_path / 'straight', **options))
    steps_per_epoch = straight['steps'] // 4
    assert trained_at == [(64, 32)] * 3 * steps_per_epoch + [(96, 48)] * steps_per_epoch
    final = TrainingCheckpoint.load(tmp_path / 'straight' / 'checkpoint.pt')
    assert final.image_size == (96, 48)
    assert ', 64x32 then 96x48 for the last 1 epoch, ' in release_summary(final)  # the card's line
    # the last stage's evaluation embedded at the size the weights were trained at, as loading them does
    data = tmp_path / 'straight' / 'data' / 'synthetic'
    again = evaluate_run(tiny_config(tmp_path / 'eval', data_root=str(data)),
                         checkpoint=str(tmp_path / 'straight' / 'checkpoint.pt'))
    assert again['mAP'] == pytest.approx(straight['mAP'], abs=1e-6)

    before_switch = 3 * steps_per_epoch - 1
    train(tiny_config(tmp_path / 'split', **options, time_budget_min=before_switch))
    assert TrainingCheckpoint.load(tmp_path / 'split' / 'checkpoint.pt').image_size == (64, 32)
    train(tiny_config(tmp_path / 'split', **options, time_budget_min=before_switch + 2), resume=True)
    assert TrainingCheckpoint.load(tmp_path / 'split' / 'checkpoint.pt').image_size == (96, 48)
    resumed = train(tiny_config(tmp_path / 'split', **options, time_budget_min=1e9), resume=True)
    assert_same_weights(final.to_dict(), load_checkpoint(tmp_path / 'split' / 'checkpoint.pt'))
    assert resumed['mAP'] == straight['mAP']
