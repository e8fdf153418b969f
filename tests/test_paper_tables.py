"""benchmarks/paper_tables.py: each row is the recipe's paper method on one schedule with the row's model
and loss, and the sweep's bookkeeping (finished runs, stage curves of resumed runs) is right."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from recipe_scripts import load_recipe

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


@pytest.fixture(scope='module')
def tables():
    sys.path.insert(0, str(BENCHMARKS))  # as when run as a script: it imports time_to_accuracy beside it
    spec = importlib.util.spec_from_file_location('paper_tables', BENCHMARKS / 'paper_tables.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


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


def write_run(folder: Path, stages: int, last_stage: int, log: list[dict]) -> Path:
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'stages': stages}))
    (folder / 'metrics.json').write_text(json.dumps({'stage': last_stage}))
    (folder / 'log.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in log))
    return folder


def test_finished_means_every_stage_trained(tables, tmp_path):
    assert tables.finished(write_run(tmp_path / 'a', stages=4, last_stage=4, log=[]))
    assert not tables.finished(write_run(tmp_path / 'b', stages=4, last_stage=2, log=[]))
    assert not tables.finished(tmp_path / 'never-started')


def test_stage_curve_counts_a_resumed_stage_once(tables, tmp_path):
    untrained = {'event': 'eval', 'stage': -1, 'rank1': 1.0, 'mAP': 1.0}
    stage0 = {'event': 'stage', 'stage': 0, 'epoch': 2.0, 'rank1': 10.0, 'mAP': 5.0}
    stage1 = {'event': 'stage', 'stage': 1, 'epoch': 3.0, 'rank1': 12.0, 'mAP': 6.0}
    run = write_run(tmp_path / 'r', 4, 1, [untrained, stage0, untrained, stage0, stage1])  # resumed once
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
    every_row = {name for names, _ in tables.CLAIMS.values() for name in names}
    assert every_row <= set(tables.ROWS)
    lines = tables.ordering_table({'idl-acl-gam-g8': [14.0, 10.0], 'idl-acl-gam': [10.0]})
    g8_g4 = next(line for line in lines if 'idl-acl-gam-g8 >= idl-acl-gam |' in line)
    assert '12.0 vs 10.0' in g8_g4 and 'within the spread' in g8_g4  # two seeds 4 apart: a spread of 2
    assert sum('not measured' in line for line in lines) == 8
