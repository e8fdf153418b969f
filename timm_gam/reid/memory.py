"""The cluster memory bank M of ACL (paper Sec. 4.3): one centroid per cluster."""
import torch
import torch.nn.functional as F

__all__ = ['ClusterMemory']


class ClusterMemory:
    """Centroids M_beta of the current clusters, kept on the unit sphere.

    Built from all training embeddings at the start of a stage (the mean of each cluster's
    members), then, as the paper says, "the optimized representation is used to update the memory
    bank" after every iteration: each centroid moves towards the new embeddings of its members,
    ``M_b <- normalise(momentum * M_b + (1 - momentum) * mean of batch embeddings labelled b)``.
    Momentum 0.5 is BUC's (Lin et al., AAAI 2019) exclusive-memory update.

    Centroids are computed from the embeddings themselves, never initialised by slot order, so no
    ordering of the files (Market names sort by identity) can leak into the memory.
    """

    def __init__(self, centroids: torch.Tensor, momentum: float = 0.5):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f'memory momentum must be in [0, 1), got {momentum}')
        self.centroids = F.normalize(centroids.detach().float(), dim=1)
        self.momentum = momentum

    @classmethod
    def from_embeddings(cls, embeddings: torch.Tensor, cluster_labels: torch.Tensor,
                        momentum: float = 0.5) -> 'ClusterMemory':
        """Mean embedding of each cluster 0..C-1; ``cluster_labels`` must be contiguous from 0, with -1 for
        images no cluster takes (DBSCAN's outliers)."""
        labels, embeddings = cluster_labels.long().cpu(), embeddings.detach().float().cpu()
        clustered = labels >= 0
        sums = torch.zeros(int(labels.max()) + 1, embeddings.shape[1], dtype=torch.float32)
        sums.index_add_(0, labels[clustered], embeddings[clustered])
        return cls(sums, momentum)

    def to(self, device) -> 'ClusterMemory':
        self.centroids = self.centroids.to(device)
        return self

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, cluster_labels: torch.Tensor) -> None:
        """Move each batch cluster's centroid towards its members' mean embedding; images labelled -1
        (in no cluster) move nothing."""
        clustered = cluster_labels >= 0
        embeddings, cluster_labels = embeddings[clustered], cluster_labels[clustered]
        if not len(cluster_labels):
            return
        clusters, inverse = torch.unique(cluster_labels, return_inverse=True)
        batch_means = torch.zeros(len(clusters), embeddings.shape[1], device=embeddings.device)
        batch_means.index_add_(0, inverse, embeddings.detach().float())
        batch_means = F.normalize(batch_means, dim=1)  # mean direction; the count does not matter
        moved = self.momentum * self.centroids[clusters] + (1 - self.momentum) * batch_means
        self.centroids[clusters] = F.normalize(moved, dim=1)

    def state_dict(self) -> dict:
        return {'centroids': self.centroids.cpu(), 'momentum': self.momentum}

    @classmethod
    def from_state_dict(cls, state: dict) -> 'ClusterMemory':
        """The memory exactly as saved: normalising the saved centroids again would move them by about
        one unit in the last place, and a resumed run would drift away from an uninterrupted one."""
        memory = cls(state['centroids'], state['momentum'])
        memory.centroids = state['centroids'].detach().float().clone()
        return memory
