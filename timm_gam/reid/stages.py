"""Between two stages of the schedule: re-cluster the training set (Eq. 9-10) and rebuild the memory.

Stage 0 trains with every image its own cluster (|M| = n). Each later stage starts from embeddings of
the whole training set, merges the closest clusters bottom-up (:func:`merge_clusters`), or with
``clustering='dbscan'`` clusters them afresh (:func:`dbscan_labels`, label -1 for its outliers; with
``reliability_gap``, SpCL's criterion makes the unreliable clusters' images outliers too), and
builds the memory bank M of ACL from the new clusters (the mean embedding of each, Sec. 4.3; with
``camera_proxies``, of each cluster's images from one camera, :mod:`~timm_gam.reid.camera_proxies`).
The caller embeds; this module only decides, so it needs neither the model nor the trainer.
"""
import time
from collections.abc import Sequence

import torch

from .camera_proxies import CameraProxies
from .cameras import camera_centred
from .checkpoint import RunState
from .cluster_reliability import reliable_clusters
from .clustering import merge_clusters
from .config import TrainConfig, merges_for_stage
from .density_clustering import dbscan_labels, k_reciprocal_jaccard_distance
from .distributed import ProcessGroup, broadcast_tensor
from .memory import ClusterMemory

__all__ = ['begin_stage', 'build_missing_memories', 'memories_missing', 'stage_needs_embeddings']


def stage_needs_embeddings(config: TrainConfig, state: RunState) -> bool:
    """Whether the stage starting at ``state`` uses clusters or builds the instance memory: in-batch IDL
    alone needs neither."""
    return config.acl_in_stage(state.stage) or (config.uses_instance_memory and state.instance_memory is None)


def begin_stage(config: TrainConfig, state: RunState, embeddings: torch.Tensor, cameras: Sequence[int],
                group: ProcessGroup, identities: Sequence[int] | None = None) -> dict | None:
    """Set up ``state`` for its stage from the training set's ``embeddings``: the instance memory (built
    once, then kept up to date by the steps), then from stage 1 on the merge (rank 0's labels rule on
    every rank), then M. Returns what the merge did, or None where the stage merged nothing.
    ``identities``, the file-name identities, are passed only for ``clustering='identities'``."""
    _build_instance_memory(config, state, embeddings, group)
    if not config.acl_in_stage(state.stage):
        return None
    merged = None
    if state.stage > 0:
        start = time.perf_counter()
        features = camera_centred(embeddings, cameras) if config.camera_centred_merge else embeddings
        if config.clustering == 'identities':  # the supervised upper bound: clusters are the people
            labels = torch.unique(torch.as_tensor(identities), return_inverse=True)[1]
            what = {}
        elif config.clustering == 'dbscan':
            labels, what = _density_clusters(config, state, features)
        else:
            num_merges = merges_for_stage(config, len(embeddings), int(state.cluster_labels.max()) + 1)
            labels = merge_clusters(features, state.cluster_labels.numpy(), num_merges, config.size_penalty,
                                    distance=config.cluster_distance, size_update=config.size_update,
                                    max_cluster_size=config.max_cluster_size)
            what = {'merges': num_merges}
        state.cluster_labels = broadcast_tensor(torch.as_tensor(labels, dtype=torch.long), group)
        merged = {'stage': state.stage, **what, 'num_clusters': int(state.cluster_labels.max()) + 1,
                  'seconds': time.perf_counter() - start}
    _build_cluster_memory(config, state, embeddings, cameras, group)
    return merged


def _density_clusters(config: TrainConfig, state: RunState, features: torch.Tensor) -> tuple:
    """DBSCAN's labels, and with ``reliability_gap`` only the clusters SpCL's criterion trusts (the
    independence threshold fixed at the run's first clustering, kept in ``state``)."""
    distance = k_reciprocal_jaccard_distance(features)
    labels = dbscan_labels(distance, config.dbscan_eps, config.dbscan_min_samples)
    what = {}
    if config.reliability_gap:
        tight, loose = (dbscan_labels(distance, config.dbscan_eps + sign * config.reliability_gap,
                                      config.dbscan_min_samples) for sign in (-1, 1))
        what['dbscan_clustered'] = int((labels >= 0).sum())
        labels, state.independence_threshold = reliable_clusters(labels, tight, loose,
                                                                 state.independence_threshold)
        what['independence_threshold'] = state.independence_threshold
    return labels, {'outliers': int((labels < 0).sum()), **what}


def memories_missing(config: TrainConfig, state: RunState) -> bool:
    """Whether a run resumed part-way through a stage lacks a memory its losses now need: a resume whose
    changed flags switch on the instance memory or ACL where the saved run had neither."""
    return ((config.uses_instance_memory and state.instance_memory is None)
            or (config.acl_in_stage(state.stage) and state.memory is None))


def build_missing_memories(config: TrainConfig, state: RunState, embeddings: torch.Tensor,
                           cameras: Sequence[int], group: ProcessGroup) -> None:
    """Build the memories :func:`memories_missing` finds from the training set's ``embeddings``, keeping the
    stage's clusters as they are: a merge belongs to the start of a stage, never to a resume."""
    _build_instance_memory(config, state, embeddings, group)
    if config.acl_in_stage(state.stage) and state.memory is None:
        _build_cluster_memory(config, state, embeddings, cameras, group)


def _build_instance_memory(config: TrainConfig, state: RunState, embeddings: torch.Tensor,
                           group: ProcessGroup) -> None:
    """The instance memory, one slot per image, built once; the steps keep it up to date afterwards."""
    if config.uses_instance_memory and state.instance_memory is None:
        state.instance_memory = ClusterMemory.from_embeddings(
            embeddings, torch.arange(len(embeddings)), config.memory_momentum).to(group.device)


def _build_cluster_memory(config: TrainConfig, state: RunState, embeddings: torch.Tensor,
                          cameras: Sequence[int], group: ProcessGroup) -> None:
    """M of Sec. 4.3: the mean embedding of each of the stage's clusters, or with ``camera_proxies`` of
    each (cluster, camera) proxy (reid/camera_proxies.py)."""
    labels = state.cluster_labels
    if config.camera_proxies:
        labels = CameraProxies.from_clusters(labels, torch.as_tensor(cameras)).labels
    state.memory = ClusterMemory.from_embeddings(embeddings, labels, config.memory_momentum).to(group.device)
