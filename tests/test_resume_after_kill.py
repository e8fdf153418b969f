"""SIGKILL the recipe at exact moments of its work, ``--resume``, and reach exactly the state of an
uninterrupted run: the same cluster labels, weights, memory, optimiser state and metrics, bit for bit.

A run saves at every epoch's end; what a kill loses is the work since then, which the resumed run redoes
with the same batches (they depend on the seed and the epoch only). Each kill point is a moment of the
run's work, never a time after some event: ``tests/stop_at.py`` makes the process stop itself there and
the test SIGKILLs it while it is stopped, so no machine is too fast or too slow for the kill to land.
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_scripts import RECIPE, RECIPE_ENV
from tiny_config import make_tiny_market

from timm_gam.reid.checkpoint import load_checkpoint, save_checkpoint

STOP_AT = Path(__file__).resolve().parent / 'stop_at.py'


def kill_at(command: list[str], cwd: Path, point: str, count: int) -> bool:
    """Run ``command`` until it reaches ``point`` for the ``count``-th time and SIGKILL it there.

    Returns False, with the process finished, when the run ended (successfully) before that moment.
    """
    with open(cwd / f'leg-{point}-{count}.out', 'w') as console:
        process = subprocess.Popen([sys.executable, str(STOP_AT), point, str(count), *command], cwd=cwd,
                                   stdout=console, stderr=subprocess.STDOUT, env=RECIPE_ENV)
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)  # returns when it stops itself, or ends
        if os.WIFSTOPPED(status):
            process.kill()
            process.wait()
            return True
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.returncode == 0, (cwd / f'leg-{point}-{count}.out').read_text()[-3000:]
        return False
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()


def run_to_end(command: list[str], cwd: Path):
    result = subprocess.run([sys.executable, *command], cwd=cwd, env=RECIPE_ENV, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_same_final_state(resumed: Path, reference: Path):
    a, b = load_checkpoint(reference / 'checkpoint.pt'), load_checkpoint(resumed / 'checkpoint.pt')
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    for key, value in a['model'].items():
        assert torch.equal(b['model'][key], value), key
    assert torch.equal(b['state']['memory']['centroids'], a['state']['memory']['centroids'])
    for slot, saved in a['optimizer']['state'].items():
        assert torch.equal(b['optimizer']['state'][slot]['momentum_buffer'], saved['momentum_buffer'])

    final_a, final_b = (json.loads((run / 'metrics.json').read_text()) for run in (reference, resumed))
    for stage_a, stage_b in zip(final_a['history'], final_b['history'], strict=True):
        for key in ('stage', 'epoch', 'num_clusters', 'cluster_purity', 'rank1', 'rank5', 'rank10', 'mAP'):
            assert stage_b[key] == stage_a[key], (stage_a['stage'], key)
    assert all(line.endswith('\n') for line in (resumed / 'log.jsonl').read_text().splitlines(keepends=True))


def saved_epoch(run: Path) -> int:
    return load_checkpoint(run / 'checkpoint.pt')['state']['epoch']


def test_the_default_run_killed_at_each_kind_of_moment_resumes_identically(default_run, tmp_path):
    """The README's command (tiny GAM net, one DataLoader worker), killed four times, then finished."""
    reference, _ = default_run
    run = tmp_path / 'runs' / 'unsup_reid-synthetic'
    config = json.loads((reference / 'config.json').read_text())
    num_images = len(load_checkpoint(reference / 'checkpoint.pt')['state']['cluster_labels'])
    steps = num_images // config['batch_size']
    start, resume = [str(RECIPE)], [str(RECIPE), '--resume']
    assert config['workers'] >= 1 and config['warmup_epochs'] >= 6

    # half-way through the 5th warm-up epoch, after the 4th epoch's checkpoint (the case of issue 9)
    assert kill_at(start, tmp_path, 'step', 4 * steps + steps // 2)
    assert saved_epoch(run) == 4
    # writing the checkpoint of stage 0's end: the warm-up's last three epochs train, the fourth save is it
    assert kill_at(resume, tmp_path, 'checkpoint', 4)
    assert saved_epoch(run) == 7 and any(run.glob('.checkpoint.pt.*.tmp'))
    # stage 2's merge: stage 0 ends again, stage 1 merges (the first) and trains, then the second merge
    assert kill_at(resume, tmp_path, 'merge', 2)
    # embedding the training set for stage 2's merge again, half-way through, a worker loading images
    assert kill_at(resume, tmp_path, 'embed', 3)
    run_to_end(resume, tmp_path)
    log = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert [e['event'] for e in log].count('resume') == 4
    assert_same_final_state(run, reference)


@pytest.fixture(scope='module')
def smoke_command(tmp_path_factory) -> list[str]:
    """The smoke recipe on 24 training images (6 people, 2 cameras) with a DataLoader worker."""
    data = make_tiny_market(tmp_path_factory.mktemp('data'))
    return [str(RECIPE), '--preset', 'smoke', '--model', 'test_convnext', '--data-root', str(data),
            '--batch-size', '8', '--workers', '1', '--seed', '3']


def test_killed_at_random_moments_resumes_identically(smoke_command, tmp_path):
    """Resumed with ``--output RUN --resume`` alone: the data, model and schedule come from the checkpoint."""
    reference = tmp_path / 'uninterrupted'
    run_to_end([*smoke_command, '--output', str(reference)], tmp_path)
    run = tmp_path / 'killed'
    command = [*smoke_command, '--output', str(run)]
    resume = [str(RECIPE), '--output', str(run), '--resume']  # after a crash: the rest is in the checkpoint
    # moments are counts of work done, so the draw is the same on any machine; merges are few in so short a
    # run and the default-run test kills at one
    rng = random.Random(0)
    points = [point for _ in range(2) for point in rng.sample(['step', 'embed', 'checkpoint'], 3)]
    kills = []
    for leg, point in enumerate(points):
        moment = point, rng.randint(1, 3)
        if not kill_at(resume if leg else command, tmp_path, *moment):
            break  # the run ended before this moment came: it is complete
        kills.append(moment)
    else:
        run_to_end(resume, tmp_path)
    assert len(kills) >= 4 and len({point for point, _ in kills}) == 3, kills
    assert_same_final_state(run, reference)


WRITE_CHECKPOINT = """
import sys, torch
from timm_gam.reid.checkpoint import save_checkpoint
save_checkpoint({'weights': torch.ones(4, 1024, 1024)}, sys.argv[1])
"""


def test_a_kill_while_writing_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    save_checkpoint({'weights': torch.arange(10)}, path)
    before = path.read_bytes()
    writer = tmp_path / 'write.py'
    writer.write_text(WRITE_CHECKPOINT)
    assert kill_at([str(writer), str(path)], tmp_path, 'checkpoint', 1)
    assert any(tmp_path.glob('.checkpoint.pt.*.tmp'))  # killed half-way through writing the new one
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)['weights'], torch.arange(10))
