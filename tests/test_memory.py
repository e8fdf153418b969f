"""The cluster memory bank of ACL: construction from embeddings and the per-iteration update."""
import math

import pytest
import torch

from timm_gam.reid.memory import ClusterMemory


def test_from_embeddings_is_the_normalised_cluster_mean():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    memory = ClusterMemory.from_embeddings(embeddings, torch.tensor([0, 0, 1]))
    h = 1 / math.sqrt(2)
    assert torch.allclose(memory.centroids, torch.tensor([[h, h], [0.0, -1.0]]))


def test_update_hand_computed():
    memory = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.5)
    memory.update(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    h = 1 / math.sqrt(2)
    assert torch.allclose(memory.centroids, torch.tensor([[h, h], [0.0, 1.0]]))  # cluster 1 untouched


def test_images_in_no_cluster_neither_make_nor_move_a_centroid():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    memory = ClusterMemory.from_embeddings(embeddings, torch.tensor([0, -1, 1, 0]))
    assert torch.allclose(memory.centroids, torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    memory.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([-1, 1]))
    h = 1 / math.sqrt(2)
    assert torch.allclose(memory.centroids, torch.tensor([[1.0, 0.0], [h, -h]]))  # cluster 0 untouched
    memory.update(torch.tensor([[0.0, 1.0]]), torch.tensor([-1]))  # a batch of outliers only
    assert torch.allclose(memory.centroids, torch.tensor([[1.0, 0.0], [h, -h]]))


def test_update_keeps_unit_norm_and_state_round_trips():
    torch.manual_seed(0)
    memory = ClusterMemory(torch.randn(5, 8), momentum=0.3)
    memory.update(torch.nn.functional.normalize(torch.randn(6, 8), dim=1), torch.tensor([0, 1, 1, 4, 4, 4]))
    assert torch.allclose(memory.centroids.norm(dim=1), torch.ones(5))
    restored = ClusterMemory.from_state_dict(memory.state_dict())
    assert torch.allclose(restored.centroids, memory.centroids) and restored.momentum == 0.3


def test_state_dict_restores_the_centroids_bit_for_bit():
    """Normalising saved unit vectors again moves some of them by an ulp; a resumed run would drift."""
    torch.manual_seed(0)
    memory = ClusterMemory(torch.randn(1000, 64))
    renormalised = torch.nn.functional.normalize(memory.centroids, dim=1)
    assert not torch.equal(renormalised, memory.centroids)  # the drift this test guards against exists
    restored = ClusterMemory.from_state_dict(memory.state_dict())
    assert torch.equal(restored.centroids, memory.centroids)
    restored.update(memory.centroids[:3], torch.tensor([0, 1, 2]))
    assert not torch.equal(restored.centroids, memory.centroids)  # a copy, not the saved tensor itself


def test_momentum_out_of_range():
    with pytest.raises(ValueError, match='momentum'):
        ClusterMemory(torch.ones(1, 2), momentum=1.0)
