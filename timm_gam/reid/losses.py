"""The two training objectives of the paper: IDL (Sec. 4.2, Eq. 4-6) and ACL (Sec. 4.3, Eq. 7-8).

Both take L2-normalised embeddings, so every dot product is a cosine similarity, and both use the
paper's temperature tau = 0.1. The total loss of Eq. 11 is their sum, formed by the trainer.
"""
import torch
import torch.nn.functional as F

__all__ = ['idl_loss', 'acl_loss', 'instance_memory_loss']


def idl_loss(anchor: torch.Tensor, augmented: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Instance Discriminative Loss, Eq. 6, built from the probabilities of Eq. 4 and Eq. 5.

    ``anchor[i]`` is phi(x_i) and ``augmented[i]`` is phi(x^_i), an augmented view of the same image.
    Each of the 2B embeddings of the batch is an instance classifier for its partner view: Eq. 4's
    P(i | x^_i) is maximised and Eq. 5's P(i | x_j), j != i, is pushed down through log(1 - P).

    Two choices the paper leaves open, settled as in its reference [37] (Ye et al., CVPR 2019), whose
    softmax embedding Eq. 4-6 restate:

    * the loss is symmetric: the anchor view also classifies the augmented one, so both views of
      the batch are anchors (2B terms), and
    * a sample is left out of its own softmax denominator. Its self-similarity is always 1/tau = 10,
      which would otherwise dominate every denominator of Eq. 5 and make P(i | x_j) vanish.

    Returns the mean over the 2B anchors of Eq. 6's per-anchor terms.
    """
    if anchor.shape != augmented.shape or anchor.dim() != 2:
        raise ValueError(f'idl_loss needs two (B, D) embeddings of one shape, got {tuple(anchor.shape)} '
                         f'and {tuple(augmented.shape)}')
    batch = anchor.shape[0]
    views = torch.cat([anchor, augmented])
    logits = views @ views.t() / temperature
    is_self = torch.eye(2 * batch, dtype=torch.bool, device=views.device)
    logits = logits.masked_fill(is_self, float('-inf'))
    log_prob = logits.log_softmax(dim=1)  # row r: log P(. | view r) over all other views

    partner = torch.arange(2 * batch, device=views.device).roll(batch)
    log_prob_positive = log_prob[torch.arange(2 * batch), partner]  # Eq. 4

    is_negative = ~is_self
    is_negative[torch.arange(2 * batch), partner] = False
    # log(1 - P) from log P without cancellation: log1p(-exp(log P)), P < 1 off the diagonal
    log_not_negative = torch.log1p(-log_prob.exp().clamp(max=1 - 1e-6))  # Eq. 5 inside Eq. 6
    negatives_term = (log_not_negative * is_negative).sum(dim=1)

    return -(log_prob_positive + negatives_term).mean()


def acl_loss(embeddings: torch.Tensor, cluster_labels: torch.Tensor, memory: torch.Tensor,
             temperature: float = 0.1) -> torch.Tensor:
    """Agglomerative Clustering Loss, Eq. 8: the negative log of Eq. 7's P(beta_i | x_i).

    ``memory`` holds one L2-normalised centroid M_beta per cluster (|M| rows); each embedding is
    classified among all clusters by cosine similarity over the temperature. Gradients flow into the
    embeddings only: the memory bank is updated separately, after the optimiser step
    (see :class:`timm_gam.reid.memory.ClusterMemory`). Returns the mean over the batch's embeddings that
    are in a cluster: label -1 (an outlier of ``clustering='dbscan'``) leaves an embedding out, and a
    batch of outliers only has zero loss.
    """
    clustered = cluster_labels >= 0
    if not clustered.any():
        return embeddings.new_zeros(()) * embeddings.sum()  # zero, still part of the graph
    logits = embeddings[clustered] @ memory.detach().t() / temperature  # Eq. 7 numerator and denominator
    return F.cross_entropy(logits, cluster_labels[clustered])


def instance_memory_loss(embeddings: torch.Tensor, image_indices: torch.Tensor, memory: torch.Tensor,
                         temperature: float = 0.1) -> torch.Tensor:
    """Instance discrimination against a memory of every training image (an option beyond the paper).

    Wu et al. (CVPR 2018, non-parametric softmax, Eq. 2) classify each embedding among all n training
    images, each represented by its slot of a memory bank of their past embeddings; Zhong et al. (CVPR
    2019, ECN) use that exemplar memory for unsupervised re-ID. Against Eq. 4-6, whose negatives are the
    2B - 2 other views of the batch (nearly all told apart after a few epochs), every embedding here
    meets all n - 1 other images as negatives, in every stage.

    It is ACL's Eq. 7-8 with every image its own cluster, so it is computed by :func:`acl_loss`:
    ``memory`` is (n, D), L2-normalised, row i the memory of image i.
    """
    return acl_loss(embeddings, image_indices, memory, temperature)
