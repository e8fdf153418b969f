"""Same seed, same machine: the same clusters and metrics; and the same again with the files renamed.

Renaming reorders the path-sorted file list. The trainer trains in content order
(:func:`~timm_gam.reid.datasets.in_content_order`), so the run must not notice: results are
invariant to the order of the file list.
"""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_config import SMOKE, tiny_config

from timm_gam.reid.checkpoint import load_checkpoint
from timm_gam.reid.datasets import MARKET_FOLDERS, ReidImage, in_content_order, parse_market_name
from timm_gam.reid.synthetic import make_synthetic_reid
from timm_gam.reid.trainer import train


def copy_renamed(source: Path, target: Path, seed: int = 0):
    """The same images under other Market names: person ids permuted, frame numbers shuffled."""
    rng = np.random.default_rng(seed)
    files = {folder: sorted((source / folder).glob('*.jpg')) for folder in MARKET_FOLDERS.values()}
    pids = sorted({parse_market_name(path.name)[0] for paths in files.values() for path in paths})
    new_pids = rng.choice(np.arange(1, 1500), size=len(pids), replace=False).tolist()
    new_pid = dict(zip(pids, new_pids, strict=True))
    for folder, paths in files.items():
        (target / folder).mkdir(parents=True)
        for path, frame in zip(paths, rng.permutation(len(paths)), strict=True):
            pid, camid = parse_market_name(path.name)
            shutil.copy(path, target / folder / f'{new_pid[pid]:04d}_c{camid + 1}s1_{frame:06d}_00.jpg')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Checkpoints and metrics of two identical runs and one on the renamed copy of the data."""
    root = tmp_path_factory.mktemp('determinism')
    data = make_synthetic_reid(root / 'data', **SMOKE['synthetic'])
    copy_renamed(data, root / 'renamed')
    results = {}
    for name, data_root in (('first', data), ('again', data), ('renamed', root / 'renamed')):
        config = tiny_config(root / name, data_root=str(data_root), model='test_efficientnet_gn',
                             warmup_epochs=1, stages=1, seed=5)
        metrics = train(config)
        results[name] = load_checkpoint(root / name / 'checkpoint.pt'), metrics
    return results


def assert_same_run(a, b, atol: float):
    (checkpoint_a, metrics_a), (checkpoint_b, metrics_b) = a, b
    assert torch.equal(checkpoint_a['state']['cluster_labels'], checkpoint_b['state']['cluster_labels'])
    for key, value in checkpoint_a['model'].items():
        torch.testing.assert_close(checkpoint_b['model'][key], value, rtol=0, atol=atol, msg=key)
    for stage_a, stage_b in zip(metrics_a['history'], metrics_b['history'], strict=True):
        for key in ('num_clusters', 'cluster_purity', 'rank1', 'rank5', 'rank10', 'mAP'):
            assert stage_b[key] == pytest.approx(stage_a[key], abs=atol), key


def test_same_seed_gives_identical_clusters_weights_and_metrics(runs):
    assert_same_run(runs['first'], runs['again'], atol=0)


def test_renamed_files_give_the_same_partition_and_metrics(runs):
    assert_same_run(runs['first'], runs['renamed'], atol=1e-6)


def test_content_order_ignores_names_and_list_order(tmp_path):
    for i in range(6):
        (tmp_path / f'{i}.jpg').write_bytes(bytes([i]) * 10)
        (tmp_path / f'z{5 - i}.jpg').write_bytes(bytes([i]) * 10)  # the same contents, names in reverse
    images = [ReidImage(str(p)) for p in sorted(tmp_path.glob('[0-9].jpg'))]
    renamed = [ReidImage(str(p)) for p in sorted(tmp_path.glob('z*.jpg'))]
    contents = [[Path(im.path).read_bytes() for im in in_content_order(lst)] for lst in (images, renamed)]
    assert contents[0] == contents[1]
    assert in_content_order(images[::-1]) == in_content_order(images)
