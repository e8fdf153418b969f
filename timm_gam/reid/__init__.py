"""Unsupervised person re-ID: the library behind ``recipes/unsup_reid.py``.

Paper section -> function:

* Eq. 4-6, IDL ........................ :func:`idl_loss`
* Eq. 7-8, ACL ........................ :func:`acl_loss`, memory bank :class:`ClusterMemory`
* Eq. 9-10, bottom-up merging ......... :func:`merge_clusters`
* Eq. 11, total loss and the stages ... :func:`train` with :class:`TrainConfig`
* Market-1501 protocol, CMC and mAP ... :func:`evaluate_rank`
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .clustering import cluster_purity, merge_clusters
from .datasets import (
                       ImageLoadError,
                       ReidImage,
                       ReidImageDataset,
                       ReidSplits,
                       check_images,
                       load_image,
                       load_reid_dataset,
)
from .embedding import ReidEmbedder, create_embedder, extract_embeddings
from .evaluation import evaluate_embeddings, evaluate_rank, pairwise_euclidean
from .losses import acl_loss, idl_loss
from .memory import ClusterMemory
from .synthetic import make_synthetic_reid
from .trainer import TrainConfig, evaluate_run, train
from .transforms import TwoViews, build_eval_transform, build_train_transform

__all__ = [
    'CheckpointError', 'ClusterMemory', 'ImageLoadError', 'ReidEmbedder', 'ReidImage', 'ReidImageDataset',
    'ReidSplits', 'TrainConfig', 'TwoViews', 'acl_loss', 'build_eval_transform', 'build_train_transform',
    'check_images', 'cluster_purity', 'create_embedder', 'evaluate_embeddings', 'evaluate_rank',
    'evaluate_run', 'extract_embeddings', 'idl_loss', 'load_checkpoint', 'load_image', 'load_reid_dataset',
    'make_synthetic_reid', 'merge_clusters', 'pairwise_euclidean', 'save_checkpoint', 'train',
]
