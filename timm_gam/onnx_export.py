"""ONNX export of a trained re-ID embedding model, checked against PyTorch with onnxruntime."""
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # timm_gam.reid imports this module for FeatureExtractor: circular at run time
    from .reid.embedding import LoadedEmbedder

__all__ = ['export_onnx', 'onnx_max_abs_diff']


def export_onnx(loaded: 'LoadedEmbedder', path: str | os.PathLike, opset: int = 18,
                dynamo: bool = False) -> Path:
    """Export the L2-normalised embedding model to ONNX: input ``images`` (batch, 3, H, W) with a dynamic
    batch size, output ``embeddings`` (batch, embed_dim).

    The TorchScript exporter is the default because it is several times faster than the dynamo one on these
    ResNets; both are checked the same way by :func:`onnx_max_abs_diff`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, *loaded.image_size)
    names = dict(input_names=['images'], output_names=['embeddings'])
    if dynamo:
        shapes = {'images': {0: torch.export.Dim('batch')}}
        torch.onnx.export(loaded.embedder, (example,), path, opset_version=opset, dynamo=True,
                          dynamic_shapes=shapes, **names)
    else:
        axes = {'images': {0: 'batch'}, 'embeddings': {0: 'batch'}}
        torch.onnx.export(loaded.embedder, (example,), path, opset_version=opset, dynamo=False,
                          dynamic_axes=axes, **names)
    return path


def onnx_max_abs_diff(loaded: 'LoadedEmbedder', path: str | os.PathLike, images: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's embeddings of ``images``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (onnx_out,) = session.run(['embeddings'], {'images': images.numpy()})
    with torch.no_grad():
        torch_out = loaded.embedder.eval()(images).numpy()
    if onnx_out.shape != torch_out.shape:
        raise AssertionError(f'{path} gives embeddings of shape {onnx_out.shape}, PyTorch {torch_out.shape}')
    return float(np.abs(onnx_out - torch_out).max())
