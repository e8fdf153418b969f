"""The run log: one writer, one reader that keeps each point of training once when a resumed run logged it
again, and the experiments' curves read through it."""
import pytest
from recipe_scripts import load_experiment

from timm_gam.reid.run_log import RunLog, evaluation_curve, read_events

UNTRAINED = dict(stage=-1, rank1=1.0, mAP=1.0)


def resumed_run(folder):
    """Stage 0 (3 steps) and its epochs logged, the process killed before its checkpoint, the run resumed
    from the start: everything logged again (at other times), then stage 1."""
    log = RunLog(folder)
    log.write('training_path', device='cpu')
    log.write('eval', **UNTRAINED)
    for attempt in (1, 2):
        if attempt == 2:
            log.write('training_path', device='cpu')
            log.write('eval', **UNTRAINED)
        log.write('epoch', stage=0, epoch=1, loss=5.0, attempt=attempt)
        log.write('stage', stage=0, epoch=1.0, steps=3, mAP=5.0, train_minutes=1.0 * attempt, attempt=attempt)
    log.write('stage', stage=1, epoch=2.0, steps=6, mAP=6.0, train_minutes=4.0, attempt=2)
    return folder


def test_a_resumed_runs_repeated_records_are_read_once_the_latest_in_place(tmp_path):
    events = read_events(resumed_run(tmp_path))
    # the configuration lines are not measurements: both kept; each measured point once
    assert [e['event'] for e in events] == ['training_path', 'eval', 'epoch', 'stage', 'training_path',
                                            'stage']
    assert [e.get('attempt') for e in events if e['event'] in ('epoch', 'stage')] == [2, 2, 2]
    assert [e['steps'] for e in read_events(tmp_path, 'stage')] == [3, 6]


def test_a_folder_without_a_log_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match='--output folder of a recipes/unsup_reid.py run'):
        read_events(tmp_path)


def test_the_evaluation_curve_counts_a_relogged_stage_once(tmp_path):
    # the repeated stage 0 was measured at another training minute (1.0 then 2.0): still one point
    points = evaluation_curve(resumed_run(tmp_path))
    assert [(p['train_minutes'], p['mAP']) for p in points] == [(0.0, 1.0), (2.0, 5.0), (4.0, 6.0)]


def test_the_training_curve_table_gives_each_evaluation_its_epoch_and_learning_rate(tmp_path):
    table = load_experiment('training_curve').markdown(resumed_run(tmp_path)).splitlines()
    # the untrained evaluation, then stage 0 (epoch 1.0, after the repeated epoch record) and stage 1
    assert [row.split(' | ')[0] for row in table[2:]] == ['| 0.0', '| 1.0', '| 2.0']
    assert [row.split(' | ')[-1] for row in table[2:]] == ['1.0 |', '5.0 |', '6.0 |']
