"""experiments/paper_tables.py: each row is the recipe's paper method on one schedule with the row's model
and loss, and the sweep's bookkeeping (finished runs, stage curves of resumed runs) is right."""
import json
from pathlib import Path

import pytest
from recipe_scripts import load_experiment, load_recipe

from timm_gam import release


@pytest.fixture(scope='module')
def tables():
    return load_experiment('paper_tables')


def test_every_row_is_the_cpu_hour_schedule_with_its_model_and_loss(tables):
    recipe = load_recipe('unsup_reid')
    assert set(tables.ORDER) == set(tables.ROWS)
    schedules = set()
    for name, spec in tables.ROWS.items():
        args = recipe.parse_args([*tables.SCHEDULE, '--model', spec['model'], '--loss', spec['loss'],
                                  '--data-root', 'DATA'])
        config = recipe.build_config(args)
        assert (config.model, config.loss) == (spec['model'], spec['loss']), name
        assert config.time_budget_min is None, name  # a fixed schedule, not minutes
        assert config.channels_last and config.data_path == 'decoded', name
        schedules.add((config.image_size, config.embed_dim, config.warmup_epochs, config.stages,
                       config.epochs_per_stage, config.merge_percent, config.lr, config.lr_decay_epochs))
    assert schedules == {((64, 32), 1024, 2, 4, 1, 0.22, None, 5)}


def write_run(folder: Path, stages: int, last_stage: int, log: list[dict], **metrics) -> Path:
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'stages': stages}))
    (folder / 'metrics.json').write_text(json.dumps({'stage': last_stage, **metrics}))
    (folder / 'log.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in log))
    return folder


def test_finished_means_every_stage_trained(tables, tmp_path):
    assert tables.finished(write_run(tmp_path / 'a', stages=4, last_stage=4, log=[]))
    assert not tables.finished(write_run(tmp_path / 'b', stages=4, last_stage=2, log=[]))
    assert not tables.finished(tmp_path / 'never-started')


UNTRAINED = {'event': 'eval', 'stage': -1, 'rank1': 1.0, 'mAP': 1.0}
STAGE0 = {'event': 'stage', 'stage': 0, 'epoch': 2.0, 'rank1': 10.0, 'mAP': 5.0}
STAGE1 = {'event': 'stage', 'stage': 1, 'epoch': 3.0, 'rank1': 12.0, 'mAP': 6.0}


def test_stage_curve_counts_a_relogged_evaluation_once(tables, tmp_path):
    # killed after logging stage 0 but before saving its checkpoint: the rerun logs both again
    run = write_run(tmp_path / 'r', 4, 1, [UNTRAINED, STAGE0, UNTRAINED, STAGE0, STAGE1])
    assert [(p['epoch'], p['mAP']) for p in tables.stage_curve(run)] == [(0.0, 1.0), (2.0, 5.0), (3.0, 6.0)]


def test_seed_spread_cell(tables):
    assert tables._cell([]) == '-'
    assert tables._cell([12.0]) == '12.0'
    assert tables._cell([12.0, 14.0]) == '13.0 ± 1.0'  # two seeds: mean and half the range


def test_orderings_are_judged_against_the_spread(tables):
    assert tables.ordering_verdict('>', 2.0, 1.5) == 'holds'
    assert tables.ordering_verdict('>', -2.0, 1.5) == 'reversed'
    assert tables.ordering_verdict('>', 1.0, 1.5) == 'within the spread'
    assert tables.ordering_verdict('>=', -1.0, 1.5) == 'within the spread (consistent with >=)'
    assert tables.chain('a', '>', 'b', '>=', 'c') == [('a', '>', 'b'), ('b', '>=', 'c')]
    claimed = {row for pairs in tables.CLAIMS.values() for a, _, b in pairs for row in (a, b)}
    assert claimed <= set(tables.ROWS)
    lines = tables.ordering_table({'idl-acl-gam-g8': [14.0, 10.0], 'idl-acl-gam': [10.0]})
    g8_g4 = next(line for line in lines if 'idl-acl-gam-g8 >= idl-acl-gam |' in line)
    assert '12.0 vs 10.0' in g8_g4 and 'within the spread' in g8_g4  # two seeds 4 apart: a spread of 2
    assert sum('not measured' in line for line in lines) == 11


def test_report_tabulates_finished_runs_and_their_orderings(tables, tmp_path, monkeypatch):
    monkeypatch.setattr(release, 'measure_colour_histogram', lambda root: {'rank1': 29.1, 'mAP': 14.7})
    monkeypatch.setattr(tables, 'model_size', lambda name: (10.5, 0.91))
    runs = (('idl-acl-gam', 0, 12.0), ('idl-acl-gam', 1, 14.0), ('idl-acl-gam-g8', 0, 9.0))
    for name, seed, mean_ap in runs:
        write_run(tmp_path / f'{name}-seed{seed}', 1, 1, [UNTRAINED, STAGE0, {**STAGE1, 'mAP': mean_ap}],
                  rank1=20.0, mAP=mean_ap, train_minutes=50.0)
    write_run(tmp_path / 'buc-seed0', 4, 2, [UNTRAINED, STAGE0])  # not finished: no row
    args = tables.parse_args(['--data-root', 'DATA', '--runs', str(tmp_path), '--seeds', '0', '1',
                              '--cpu-recipe-run', str(tmp_path / 'absent')])
    text = tables.report(args)
    g4 = next(line for line in text.splitlines() if line.startswith('| 2, 6 |'))
    assert '| 0, 1 | 20.0 ± 0.0 | 13.0 ± 1.0 | 20.0 / 12.0; 20.0 / 14.0 | 12.0 (3); 14.0 (3) | 50 |' in g4
    assert 'BUC*' not in text and '| HSV colour histogram |' in text
    # g8 9.0 against g4's mean 13.0: beyond the spread of 1.5, the paper's 8 >= 4 reversed
    assert '| idl-acl-gam-g8 >= idl-acl-gam | 30.0 >= 29.5 | 9.0 vs 13.0 | -4.0 | reversed |' in text
    assert (tmp_path / 'paper_tables.md').read_text() == text and (tmp_path / 'paper_tables.png').exists()
