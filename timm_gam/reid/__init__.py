"""Unsupervised person re-ID: the library behind ``recipes/unsup_reid.py``.

Paper section -> function:

* Eq. 4-6, IDL ........................ :func:`idl_loss`
* Eq. 7-8, ACL ........................ :func:`acl_loss`, memory bank :class:`ClusterMemory`
* Eq. 9-10, bottom-up merging ......... :func:`merge_clusters`
* Eq. 11, total loss and the stages ... :func:`train` with :class:`TrainConfig`
* Market-1501 protocol, CMC and mAP ... :func:`evaluate_rank`

A trained model is loaded one way, :func:`load_embedder` (a checkpoint or pretrained weights), and
evaluated one way, :func:`evaluate_model` / :func:`evaluate_split`. :class:`FeatureExtractor` gives
practitioners its features for paths, PIL images or numpy crops.
"""
from .checkpoint import CheckpointError, RunState, TrainingCheckpoint, load_checkpoint, save_checkpoint
from .clustering import cluster_purity, merge_clusters
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
from .synthetic import make_synthetic_reid
from .trainer import TrainConfig, train
from .transforms import TwoViews, build_eval_transform, build_train_transform

__all__ = [
    'CheckpointError', 'ClusterMemory', 'FeatureExtractor', 'ImageLoadError', 'LoadedEmbedder',
    'ReidEmbedder', 'ReidImage', 'ReidImageDataset', 'ReidSplits', 'RunState', 'TrainConfig',
    'TrainingCheckpoint', 'TwoViews', 'acl_loss', 'build_eval_transform', 'build_train_transform',
    'check_images', 'cluster_purity', 'create_embedder', 'evaluate_embeddings', 'evaluate_model',
    'evaluate_rank', 'evaluate_run', 'evaluate_split', 'extract_embeddings', 'idl_loss', 'load_checkpoint',
    'load_embedder', 'load_image', 'load_reid_dataset', 'make_synthetic_reid', 'merge_clusters',
    'pairwise_euclidean', 'prepare_data', 'save_checkpoint', 'train',
]
