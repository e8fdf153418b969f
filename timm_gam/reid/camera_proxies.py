"""Camera-aware proxies: ACL's memory split by camera, and the two losses that use it (beyond the paper).

A network trained without identities learns the camera too (background, light, viewpoint), so the
clusters it forms are mostly one camera's images, and Eq. 7-8's softmax over all clusters then rewards
telling cameras apart, the one thing re-ID must ignore (retrieval only counts matches from other
cameras). CAP (Wang et al., "Camera-aware Proxies for Unsupervised Person Re-Identification", AAAI 2021)
gives every cluster one proxy per camera that sees it, the mean embedding of the cluster's images from
that camera, kept in the memory M in place of the cluster centroid, and trains with

* the intra-camera loss (CAP Eq. 4): each image classified among the proxies of its own camera only, so
  the camera is no help in telling clusters apart;
* the inter-camera loss (CAP Eq. 6): each image pulled towards every proxy of its cluster, whichever
  camera it belongs to, against the K proxies of other clusters most similar to it (hard negatives);

summed as ``L_intra + lambda * L_inter`` (CAP: lambda 0.5, K 50). Both take L2-normalised embeddings
and the L2-normalised memory of :class:`~timm_gam.reid.memory.ClusterMemory` (one row per proxy), and
leave images in no cluster (label -1, DBSCAN's outliers) out, as :func:`~timm_gam.reid.losses.acl_loss`
does. CAP's temperature (0.07) and memory momentum (0.2) are not taken over: the run's tau and momentum
stay the paper's, so that the proxies are the only change against ACL.
"""
from dataclasses import dataclass

import torch

__all__ = ['CameraProxies', 'camera_proxy_loss', 'inter_camera_loss', 'intra_camera_loss']

HARD_NEGATIVES = 50  # CAP's K
INTER_CAMERA_WEIGHT = 0.5  # CAP's lambda


@dataclass(frozen=True)
class CameraProxies:
    """One proxy per (cluster, camera) pair that has an image: ``labels`` (n,) the proxy of each image (-1
    for an image in no cluster), ``cluster`` and ``camera`` (P,) the cluster and camera of each proxy."""
    labels: torch.Tensor
    cluster: torch.Tensor
    camera: torch.Tensor

    @classmethod
    def from_clusters(cls, cluster_labels: torch.Tensor, camera_ids: torch.Tensor) -> 'CameraProxies':
        """Proxies numbered by (cluster, camera) in ascending order, so the same clusters always give the
        same numbering (a resumed run rebuilds them from its saved labels)."""
        cluster_labels = torch.as_tensor(cluster_labels, dtype=torch.long)
        camera_ids = torch.as_tensor(camera_ids, dtype=torch.long, device=cluster_labels.device)
        if camera_ids.shape != cluster_labels.shape:
            raise ValueError(f'one camera id per image needed: {len(camera_ids)} ids for '
                             f'{len(cluster_labels)} cluster labels')
        clustered = cluster_labels >= 0
        if (camera_ids[clustered] < 0).any():
            raise ValueError('camera-aware proxies need the camera of every clustered image (-1 is '
                             'unknown): use a Market-1501 or DukeMTMC-reID layout')
        pairs, inverse = torch.unique(torch.stack([cluster_labels[clustered], camera_ids[clustered]], dim=1),
                                      dim=0, return_inverse=True)
        labels = torch.full_like(cluster_labels, -1)
        labels[clustered] = inverse
        return cls(labels=labels, cluster=pairs[:, 0].contiguous(), camera=pairs[:, 1].contiguous())

    def to(self, device) -> 'CameraProxies':
        return CameraProxies(self.labels.to(device), self.cluster.to(device), self.camera.to(device))


def intra_camera_loss(embeddings: torch.Tensor, proxy_labels: torch.Tensor, camera_ids: torch.Tensor,
                      proxy_camera: torch.Tensor, memory: torch.Tensor, temperature: float) -> torch.Tensor:
    """CAP Eq. 4: ``-log exp(<f, p_own> / tau) / sum_{p of f's camera} exp(<f, p> / tau)``, the mean over
    the clustered embeddings: Eq. 7-8 with the other cameras' proxies left out of the softmax."""
    logits = embeddings @ memory.detach().t() / temperature
    other_camera = proxy_camera[None, :] != camera_ids[:, None]
    return torch.nn.functional.cross_entropy(logits.masked_fill(other_camera, float('-inf')), proxy_labels)


def inter_camera_loss(embeddings: torch.Tensor, proxy_labels: torch.Tensor, proxy_cluster: torch.Tensor,
                      memory: torch.Tensor, temperature: float, hard_negatives: int = HARD_NEGATIVES
                      ) -> torch.Tensor:
    """CAP Eq. 6: with P the proxies of f's cluster (every camera) and Q the ``hard_negatives`` proxies of
    other clusters most similar to f, ``-1/|P| sum_{p in P} log exp(<f, p> / tau) / sum_{u in P and Q}
    exp(<f, u> / tau)``, the mean over the clustered embeddings."""
    logits = embeddings @ memory.detach().t() / temperature
    positive = proxy_cluster[None, :] == proxy_cluster[proxy_labels][:, None]
    others = logits.masked_fill(positive, float('-inf'))
    hardest = others.topk(min(hard_negatives, logits.shape[1]), dim=1).values  # -inf where too few
    positives = logits.masked_fill(~positive, float('-inf'))
    log_denominator = torch.logsumexp(torch.cat([positives, hardest], dim=1), dim=1)
    log_prob_positive = (logits - log_denominator[:, None]).masked_fill(~positive, 0)
    return -(log_prob_positive.sum(1) / positive.sum(1)).mean()


def camera_proxy_loss(embeddings: torch.Tensor, proxy_labels: torch.Tensor, camera_ids: torch.Tensor,
                      proxies: CameraProxies, memory: torch.Tensor, temperature: float,
                      inter_camera_weight: float = INTER_CAMERA_WEIGHT) -> torch.Tensor:
    """CAP's objective ``L_intra + lambda * L_inter`` over the embeddings in a cluster (``proxy_labels``
    >= 0); a batch with none has zero loss."""
    clustered = proxy_labels >= 0
    if not clustered.any():
        return embeddings.new_zeros(()) * embeddings.sum()  # zero, still part of the graph
    embeddings, proxy_labels = embeddings[clustered], proxy_labels[clustered]
    intra = intra_camera_loss(embeddings, proxy_labels, camera_ids[clustered], proxies.camera, memory,
                              temperature)
    inter = inter_camera_loss(embeddings, proxy_labels, proxies.cluster, memory, temperature)
    return intra + inter_camera_weight * inter
