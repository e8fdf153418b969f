"""Unsupervised person re-ID: the library behind ``recipes/unsup_reid.py``.

Paper section -> function:

* Eq. 4-6, IDL ........................ :func:`idl_loss`
* Eq. 7-8, ACL ........................ :func:`acl_loss`, memory bank :class:`ClusterMemory`
* Eq. 9-10, bottom-up merging ......... :func:`dense_merge` (the rule), :func:`merge_clusters` (fast)
* Eq. 11, total loss and the stages ... ``Trainer.train_step``; :func:`train` with :class:`TrainConfig`
* section 5.2's augmentations ......... :class:`AugmentationSpec`, read by both data paths
* Market-1501 protocol, CMC and mAP ... :func:`evaluate_rank`

A trained model is loaded one way, :func:`load_embedder` (a checkpoint or pretrained weights), and
evaluated one way, :func:`evaluate_model` / :func:`evaluate_split`. :class:`FeatureExtractor` gives
practitioners its features for paths, PIL images or numpy crops.
"""
from .checkpoint import CheckpointError, RunState, TrainingCheckpoint, load_checkpoint, save_checkpoint
from .clustering import cluster_purity, dense_merge, merge_clusters
from .config import TrainConfig
from .datasets import (
    ImageLoadError,
    ReidImage,
    ReidImageDataset,
    ReidSplits,
    check_images,
    load_image,
    load_reid_dataset,
    prepare_data,
)
from .embedding import LoadedEmbedder, ReidEmbedder, create_embedder, extract_embeddings, load_embedder
from .eval_only import evaluate_run
from .evaluation import evaluate_embeddings, evaluate_model, evaluate_rank, evaluate_split, pairwise_euclidean
from .feature_extractor import FeatureExtractor
from .losses import acl_loss, idl_loss
from .memory import ClusterMemory
from .run_log import read_events
from .synthetic import make_synthetic_reid
from .trainer import train
from .transforms import AugmentationSpec, TwoViews, build_eval_transform, build_train_transform

__all__ = [
    'AugmentationSpec', 'CheckpointError', 'ClusterMemory', 'FeatureExtractor', 'ImageLoadError',
    'LoadedEmbedder', 'ReidEmbedder', 'ReidImage', 'ReidImageDataset', 'ReidSplits', 'RunState',
    'TrainConfig', 'TrainingCheckpoint', 'TwoViews', 'acl_loss', 'build_eval_transform',
    'build_train_transform', 'check_images', 'cluster_purity', 'create_embedder', 'dense_merge',
    'evaluate_embeddings', 'evaluate_model', 'evaluate_rank', 'evaluate_run', 'evaluate_split',
    'extract_embeddings', 'idl_loss', 'load_checkpoint', 'load_embedder', 'load_image',
    'load_reid_dataset', 'make_synthetic_reid', 'merge_clusters', 'pairwise_euclidean', 'prepare_data',
    'read_events', 'save_checkpoint', 'train',
]
