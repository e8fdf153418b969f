"""IDL (Eq. 4-6) and ACL (Eq. 7-8) against hand-computed values and a literal loop reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from timm_gam.reid.losses import acl_loss, idl_loss, instance_memory_loss


def idl_reference(anchor, augmented, temperature):
    """Eq. 6 term by term with Python loops, over both views, self left out of every denominator."""
    views = torch.cat([anchor, augmented]).double()
    n, batch = len(views), len(anchor)
    total = 0.0
    for r in range(n):
        partner = (r + batch) % n
        denominator = sum(math.exp(views[k] @ views[r] / temperature) for k in range(n) if k != r)
        prob = [math.exp(views[c] @ views[r] / temperature) / denominator for c in range(n)]
        total -= math.log(prob[partner])
        total -= sum(math.log(1 - prob[c]) for c in range(n) if c not in (r, partner))
    return total / n


def test_idl_hand_computed_orthogonal_pair():
    e1, e2 = torch.eye(2)
    anchor = torch.stack([e1, e2])
    e10 = math.exp(10)  # cos = 1 over tau = 0.1
    # each view: partner logit 10, two negatives with logit 0
    expected = -((10 - math.log(e10 + 2)) + 2 * math.log(1 - 1 / (e10 + 2)))
    assert idl_loss(anchor, anchor.clone(), 0.1).item() == pytest.approx(expected, rel=1e-3)


def test_idl_single_image_has_only_the_positive_term():
    view = F.normalize(torch.randn(1, 8), dim=1)
    assert idl_loss(view, view.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_idl_matches_loop_reference(temperature):
    torch.manual_seed(0)
    anchor = F.normalize(torch.randn(5, 16), dim=1)
    augmented = F.normalize(anchor + 0.3 * torch.randn(5, 16), dim=1)
    expected = idl_reference(anchor, augmented, temperature)
    assert idl_loss(anchor, augmented, temperature).item() == pytest.approx(expected, rel=1e-4)


def test_idl_prefers_matching_views():
    torch.manual_seed(1)
    anchor = F.normalize(torch.randn(8, 32), dim=1)
    matched = idl_loss(anchor, anchor.clone())
    shuffled = idl_loss(anchor, anchor[torch.randperm(8)])
    assert matched < shuffled


def test_idl_gradients_are_finite_for_identical_images():
    same = F.normalize(torch.ones(4, 8), dim=1).requires_grad_()
    loss = idl_loss(same, same)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()


def test_idl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='idl_loss'):
        idl_loss(torch.zeros(2, 4), torch.zeros(3, 4))


def test_acl_hand_computed():
    e1, e2 = torch.eye(2)
    memory = torch.stack([e1, e2])
    loss = acl_loss(e1[None], torch.tensor([0]), memory, 0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-10)), rel=1e-3)
    wrong = acl_loss(e1[None], torch.tensor([1]), memory, 0.1)
    assert wrong.item() == pytest.approx(10 + math.log(1 + math.exp(-10)), rel=1e-5)


def test_acl_does_not_backpropagate_into_memory():
    memory = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    embeddings = F.normalize(torch.randn(2, 4), dim=1).requires_grad_()
    acl_loss(embeddings, torch.tensor([0, 2]), memory).backward()
    assert memory.grad is None and embeddings.grad is not None


def test_acl_leaves_out_the_images_in_no_cluster():
    # DBSCAN's outliers (label -1) take no part: the mean is over the clustered embeddings only
    e1, e2 = torch.eye(2)
    memory = torch.stack([e1, e2])
    embeddings = torch.stack([e1, e2, e1]).requires_grad_()
    loss = acl_loss(embeddings, torch.tensor([0, -1, 1]), memory, 0.1)
    expected = (math.log(1 + math.exp(-10)) + 10 + math.log(1 + math.exp(-10))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert embeddings.grad[1].abs().max() == 0 and embeddings.grad[0].abs().max() > 0


def test_acl_of_outliers_only_is_zero_and_still_differentiable():
    embeddings = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    loss = acl_loss(embeddings, torch.tensor([-1, -1, -1]), F.normalize(torch.randn(2, 4), dim=1))
    loss.backward()
    assert loss.item() == 0 and torch.equal(embeddings.grad, torch.zeros(3, 4))


def test_instance_memory_loss_is_the_non_parametric_softmax():
    """Wu et al. 2018 Eq. 2: -log of exp(v_i . f / tau) over the sum of exp(v_j . f / tau), all images j."""
    generator = torch.Generator().manual_seed(3)
    memory = F.normalize(torch.randn(7, 5, generator=generator), dim=1)
    embeddings = F.normalize(torch.randn(4, 5, generator=generator), dim=1)
    images = torch.tensor([6, 0, 3, 3])
    expected = 0.0
    for f, i in zip(embeddings.double(), images.tolist(), strict=True):
        scores = [math.exp(float(v @ f) / 0.1) for v in memory.double()]
        expected -= math.log(scores[i] / sum(scores))
    loss = instance_memory_loss(embeddings, images, memory, 0.1)
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5)
