"""Camera-aware proxies (CAP, Wang et al. AAAI 2021) against the paper's definitions written out image by
image with Python loops and ``math``, and in a training run that resumes bit for bit."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_time_budget import MODEL, assert_same_weights, minute_per_step, straight_and_budgeted  # noqa: F401
from tiny_config import tiny_config

from timm_gam.model_card import model_card
from timm_gam.reid.camera_proxies import (
    CameraProxies,
    camera_proxy_loss,
    inter_camera_loss,
    intra_camera_loss,
)
from timm_gam.reid.checkpoint import TrainingCheckpoint
from timm_gam.reid.embedding import load_embedder
from timm_gam.reid.memory import ClusterMemory
from timm_gam.reid.trainer import train

TAU = 0.1


def example(seed=0, n=40, clusters=6, cameras=3, dim=8):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, clusters, (n,), generator=generator)
    camera_ids = torch.randint(0, cameras, (n,), generator=generator)
    embeddings = F.normalize(torch.randn(n, dim, generator=generator), dim=1)
    return labels, camera_ids, embeddings


def reference_proxies(labels, camera_ids):
    pairs = sorted({(int(c), int(k)) for c, k in zip(labels, camera_ids, strict=True) if c >= 0})
    number = {pair: p for p, pair in enumerate(pairs)}
    return [number.get((int(c), int(k)), -1) for c, k in zip(labels, camera_ids, strict=True)], pairs


def test_one_proxy_per_cluster_and_camera_seen_and_none_for_outliers():
    labels, camera_ids, embeddings = example()
    proxies = CameraProxies.from_clusters(labels, camera_ids)
    expected_labels, pairs = reference_proxies(labels, camera_ids)
    assert proxies.labels.tolist() == expected_labels
    assert list(zip(proxies.cluster.tolist(), proxies.camera.tolist(), strict=True)) == pairs
    memory = ClusterMemory.from_embeddings(embeddings, proxies.labels).centroids
    for p, (cluster, camera) in enumerate(pairs):
        members = [i for i in range(len(labels)) if labels[i] == cluster and camera_ids[i] == camera]
        mean = F.normalize(embeddings[members].mean(0), dim=0)
        torch.testing.assert_close(memory[p], mean)


def log_softmax_entry(scores: dict, target) -> float:
    return scores[target] - math.log(sum(math.exp(s) for s in scores.values()))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_intra_camera_loss_classifies_among_the_own_cameras_proxies(seed):
    labels, camera_ids, embeddings = example(seed)
    proxies = CameraProxies.from_clusters(labels, camera_ids)
    memory = F.normalize(torch.randn(len(proxies.cluster), embeddings.shape[1]), dim=1)
    keep = proxies.labels >= 0
    loss = intra_camera_loss(embeddings[keep], proxies.labels[keep], camera_ids[keep], proxies.camera,
                             memory, TAU)
    terms = []
    for i in keep.nonzero().flatten().tolist():
        own_camera = {p: float(embeddings[i] @ memory[p]) / TAU for p in range(len(memory))
                      if proxies.camera[p] == camera_ids[i]}
        terms.append(-log_softmax_entry(own_camera, int(proxies.labels[i])))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize('seed,hard_negatives', [(0, 2), (1, 4), (2, 50)])
def test_inter_camera_loss_pulls_to_every_proxy_of_the_cluster_against_the_hardest_others(seed,
                                                                                           hard_negatives):
    labels, camera_ids, embeddings = example(seed)
    proxies = CameraProxies.from_clusters(labels, camera_ids)
    memory = F.normalize(torch.randn(len(proxies.cluster), embeddings.shape[1]), dim=1)
    keep = proxies.labels >= 0
    loss = inter_camera_loss(embeddings[keep], proxies.labels[keep], proxies.cluster, memory, TAU,
                             hard_negatives)
    terms = []
    for i in keep.nonzero().flatten().tolist():
        scores = {p: float(embeddings[i] @ memory[p]) / TAU for p in range(len(memory))}
        positives = [p for p in scores if proxies.cluster[p] == labels[i]]
        negatives = sorted((p for p in scores if p not in positives), key=scores.get)[-hard_negatives:]
        softmax_over = {p: scores[p] for p in positives + negatives}
        terms.append(-sum(log_softmax_entry(softmax_over, p) for p in positives) / len(positives))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_the_objective_is_intra_plus_half_inter_over_clustered_images_and_trains_embeddings_only():
    labels, camera_ids, embeddings = example(3)
    proxies = CameraProxies.from_clusters(labels, camera_ids)
    memory = F.normalize(torch.randn(len(proxies.cluster), embeddings.shape[1]), dim=1).requires_grad_()
    embeddings.requires_grad_()
    loss = camera_proxy_loss(embeddings, proxies.labels, camera_ids, proxies, memory, TAU)
    keep = proxies.labels >= 0
    expected = (intra_camera_loss(embeddings[keep], proxies.labels[keep], camera_ids[keep], proxies.camera,
                                  memory, TAU)
                + 0.5 * inter_camera_loss(embeddings[keep], proxies.labels[keep], proxies.cluster, memory,
                                          TAU))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert memory.grad is None  # M moves by its momentum update only
    assert embeddings.grad[~keep].abs().sum() == 0 and embeddings.grad[keep].abs().sum() > 0
    no_cluster = torch.full_like(labels, -1)
    outliers_only = camera_proxy_loss(embeddings, no_cluster, camera_ids, proxies, memory, TAU)
    assert outliers_only.item() == 0 and outliers_only.requires_grad


def test_a_run_with_camera_proxies_trains_and_resumes_exactly(tmp_path, minute_per_step):  # noqa: F811
    straight, a, _, b = straight_and_budgeted(tmp_path, clustering='dbscan', camera_proxies=True, stages=1)
    labels = a['state']['cluster_labels']
    proxies = CameraProxies.from_clusters(labels, torch.tensor(reference_cameras(tmp_path / 'straight')))
    assert len(proxies.cluster) > straight['num_clusters']  # clusters seen by more than one camera split
    assert a['state']['memory']['centroids'].shape[0] == len(proxies.cluster)
    assert torch.equal(labels, b['state']['cluster_labels'])
    assert_same_weights(a, b)
    assert torch.equal(a['state']['memory']['centroids'], b['state']['memory']['centroids'])
    card = model_card(load_embedder(checkpoint=tmp_path / 'straight' / 'checkpoint.pt'), 'timm-gam/tiny',
                      metrics=None, measured_by_publish=False)
    assert ('clusters formed afresh by DBSCAN at every stage (docs/recipe.md), ACL\'s memory holding one '
            'proxy per cluster and camera' in ' '.join(card.split()))


def test_a_resume_that_switches_camera_proxies_on_mid_stage_builds_the_proxy_memory(tmp_path,
                                                                                    minute_per_step):  # noqa: F811
    options = dict(model=MODEL, clustering='dbscan', stages=1)
    train(tiny_config(tmp_path / 'run', **options, time_budget_min=7))  # 6 warm-up steps, 1 of stage 1
    before = TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state
    assert (before.stage, before.step_in_epoch) == (1, 1)
    train(tiny_config(tmp_path / 'run', **options, camera_proxies=True, time_budget_min=1e9), resume=True)
    after = TrainingCheckpoint.load(tmp_path / 'run' / 'checkpoint.pt').state
    assert torch.equal(after.cluster_labels, before.cluster_labels)  # the stage's clusters are kept
    cameras = torch.tensor(reference_cameras(tmp_path / 'run'))
    proxies = CameraProxies.from_clusters(after.cluster_labels, cameras)
    assert len(after.memory.centroids) == len(proxies.cluster) > len(before.memory.centroids)


def reference_cameras(run):
    from timm_gam.reid.datasets import prepare_data
    return [im.camid for im in prepare_data(run / 'data' / 'synthetic', 'auto').train]


def test_camera_proxies_need_acl(tmp_path):
    with pytest.raises(ValueError, match='--camera-proxies changes ACL'):
        tiny_config(tmp_path / 'run', loss='idl', camera_proxies=True)
