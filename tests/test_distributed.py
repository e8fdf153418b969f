"""``torchrun --nproc_per_node=2`` on CPU (gloo) against one process: the same clusters, weights and metrics.

The two ranks each take half of every global batch, gather the embeddings so that the losses see
the whole batch (see :func:`~timm_gam.reid.distributed.all_gather_keeping_grad`), and draw each
image's augmentation from a generator seeded by the image and the epoch, not by the process. So
the two-process run computes the single-process run's steps, up to the order of floating-point sums.
``test_efficientnet_gn`` has GroupNorm, no batch norm, so no statistics differ between the ranks. Both
runs train in fp32 (``--no-amp``): on a CPU with native bf16 the default autocast rounds each rank's half
batch to 8 bits of mantissa, which is a different computation, not a different order of the same sums.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_config import make_tiny_market

from timm_gam.reid.checkpoint import load_checkpoint

RECIPE = Path(__file__).resolve().parents[1] / 'recipes' / 'unsup_reid.py'
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
ENV = dict(os.environ, TIMM_GAM_PROGRESS='0', OMP_NUM_THREADS='1')


def run(command: list[str], output: Path) -> tuple[dict, dict]:
    result = subprocess.run([*command, '--output', str(output)], env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return load_checkpoint(output / 'checkpoint.pt'), json.loads((output / 'metrics.json').read_text())


@pytest.fixture(scope='module')
def recipe_args(tmp_path_factory) -> list[str]:
    """The smoke recipe on 24 training images, global batch 8 (4 per rank): one warm-up epoch, two merges."""
    data = make_tiny_market(tmp_path_factory.mktemp('data'))
    return [str(RECIPE), '--preset', 'smoke', '--model', 'test_efficientnet_gn', '--data-root', str(data),
            '--batch-size', '8', '--warmup-epochs', '1', '--seed', '1', '--no-amp']


@pytest.mark.parametrize('loss', ['acl', pytest.param('idl+acl', marks=pytest.mark.slow)])
def test_two_processes_match_one(recipe_args, tmp_path, loss):
    single = run([sys.executable, *recipe_args, '--loss', loss], tmp_path / 'single')
    double = run([*TORCHRUN, *recipe_args, '--loss', loss], tmp_path / 'torchrun')
    (checkpoint_1, metrics_1), (checkpoint_2, metrics_2) = single, double
    assert torch.equal(checkpoint_1['state']['cluster_labels'], checkpoint_2['state']['cluster_labels'])
    for key, value in checkpoint_1['model'].items():
        torch.testing.assert_close(checkpoint_2['model'][key], value, rtol=1e-3, atol=1e-4, msg=key)
    for stage_1, stage_2 in zip(metrics_1['history'], metrics_2['history'], strict=True):
        for key in ('num_clusters', 'cluster_purity', 'rank1', 'mAP'):
            assert stage_2[key] == pytest.approx(stage_1[key], abs=1e-3), key
