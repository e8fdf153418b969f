"""The time-to-accuracy protocol: a training-minute budget, evaluations at fixed training minutes.

The trainer's clock is replaced by one that moves a minute each time it is read, so where a budget
stops a run depends on the code alone, never on the machine's speed.
"""
import pytest
import torch
from tiny_config import tiny_config

import timm_gam.reid.trainer as trainer_module
from timm_gam.reid.checkpoint import TrainingCheckpoint, load_checkpoint
from timm_gam.reid.trainer import TrainingClock, train

MODEL = 'test_efficientnet_gn'


class MinutePerRead(TrainingClock):
    """A minute passes at every reading; paused spans (evaluations) cost nothing, as on a real clock."""

    def __init__(self, seconds_before: float = 0.0):
        super().__init__(seconds_before)
        self.now = seconds_before

    def seconds(self) -> float:
        self.now += 60
        return self.now

    def paused(self):
        import contextlib
        return contextlib.nullcontext()


@pytest.fixture
def minute_per_read(monkeypatch):
    monkeypatch.setattr(trainer_module, 'TrainingClock', MinutePerRead)


def straight_and_budgeted(tmp_path, **options) -> tuple[dict, dict, dict, dict]:
    """One run in a go, and the same run stopped by a budget after step 2 of 3 (reads: the run's check, the
    epoch's check, then one per step) then resumed with budget to spare: (metrics, checkpoint) of each."""
    straight = train(tiny_config(tmp_path / 'straight', model=MODEL, **options))
    train(tiny_config(tmp_path / 'split', model=MODEL, **options, time_budget_min=4))
    resumed = train(tiny_config(tmp_path / 'split', model=MODEL, **options, time_budget_min=1e9), resume=True)
    return (straight, load_checkpoint(tmp_path / 'straight' / 'checkpoint.pt'),
            resumed, load_checkpoint(tmp_path / 'split' / 'checkpoint.pt'))


def assert_same_weights(a: dict, b: dict):
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key


def test_a_budget_stops_mid_epoch_and_evaluates_there(tmp_path, minute_per_read):
    stopped = train(tiny_config(tmp_path / 'run', model=MODEL, time_budget_min=4))
    state = TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state
    assert (state.stage, state.epoch, state.step_in_epoch, state.steps) == (0, 0, 2, 2)
    assert stopped['steps'] == 2 and 'mAP' in stopped  # the weights at the budget were evaluated
    assert TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').last_evaluation()['steps'] == 2


def test_a_larger_budget_continues_exactly(tmp_path, minute_per_read):
    straight, a, resumed, b = straight_and_budgeted(tmp_path)
    assert a['state']['steps'] == b['state']['steps'] == straight['steps']
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    assert_same_weights(a, b)
    assert torch.equal(a['state']['memory']['centroids'], b['state']['memory']['centroids'])
    assert resumed['mAP'] == straight['mAP']


def test_evaluations_at_every_mark_of_training_minutes(tmp_path, minute_per_read):
    metrics = train(tiny_config(tmp_path / 'run', model=MODEL, stages=0, eval_every_min=2))
    timed = metrics['timed']
    assert [r['mark_min'] for r in timed] == [2 * (k + 1) for k in range(len(timed))]
    assert len(timed) >= 3
    assert all(r['train_minutes'] >= r['mark_min'] for r in timed)
    assert [r['steps'] for r in timed] == sorted(r['steps'] for r in timed)
    assert all({'rank1', 'mAP', 'num_clusters', 'epoch'} <= set(r) for r in timed)


def test_the_decoded_data_path_resumes_exactly_too(tmp_path, minute_per_read):
    _, a, _, b = straight_and_budgeted(tmp_path, data_path='decoded', workers=0, stages=1)
    assert_same_weights(a, b)


def test_instance_memory_and_camera_centred_merging_train_and_resume(tmp_path, minute_per_read):
    straight, a, _, b = straight_and_budgeted(tmp_path, idl_negatives='memory', camera_centred_merge=True,
                                              stages=1)
    assert a['state']['instance_memory']['centroids'].shape[0] == straight['num_train_images']
    assert torch.equal(a['state']['instance_memory']['centroids'], b['state']['instance_memory']['centroids'])
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    assert_same_weights(a, b)


def test_camera_centred_merging_needs_camera_ids(tmp_path):
    from PIL import Image
    folder = tmp_path / 'plain'
    folder.mkdir()
    for i in range(4):
        Image.new('RGB', (32, 64), (i * 40, 0, 0)).save(folder / f'img{i}.jpg')
    with pytest.raises(ValueError, match='camera of every training image'):
        train(tiny_config(tmp_path / 'run', model=MODEL, data_root=str(folder), camera_centred_merge=True))


def test_the_card_of_a_budgeted_run_says_so_and_gives_its_curve(tmp_path, minute_per_read):
    from timm_gam import release
    from timm_gam.reid.embedding import load_embedder
    train(tiny_config(tmp_path / 'run', model=MODEL, time_budget_min=9, eval_every_min=3))
    loaded = load_embedder(checkpoint=tmp_path / 'run' / 'checkpoint.pt')
    folder = release.write_release_folder(loaded, tmp_path / 'hub', 'timm-gam/test.budget')
    card = (folder / 'README.md').read_text()
    assert 'Stopped by its time budget of 9 training minutes' in card
    curve = card.split('| minutes | stage | clusters | rank-1 | mAP |')[1].split('\n\n')[0]
    assert len(curve.strip().splitlines()) == 1 + 3  # the separator, then one row per timed evaluation
