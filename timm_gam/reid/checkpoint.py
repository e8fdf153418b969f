"""Training checkpoints: their schema, written atomically, read without unpickling arbitrary objects.

:class:`TrainingCheckpoint` is the schema: what a ``checkpoint.pt`` of ``recipes/unsup_reid.py`` holds,
and the one place that knows its keys. :class:`RunState` is its part that says where the schedule
stands. Everything in it is restored exactly as saved, never re-derived: a resumed run must take the
very steps an uninterrupted one takes, and a change in the last bit of a centroid grows over the epochs.

On disk a checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts),
so it loads with ``torch.load(weights_only=True)``: a downloaded file can't run code. It is written to
a temporary file in the same folder, fsync'ed, then renamed over the old one, so a run killed at any
moment leaves either the previous complete checkpoint or the new complete one, never half of one.
"""
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .memory import ClusterMemory

__all__ = ['CheckpointError', 'RunState', 'TrainingCheckpoint', 'save_checkpoint', 'load_checkpoint',
           'atomic_write_text', 'keep_epoch_copy', 'CHECKPOINT_FORMAT']

CHECKPOINT_FORMAT = 'timm-gam-unsup-reid/1'


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from another model / configuration."""


def _atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace a small text file (metrics.json) so readers never see it half-written."""
    _atomic_replace(Path(path), lambda f: f.write(text.encode()))


def keep_epoch_copy(path: str | os.PathLike, epoch: int) -> Path:
    """Copy the checkpoint at ``path`` to ``checkpoint-epochNNN.pt`` beside it (written atomically, as the
    checkpoint is) and return the copy's path. Copied into another run folder as ``checkpoint.pt``, it
    resumes there from that epoch: a branch point for runs that differ only after it."""
    path = Path(path)
    kept = path.with_name(f'{path.stem}-epoch{epoch:03d}{path.suffix}')
    with open(path, 'rb') as source:
        _atomic_replace(kept, lambda f: shutil.copyfileobj(source, f))
    return kept


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    state = {'format': CHECKPOINT_FORMAT, **state}
    _atomic_replace(Path(path), lambda f: torch.save(state, f))


def _short_reason(error: Exception) -> str:
    # torch's weights-only refusal runs to a page and suggests weights_only=False, which we never want here
    if 'Weights only load failed' in str(error):
        return 'it holds Python objects that a weights-only load refuses to unpickle'
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else "no details"}'


def load_checkpoint(path: str | os.PathLike, map_location='cpu') -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist: give the path of a checkpoint.pt that a '
                              'training run wrote into its --output folder')
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f'checkpoint {path} could not be read ({_short_reason(e)}); it is corrupt '
                              'or not a timm-gam training checkpoint (model weights for timm belong in '
                              'model.safetensors and load with timm.create_model(..., pretrained=True))'
                              ) from e
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{path} is not a timm-gam training checkpoint (expected format '
                              f'{CHECKPOINT_FORMAT!r}); pass a checkpoint.pt written by '
                              'recipes/unsup_reid.py')
    return state


@dataclass
class RunState:
    """Where a run stands: what a checkpoint holds besides the weights and the optimiser."""
    stage: int = 0
    epoch_in_stage: int = 0
    epoch: int = 0  # epochs done over the whole run: drives the learning-rate schedule
    step_in_epoch: int = 0  # steps of the current epoch already taken (a time budget stops mid-epoch)
    steps: int = 0  # optimiser steps over the whole run
    marks_evaluated: int = 0  # multiples of eval_every_min evaluated so far: the next is the one after
    cluster_labels: torch.Tensor | None = None
    memory: ClusterMemory | None = None
    instance_memory: ClusterMemory | None = None  # one slot per image, for idl_negatives with 'memory'
    independence_threshold: float | None = None  # reliability_gap's, set at the run's first clustering
    history: dict = field(default_factory=lambda: {'stages': [], 'timed': []})
    elapsed_s: float = 0.0  # wall time of the run before this process started, evaluations included
    train_seconds: float = 0.0  # the same without the evaluations: the clock of a time budget

    def to_dict(self) -> dict:
        memories = {name: getattr(self, name) and getattr(self, name).state_dict()
                    for name in ('memory', 'instance_memory')}
        return {**asdict(self), **memories}

    @classmethod
    def from_dict(cls, state: dict, device='cpu') -> 'RunState':
        memories = {name: state.get(name) and ClusterMemory.from_state_dict(state[name]).to(device)
                    for name in ('memory', 'instance_memory')}
        labels = state.get('cluster_labels')
        if 'marks_evaluated' not in state:  # saved before the count was kept: the marks in the history
            timed = state['history'].get('timed', [])
            state = {**state, 'marks_evaluated': sum('mark_min' in r for r in timed)}
        # the merging reads the labels as a numpy array: they stay on the CPU whatever the training device
        return cls(**{**state, **memories, 'cluster_labels': labels if labels is None else labels.cpu()})


@dataclass
class TrainingCheckpoint:
    """A ``checkpoint.pt``: the run's config, the backbone's weights, and (from training) where it stood.

    ``optimizer``, ``state`` and ``train_images`` are absent from checkpoints made to hold weights
    only; everything that loads a model needs ``model_name``, ``embed_dim``, ``model`` and
    :attr:`image_size`.
    """
    config: dict  # TrainConfig as a dict
    model_name: str
    embed_dim: int
    model: dict  # the timm backbone's state dict; its classifier is the embedding layer
    optimizer: dict | None = None
    state: RunState | None = None
    train_images: str | None = None  # fingerprint of the training list the cluster labels refer to
    # the input size the weights were last trained at, where a resolution schedule made it differ from the
    # config's image_size (config.weights_image_size); absent in checkpoints written before there was one
    trained_image_size: tuple[int, int] | None = None
    # the mean teacher's backbone state dict, where the run kept one (config mean_teacher_decay): its
    # features were clustered and evaluated, so it is what inference loads
    mean_teacher: dict | None = None

    @property
    def inference_weights(self) -> dict:
        """The backbone state dict to embed with: the mean teacher's where the run kept one, else
        :attr:`model`, the trained weights themselves."""
        return self.model if self.mean_teacher is None else self.mean_teacher

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the weights were last trained at: what loading them for inference uses."""
        return tuple(self.trained_image_size or self.config['image_size'])

    def last_evaluation(self) -> dict | None:
        """The evaluation the training run made of exactly these weights, if it made one.

        The trainer evaluates at the end of each stage and where a time budget stops it, and saves right
        after; any other checkpoint holds weights trained past its last evaluation.
        """
        if self.state is None:
            return None
        records = self.state.history['stages'] + self.state.history.get('timed', [])
        if 'steps' in (records[-1] if records else {}):  # checkpoints that count steps say which weights
            matching = [r for r in records if r.get('steps') == self.state.steps and 'rank1' in r]
            return dict(matching[-1]) if matching else None
        stages = self.state.history['stages']
        if not stages or self.state.epoch_in_stage != 0 or 'rank1' not in stages[-1]:
            return None
        return dict(stages[-1])

    def to_dict(self) -> dict:
        saved = {'config': self.config, 'model_name': self.model_name, 'embed_dim': self.embed_dim,
                 'model': self.model, 'optimizer': self.optimizer,
                 'state': self.state.to_dict() if self.state else None, 'train_images': self.train_images,
                 'trained_image_size': self.trained_image_size and list(self.trained_image_size),
                 'mean_teacher': self.mean_teacher}
        return {k: v for k, v in saved.items() if v is not None}

    @classmethod
    def from_dict(cls, saved: dict, device='cpu') -> 'TrainingCheckpoint':
        state = saved.get('state') and RunState.from_dict(saved['state'], device)
        return cls(config=saved['config'], model_name=saved['model_name'], embed_dim=saved['embed_dim'],
                   model=saved['model'], optimizer=saved.get('optimizer'), state=state,
                   train_images=saved.get('train_images'), trained_image_size=saved.get('trained_image_size'),
                   mean_teacher=saved.get('mean_teacher'))

    def save(self, path: str | os.PathLike) -> None:
        save_checkpoint(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device='cpu') -> 'TrainingCheckpoint':
        """Read and check a checkpoint; :class:`CheckpointError` names the path and the fix."""
        saved = load_checkpoint(path, map_location=device)
        missing = [k for k in ('config', 'model_name', 'embed_dim', 'model') if k not in saved]
        if missing:
            raise CheckpointError(f'{path} lacks {missing}: pass a checkpoint.pt written by '
                                  'recipes/unsup_reid.py')
        return cls.from_dict(saved, device)
