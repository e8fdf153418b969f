"""The ONNX export cache: each set of weights exported once, kept on disk, rebuilt when it does not load.

Entries live under ``$TIMM_GAM_CACHE/onnx`` (default ``~/.cache/timm-gam/onnx``), one ``.onnx`` file per
weights, named by the architecture and a digest of the weights, the input size and the torch version.
Deleting the folder is safe: the next extractor exports again.
"""
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .onnx_export import export_onnx

if TYPE_CHECKING:  # timm_gam.reid imports this module for FeatureExtractor: circular at run time
    from .reid.embedding import LoadedEmbedder

__all__ = ['OnnxRuntimeModel', 'cache_root', 'cached_export']

logger = logging.getLogger(__name__)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where timm-gam keeps exports: ``cache_dir``, else ``$TIMM_GAM_CACHE``, else ``~/.cache/timm-gam``."""
    return Path(cache_dir or os.environ.get('TIMM_GAM_CACHE', Path.home() / '.cache' / 'timm-gam'))


def _weights_digest(loaded: 'LoadedEmbedder') -> str:
    digest = hashlib.sha256(f'{loaded.image_size} {torch.__version__}'.encode())
    for name, tensor in loaded.embedder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _export_atomically(loaded: 'LoadedEmbedder', path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # renamed whole, never half-written
        os.replace(export_onnx(loaded, Path(scratch) / path.name), path)


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def cached_export(loaded: 'LoadedEmbedder', cache_dir: str | os.PathLike | None = None):
    """``(path, onnxruntime session)`` of ``loaded`` exported to ONNX, exporting only when no good entry is
    cached."""
    architecture = loaded.backbone.pretrained_cfg.get('architecture', 'model')
    path = cache_root(cache_dir) / 'onnx' / f'{architecture}-{_weights_digest(loaded)}.onnx'
    if path.exists():
        try:
            return path, _session(path)
        # a file cut short by a full disk or an interrupted copy: onnxruntime's errors share no base class
        except Exception as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.warning('ONNX cache entry %s does not load (%s); exporting it again', path, reason)
    else:
        logger.info('exporting %s to ONNX once for these weights, cached in %s (delete that folder to clear '
                    'it; TIMM_GAM_CACHE moves it)', architecture, path.parent)
    _export_atomically(loaded, path)
    return path, _session(path)


class OnnxRuntimeModel:
    """The embedding model exported to ONNX and run by onnxruntime's CPU provider, from the cache."""

    def __init__(self, loaded: 'LoadedEmbedder', cache_dir: str | os.PathLike | None = None):
        self.path, self.session = cached_export(loaded, cache_dir)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        (embeddings,) = self.session.run(['embeddings'], {'images': batch.contiguous().numpy()})
        return torch.from_numpy(embeddings)
