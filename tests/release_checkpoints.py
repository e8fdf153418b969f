"""Small training checkpoints for the release tests (publish, visualize, ONNX export).

``tiny_training_run`` trains for real, so its checkpoint, ``log.jsonl`` and synthetic data are exactly what
``recipes/unsup_reid.py`` writes; ``save_untrained_checkpoint`` stores a freshly initialised model, for tests
that need a particular architecture but no training.
"""
from dataclasses import asdict
from pathlib import Path

import timm

from timm_gam.reid.checkpoint import save_checkpoint
from timm_gam.reid.trainer import TrainConfig, train

TINY_IMAGE_SIZE = (64, 32)
TINY_RUN = dict(
    model='test_convnext', image_size=TINY_IMAGE_SIZE, embed_dim=64, batch_size=16, lr=0.01, warmup_epochs=1,
    epochs_per_stage=1, stages=1, merge_percent=0.2, lr_decay_epochs=10, workers=0, eval_batch_size=64,
    synthetic=dict(num_train_identities=8, num_test_identities=6, num_cameras=2,
                   images_per_identity_per_camera=2, image_size=TINY_IMAGE_SIZE))


def tiny_training_run(output: Path) -> tuple[TrainConfig, dict]:
    """A two-stage run on 32 synthetic images (seconds); its data set lies under ``output/data/synthetic``."""
    config = TrainConfig(output=str(output), **TINY_RUN)
    return config, train(config)


def save_untrained_checkpoint(path: Path, model_name: str, embed_dim: int = 32,
                              image_size: tuple[int, int] = TINY_IMAGE_SIZE) -> Path:
    """A checkpoint of ``model_name`` with fresh weights: the parts of a run's checkpoint that loading the
    model reads (config, model name, embedding size, weights)."""
    config = TrainConfig(model=model_name, embed_dim=embed_dim, image_size=image_size)
    model = timm.create_model(model_name, num_classes=embed_dim)
    save_checkpoint({'config': asdict(config), 'model_name': model_name, 'embed_dim': embed_dim,
                     'model': model.state_dict()}, path)
    return path
