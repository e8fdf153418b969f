"""Retrieval with the pooled features before the embedding head (``retrieval_features='pooled'``).

The reference is written out here from the trunk's last feature map: its spatial mean, L2-normalised.
A pooled run must train exactly as the same run retrieving with the head (only evaluation and the released
model change), evaluate what its checkpoint gives when loaded, and release a timm model without its head
whose plain forward is that reference, through the real Hub loading path offline.
"""
import json
from dataclasses import replace

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from recipe_scripts import load_experiment, load_recipe
from test_hub import assert_same_tensors, run_offline

from timm_gam import hub
from timm_gam.reid import ReidEmbedder, load_embedder
from timm_gam.reid.checkpoint import load_checkpoint
from timm_gam.reid.datasets import EVALUATION_SPLITS, prepare_data
from timm_gam.reid.evaluation import evaluate_model
from timm_gam.reid.trainer import train

REPO_ID = 'timm-gam/test_convnext.pooled'


def pooled_by_hand(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The spatial mean of the last feature map, L2-normalised; for ConvNeXt (the tiny runs' model) after
    the layer norm its head applies to the pooled map before its classifier."""
    with torch.no_grad():
        pooled = backbone.forward_features(images).mean(dim=(2, 3), keepdim=True)
        norm = getattr(getattr(backbone, 'head', None), 'norm', torch.nn.Identity())
        return F.normalize(norm(pooled).flatten(1), dim=1)


@pytest.fixture(scope='module')
def pooled_run(tiny_run, tmp_path_factory):
    """The session's tiny run again, retrieving with the pooled features; same seed, same data."""
    config = replace(tiny_run.config, output=str(tmp_path_factory.mktemp('pooled_run')),
                     retrieval_features='pooled', synthetic={}, data_root=str(tiny_run.data_root))
    return config, train(config)


def test_pooled_features_are_the_normalised_mean_of_the_last_feature_map():
    torch.manual_seed(0)
    backbone = timm.create_model('gam_resnet50_g4', num_classes=64).eval()
    images = torch.randn(3, 3, 64, 32)
    pooled = ReidEmbedder(backbone, 'pooled')
    assert pooled.embed_dim == backbone.num_features == 2048
    torch.testing.assert_close(pooled(images), pooled_by_hand(backbone, images))
    head = ReidEmbedder(backbone)
    assert head.embed_dim == 64
    torch.testing.assert_close(head(images), F.normalize(backbone(images), dim=1))
    with pytest.raises(ValueError, match="'head', 'pooled'"):
        ReidEmbedder(backbone, 'neck')


def test_pooled_retrieval_leaves_training_as_it_was(tiny_run, pooled_run):
    config, _ = pooled_run
    assert_same_tensors(load_checkpoint(tiny_run.checkpoint)['model'],
                        load_checkpoint(f'{config.output}/checkpoint.pt')['model'])


def test_the_run_evaluates_the_pooled_features_its_checkpoint_gives(pooled_run):
    config, metrics = pooled_run
    loaded = load_embedder(checkpoint=f'{config.output}/checkpoint.pt')
    assert loaded.backbone.num_classes == 0 and loaded.embed_dim == loaded.backbone.num_features
    splits = prepare_data(config.data_root, splits=EVALUATION_SPLITS)
    images = torch.randn(2, 3, *config.image_size)
    torch.testing.assert_close(loaded.embedder(images), pooled_by_hand(loaded.backbone, images))
    again = evaluate_model(loaded.embedder, splits.query, splits.gallery, loaded.image_size,
                           batch_size=config.eval_batch_size)
    for key in ('rank1', 'rank5', 'mAP'):
        assert metrics[key] == pytest.approx(again[key], abs=1e-6), key
    # the head stays in the checkpoint: asked for, it comes back
    head = load_embedder(checkpoint=f'{config.output}/checkpoint.pt', retrieval_features='head')
    assert head.embed_dim == config.embed_dim


def test_a_pooled_release_loads_offline_as_a_timm_model_without_its_head(pooled_run, tmp_path):
    config, _ = pooled_run
    checkpoint = f'{config.output}/checkpoint.pt'
    folder = load_recipe('publish').main(['--checkpoint', checkpoint, '--repo-id', REPO_ID,
                                          '--output', str(tmp_path / 'hub'), '--dry-run'])
    hf_config = json.loads((folder / 'config.json').read_text())
    assert hf_config['num_classes'] == 0 and hf_config['pretrained_cfg']['num_classes'] == 0
    assert 'pooled features' in (folder / 'README.md').read_text()
    cache, out = tmp_path / 'cache', tmp_path / 'loaded'
    out.mkdir()
    hub.install_into_hf_cache(folder, REPO_ID, cache_dir=cache)
    result = run_offline(cache, out, [(f'hf-hub:{REPO_ID}', {})])
    assert result.returncode == 0, result.stderr
    trained = load_checkpoint(checkpoint)['model']
    released = safetensors.torch.load_file(out / '0.safetensors')
    assert_same_tensors({k: v for k, v in trained.items() if k in released}, released)
    assert set(trained) - set(released) == {'head.fc.weight', 'head.fc.bias'}  # test_convnext's head
    trunk = timm.create_model(config.model, num_classes=0)
    trunk.load_state_dict(released)
    trunk.eval()
    with_head = timm.create_model(config.model, num_classes=config.embed_dim)
    with_head.load_state_dict(trained)
    images = torch.randn(2, 3, *config.image_size)
    with torch.no_grad():
        released_features = F.normalize(trunk(images), dim=1)
    torch.testing.assert_close(released_features, pooled_by_hand(with_head.eval(), images))


def test_publish_can_release_a_head_run_with_its_pooled_features(tiny_run, tmp_path):
    folder = load_recipe('publish').main(['--checkpoint', str(tiny_run.checkpoint), '--repo-id', REPO_ID,
                                          '--output', str(tmp_path / 'hub'), '--dry-run',
                                          '--retrieval-features', 'pooled'])
    assert json.loads((folder / 'config.json').read_text())['num_classes'] == 0


def test_training_identities_score_each_readout_on_a_query_of_each_persons_first_image_per_camera(tiny_run):
    experiment = load_experiment('training_identities')
    train = prepare_data(tiny_run.data_root).train
    query, gallery = experiment.first_per_person_and_camera(train)
    firsts = {}
    for image in train:
        key = (image.pid, image.camid)
        firsts[key] = min(firsts.get(key, str(image.path)), str(image.path))
    assert sorted(str(image.path) for image in query) == sorted(firsts.values())
    assert sorted(map(str, [im.path for im in query + gallery])) == sorted(str(im.path) for im in train)
    results = experiment.main(['--data-root', str(tiny_run.data_root), '--checkpoint',
                               str(tiny_run.checkpoint), '--retrieval-features', 'head', 'pooled'])
    assert [r['features'] for r in results] == ['head', 'pooled']
    for result, features in zip(results, ('head', 'pooled'), strict=True):
        loaded = load_embedder(checkpoint=tiny_run.checkpoint, retrieval_features=features)
        expected = evaluate_model(loaded.embedder, query, gallery, loaded.image_size)
        assert result['mAP'] == pytest.approx(expected['mAP']) and result['rank1'] == expected['rank1']
