"""SIGKILL the recipe at several moments, ``--resume``, and reach exactly the state of an uninterrupted run.

A run saves at every epoch's end; what a kill loses is the work since then, which the resumed run
redoes with the same batches (they depend on the seed and the epoch only). So after any number of
kills the final cluster labels, weights, memory and metrics are those of one run in a go.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from timm_gam.reid.checkpoint import load_checkpoint
from timm_gam.reid.synthetic import make_synthetic_reid

RECIPE = Path(__file__).resolve().parents[1] / 'recipes' / 'unsup_reid.py'
ENV = dict(os.environ, TIMM_GAM_PROGRESS='0')
TIMEOUT_S = 900  # generous: a loaded 2-core machine can be 20x slower than an idle one


@pytest.fixture(scope='module')
def command(tmp_path_factory) -> list[str]:
    """The smoke recipe on 24 training images (6 people, 2 cameras): two warm-up epochs, one merge stage."""
    data = make_synthetic_reid(tmp_path_factory.mktemp('data'), num_train_identities=6, num_test_identities=4,
                               num_cameras=2, images_per_identity_per_camera=2, image_size=(64, 32))
    return [sys.executable, str(RECIPE), '--preset', 'smoke', '--model', 'test_convnext', '--data-root',
            str(data), '--batch-size', '8', '--stages', '1', '--seed', '3']


@pytest.fixture
def start(command):
    """Start the recipe on ``output`` (resuming or not); whatever a failed test leaves running is killed."""
    processes = []

    def start_run(output: Path, resume: bool) -> subprocess.Popen:
        output.mkdir(parents=True, exist_ok=True)
        with open(output / f'leg{len(processes)}.out', 'w') as console:  # the child keeps its own copy
            processes.append(subprocess.Popen(
                [*command, '--output', str(output), *(['--resume'] if resume else [])],
                stdout=console, stderr=subprocess.STDOUT, env=ENV))
        return processes[-1]
    yield start_run
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def logged_events(output: Path) -> list[dict]:
    """The complete lines of log.jsonl so far (a line being written has no newline yet)."""
    path = output / 'log.jsonl'
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith('\n')]


def kill_when(process: subprocess.Popen, output: Path, moment, jitter_s: float):
    """SIGKILL ``process`` ``jitter_s`` after ``moment(output)`` first holds; fail if it ends first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not moment(output):
        assert process.poll() is None, f'the run ended before the kill point: {output}'
        assert time.monotonic() < deadline, f'the kill point never came: {output}'
        time.sleep(0.02)
    time.sleep(jitter_s)
    assert process.poll() is None, f'the run ended before the kill: {output}'
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def finish(process: subprocess.Popen, output: Path):
    assert process.wait(timeout=TIMEOUT_S) == 0, sorted(output.glob('leg*.out'))[-1].read_text()


def count(event: str, **fields):
    def moment(output: Path) -> bool:
        return sum(e['event'] == event and fields.items() <= e.items() for e in logged_events(output)) >= 1
    return moment


def writing_checkpoint(output: Path) -> bool:
    return any(output.glob('.checkpoint.pt.*.tmp'))


@pytest.fixture(scope='module')
def uninterrupted(command, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp('uninterrupted')
    with open(output / 'leg0.out', 'w') as console:
        finish(subprocess.Popen([*command, '--output', str(output)], stdout=console,
                                stderr=subprocess.STDOUT, env=ENV), output)
    return output


def assert_same_final_state(resumed: Path, reference: Path):
    a, b = load_checkpoint(reference / 'checkpoint.pt'), load_checkpoint(resumed / 'checkpoint.pt')
    assert torch.equal(a['state']['cluster_labels'], b['state']['cluster_labels'])
    for key, value in a['model'].items():
        torch.testing.assert_close(b['model'][key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(b['state']['memory']['centroids'], a['state']['memory']['centroids'],
                               rtol=1e-5, atol=1e-6)
    for slot, saved in a['optimizer']['state'].items():
        torch.testing.assert_close(b['optimizer']['state'][slot]['momentum_buffer'], saved['momentum_buffer'],
                                   rtol=1e-5, atol=1e-6)

    final_a, final_b = (json.loads((run / 'metrics.json').read_text()) for run in (reference, resumed))
    for stage_a, stage_b in zip(final_a['history'], final_b['history'], strict=True):
        for key in ('stage', 'epoch', 'num_clusters', 'cluster_purity', 'rank1', 'rank5', 'mAP'):
            assert stage_b[key] == pytest.approx(stage_a[key], abs=1e-6), key
    assert logged_events(resumed) and all(  # every line parses, none was left half-written
        line.endswith('\n') for line in (resumed / 'log.jsonl').read_text().splitlines(keepends=True))


def test_killed_mid_epoch_and_while_clustering_resumes_to_the_same_state(uninterrupted, start, tmp_path):
    rng = random.Random(0)
    output = tmp_path / 'killed'
    # mid-epoch: the second warm-up epoch, after the first checkpoint
    kill_when(start(output, resume=False), output, count('epoch', stage=0), rng.uniform(0.3, 1.5))
    # right after stage 0 ends: writing its checkpoint, embedding the training set or merging clusters
    kill_when(start(output, resume=True), output, count('stage', stage=0), rng.uniform(0.0, 0.5))
    finish(start(output, resume=True), output)
    assert [e['event'] for e in logged_events(output)].count('resume') >= 1
    assert_same_final_state(output, uninterrupted)


@pytest.mark.slow
def test_killed_while_writing_checkpoints_and_at_random_moments(uninterrupted, start, tmp_path):
    rng = random.Random(1)
    output = tmp_path / 'killed'
    kill_when(start(output, resume=False), output, writing_checkpoint, 0.0)
    for _ in range(3):
        kill_when(start(output, resume=True), output, lambda _: True, rng.uniform(4.0, 15.0))
    kill_when(start(output, resume=True), output, writing_checkpoint, 0.0)
    finish(start(output, resume=True), output)
    assert_same_final_state(output, uninterrupted)


WRITE_BIG_CHECKPOINT = """
import sys, torch
from timm_gam.reid.checkpoint import save_checkpoint
save_checkpoint({'weights': torch.ones(16, 1024, 1024)}, sys.argv[1])  # 64 MB: long enough to catch
"""


def test_a_kill_while_writing_leaves_the_previous_checkpoint_whole(tmp_path):
    from timm_gam.reid.checkpoint import save_checkpoint
    path = tmp_path / 'checkpoint.pt'
    save_checkpoint({'weights': torch.arange(10)}, path)
    before = path.read_bytes()
    writer = subprocess.Popen([sys.executable, '-c', WRITE_BIG_CHECKPOINT, str(path)])
    kill_when(writer, tmp_path, writing_checkpoint, 0.0)
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)['weights'], torch.arange(10))
