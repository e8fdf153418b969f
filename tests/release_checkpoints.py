"""Small training checkpoints for the release tests (publish, visualize, ONNX export, features, CLI).

``tiny_training_run`` trains for real, so its checkpoint, ``log.jsonl`` and synthetic data are exactly what
``recipes/unsup_reid.py`` writes; the ``tiny_run`` fixture of ``conftest.py`` trains it once for the whole
test session. ``save_untrained_checkpoint`` stores a freshly initialised model, for tests that need a
particular architecture but no training.
"""
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
from tiny_config import SMOKE, tiny_config

from timm_gam.reid.checkpoint import TrainingCheckpoint
from timm_gam.reid.trainer import TrainConfig, train

TINY_IMAGE_SIZE = SMOKE['image_size']


@dataclass(frozen=True)
class TinyRun:
    """A finished run folder; tests read it and write elsewhere, since the whole session shares it."""
    config: TrainConfig
    metrics: dict

    @property
    def folder(self) -> Path:
        return Path(self.config.output)

    @property
    def checkpoint(self) -> Path:
        return self.folder / 'checkpoint.pt'

    @property
    def data_root(self) -> Path:
        return self.folder / 'data' / 'synthetic'


def tiny_training_run(output: Path) -> TinyRun:
    """A two-stage smoke run (seconds); its data set lies under ``output/data/synthetic``."""
    config = tiny_config(output, model='test_convnext', lr=0.01, warmup_epochs=1, stages=1)
    return TinyRun(config, train(config))


def save_untrained_checkpoint(path: Path, model_name: str, embed_dim: int = 32,
                              image_size: tuple[int, int] = TINY_IMAGE_SIZE) -> Path:
    """A checkpoint of ``model_name`` with fresh weights: the parts of a run's checkpoint that loading the
    model reads (config, model name, embedding size, weights)."""
    config = TrainConfig(model=model_name, embed_dim=embed_dim, image_size=image_size)
    model = timm.create_model(model_name, num_classes=embed_dim)
    TrainingCheckpoint(config=asdict(config), model_name=model_name, embed_dim=embed_dim,
                       model=model.state_dict()).save(path)
    return path
