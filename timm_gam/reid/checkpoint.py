"""Training checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts), so it
loads with ``torch.load(weights_only=True)``: a downloaded file can't run code. It is written to a
temporary file in the same folder, fsync'ed, then renamed over the old one, so a run killed at any
moment leaves either the previous complete checkpoint or the new complete one, never half of one.
"""
import os
import tempfile
from pathlib import Path

import torch

__all__ = ['CheckpointError', 'save_checkpoint', 'load_checkpoint', 'atomic_write_text']

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
