"""Re-ID features of person crops in one call: what a tracker or a gallery indexer needs of a model.

    from timm_gam.reid import FeatureExtractor

    extractor = FeatureExtractor('gam_resnet50_g4')               # the published weights (Hub / its cache)
    features = extractor(['a.jpg', 'b.jpg'])                       # (2, 2048) float32, L2-normalised
    features = extractor([crop, pil_image])                        # RGB uint8 arrays of any size, PIL images
    extractor = FeatureExtractor('gam_resnet50_g4', checkpoint='runs/g4/checkpoint.pt')  # a training run

Like torchreid's ``FeatureExtractor``, it hides the preprocessing, and it is timm's own: the transform is
``timm.data.create_transform(**resolve_data_config({}, model=model))`` of the weights' pretrained cfg (a
checkpoint's is set to its trained input by :func:`~timm_gam.reid.embedding.load_embedder`), exactly what
the model card's timm snippet builds, so the two cannot drift. That cfg says ``crop_mode='squash'``: every
crop is resized whole to the input size, whatever its shape, as training resized them. The output is what
retrieval compares (Euclidean distance of unit vectors). The same picture becomes the same model input
whether it comes as a path, a PIL image or an array, so it gets the same features (bit for bit at the same
place of a batch of the same size, to float rounding elsewhere: a batch's sums run in an order that depends
on its shape).

It runs the model in eval mode without gradients, in batches, on the fastest path that gives the
eager model's features within float rounding (``benchmarks/bench_extraction.py``, docs/performance.md):
on a CPU, onnxruntime on the model exported to ONNX once per weights (:mod:`timm_gam.onnx_cache`); on a
GPU, or without onnxruntime, PyTorch with batch norm folded into the preceding convolutions (``torch.fx``'s
``fuse``).
"""
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch.fx.experimental.optimization import fuse

from ..onnx_cache import OnnxRuntimeModel
from .datasets import load_image, to_rgb
from .embedding import LoadedEmbedder, load_embedder, resolve_device

__all__ = ['FeatureExtractor', 'fold_batch_norm', 'BACKENDS']

ImageInput = str | os.PathLike | Image.Image | np.ndarray
BACKENDS = ('auto', 'onnxruntime', 'torch')
logger = logging.getLogger(__name__)


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of ``model`` with every convolution + batch norm pair folded into one convolution.

    Batch norm in eval mode is an affine map per channel, so it folds exactly into the convolution
    before it; the copy computes the same function up to float rounding, with one pass over each
    activation fewer. The copy is for inference only (its batch norms are gone). A model that
    ``torch.fx`` cannot trace is returned as it is, with a logged warning.
    """
    try:
        return fuse(model.eval(), inplace=False)
    except Exception as error:  # tracing fails in many ways (data-dependent control flow, unsupported ops)
        logger.warning('batch norm not folded, running the model as it is: torch.fx could not trace it '
                       '(%s: %s)', type(error).__name__, error)
        return model


def _onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class FeatureExtractor:
    """L2-normalised re-ID features of images, as a ``(n, embed_dim)`` float32 CPU tensor.

    Args:
        model: a registered model name (its pretrained weights, as ``pretrained=True`` loads them) or an
            ``hf-hub:org/name`` id; default ``gam_resnet50_g4``. With ``checkpoint``, the model the
            checkpoint must hold (default: whichever it holds).
        checkpoint: a ``checkpoint.pt`` written by ``recipes/unsup_reid.py`` (its weights are used).
        device: ``'auto'`` (the GPU when there is one), ``'cpu'``, ``'cuda:0'``, ...
        batch_size: images per forward pass.
        backend: ``'onnxruntime'`` (CPU only; needs the ``onnx`` extra), ``'torch'``, or ``'auto'``:
            onnxruntime on a CPU where it is installed, else torch.
        fuse_batch_norm: with the torch backend, fold batch norm into the convolutions (faster, the
            same features within float rounding); off to run the model exactly as trained.
        cache_dir: where exported ONNX models are kept (default ``$TIMM_GAM_CACHE`` or
            ``~/.cache/timm-gam``).

    Calling it accepts a list (or tuple) of inputs, each a file path, a PIL image, or a ``uint8`` numpy
    array of shape ``(H, W, 3)`` in RGB order (OpenCV gives BGR: pass ``crop[..., ::-1]``). Greyscale
    ``(H, W)`` / ``(H, W, 1)`` arrays are replicated to three channels and ``(H, W, 4)`` RGBA arrays are
    composited over the ImageNet mean colour, as image files are. A float tensor of shape ``(n, 3, H, W)``
    is taken as a batch already preprocessed with :meth:`preprocess`. An empty list gives a ``(0,
    embed_dim)`` tensor (a video frame without detections). Anything else is a ``ValueError`` (or an
    :class:`~timm_gam.reid.ImageLoadError` for an unreadable file) naming the input and what is expected.
    """

    def __init__(self, model: str | None = None, checkpoint: str | os.PathLike | None = None,
                 device: str = 'auto', batch_size: int = 32, backend: str = 'auto',
                 fuse_batch_norm: bool = True, cache_dir: str | os.PathLike | None = None):
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
        if checkpoint is not None:
            self.loaded: LoadedEmbedder = load_embedder(checkpoint=checkpoint, model_name=model)
            self.model_name = self.loaded.checkpoint.model_name
        else:
            self.model_name = model or 'gam_resnet50_g4'
            self.loaded = load_embedder(pretrained=self.model_name)
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.data_config = timm.data.resolve_data_config({}, model=self.loaded.backbone)
        self.image_size = tuple(self.data_config['input_size'][1:])
        self.transform = timm.data.create_transform(**self.data_config)
        if backend == 'auto':
            backend = 'onnxruntime' if self.device.type == 'cpu' and _onnxruntime_available() else 'torch'
        if backend == 'onnxruntime' and self.device.type != 'cpu':
            raise ValueError(f"backend 'onnxruntime' runs on the CPU here, not {self.device}: pass "
                             "device='cpu', or backend='torch' for the GPU")
        self.backend = backend
        embedder = self.loaded.embedder.eval()
        if backend == 'onnxruntime':
            self.model = OnnxRuntimeModel(self.loaded, cache_dir)
        else:
            self.model = (fold_batch_norm(embedder) if fuse_batch_norm else embedder).to(self.device)

    @property
    def embed_dim(self) -> int:
        return self.loaded.embed_dim

    def __repr__(self) -> str:
        height, width = self.image_size
        return (f'{type(self).__name__}({self.loaded.label}, {self.embed_dim}-d, input {height}x{width}, '
                f'{self.backend} on {self.device})')

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """The model's input batch ``(n, 3, H, W)`` for a list of paths, PIL images or uint8 arrays."""
        tensors = [self.transform(_as_rgb_image(image, index)) for index, image in enumerate(images)]
        return torch.stack(tensors) if tensors else torch.empty(0, 3, *self.image_size)

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return self._embed(self._check_batch(images))
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            raise ValueError('pass a list of images (paths, PIL images or uint8 arrays), even for one image: '
                             f'[image], not a bare {type(images).__name__}')
        images = list(images)
        chunks = [self._embed(self.preprocess(images[start:start + self.batch_size]))
                  for start in range(0, len(images), self.batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        if not len(batch):
            return torch.empty(0, self.embed_dim)
        return torch.cat([self.model(chunk.to(self.device)).float().cpu()
                          for chunk in batch.split(self.batch_size)])

    def _check_batch(self, batch: torch.Tensor) -> torch.Tensor:
        expected = (3, *self.image_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or not batch.is_floating_point():
            shape = ', '.join(map(str, expected))
            raise ValueError(f'a tensor input must be a float batch of shape (n, {shape}) preprocessed as '
                             f'extractor.preprocess(...) does, got {batch.dtype} of shape '
                             f'{tuple(batch.shape)}; or pass the images themselves')
        return batch


def _as_rgb_image(image: ImageInput, index: int) -> Image.Image:
    """Input ``index`` of a call as an 8-bit RGB PIL image, converted as image files are."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return image if image.mode == 'RGB' else to_rgb(image)
    if isinstance(image, np.ndarray):
        return to_rgb(Image.fromarray(_check_array(image, index)))
    raise ValueError(f'input {index} is a {type(image).__name__}; expected a file path, a PIL image or a '
                     'uint8 numpy array (H, W, 3)')


def _check_array(array: np.ndarray, index: int) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ValueError(f'input {index} is a {array.dtype} array; expected uint8 RGB pixels 0-255 (convert '
                         'with (array * 255).round().astype(np.uint8) if it holds values in [0, 1])')
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape[:2]:
        raise ValueError(f'input {index} has shape {array.shape}; expected an image (H, W, 3) RGB, '
                         '(H, W, 4) RGBA or (H, W) greyscale with H, W > 0')
    return np.ascontiguousarray(array)
