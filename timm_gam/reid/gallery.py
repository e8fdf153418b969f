"""A gallery of person crops as features on disk, and nearest-neighbour search in it.

:func:`extract_gallery` embeds every image under a folder with a
:class:`~timm_gam.reid.FeatureExtractor` and saves a :class:`Gallery` as ``.npz`` (numpy's open
format, read back without pickle): the features, the image paths relative to the folder, and the
model that made them (name, checkpoint, data config), so queries can later be embedded the same way.
:func:`search_gallery` finds each query's nearest gallery images by Euclidean distance of the
normalised features, as the re-ID evaluation ranks them, through faiss: an exact flat index for
galleries up to :data:`EXACT_SEARCH_LIMIT` images, an HNSW graph (approximate, memory-resident,
sub-linear) beyond.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from .datasets import IMAGE_SUFFIXES, ImageLoadError, image_files, load_image
from .feature_extractor import FeatureExtractor

__all__ = ['Gallery', 'extract_gallery', 'search_gallery', 'EXACT_SEARCH_LIMIT', 'SEARCH_INDEXES']

EXACT_SEARCH_LIMIT = 200_000  # exact search of 200k x 1024 features: ~0.1 s per query on 2 cores
SEARCH_INDEXES = ('auto', 'exact', 'hnsw')


@dataclass
class Gallery:
    """Features of a folder of images and what made them."""
    features: np.ndarray  # (n, d) float32, L2-normalised
    paths: list[str]  # relative to root
    root: str  # the folder the images were read from
    model: str  # the model name given to the extractor
    checkpoint: str | None  # the training checkpoint, if the weights came from one
    data_config: dict  # timm data config of the weights (input size, mean, std)
    skipped: int = 0  # unreadable files left out

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix != '.npz':
            raise ValueError(f'{path}: gallery files are .npz; name it {path.with_suffix(".npz").name}')
        path.parent.mkdir(parents=True, exist_ok=True)
        about = dict(root=self.root, model=self.model, checkpoint=self.checkpoint,
                     data_config=self.data_config, skipped=self.skipped)
        np.savez(path, features=self.features, paths=np.array(self.paths, dtype=str),
                 about=np.array(json.dumps(about)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> 'Gallery':
        path = Path(path)
        if not path.is_file():
            raise ValueError(f'gallery file {path} does not exist; make one with `timm-gam extract`')
        try:
            with np.load(path, allow_pickle=False) as saved:
                about = json.loads(str(saved['about']))
                return cls(saved['features'], saved['paths'].tolist(), **about)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f'{path} is not a gallery file written by `timm-gam extract` '
                             f'({error})') from None

    def extractor(self, **kwargs) -> FeatureExtractor:
        """A feature extractor with the weights that made this gallery, to embed queries alike."""
        return FeatureExtractor(self.model, checkpoint=self.checkpoint, **kwargs)


def extract_gallery(extractor: FeatureExtractor, folder: str | os.PathLike, progress: bool = True) -> Gallery:
    """Features of every readable image under ``folder``; unreadable files are skipped and counted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f'{folder} is not a folder of images; pass --images DIR')
    files = image_files(folder, recursive=True)
    if not files:
        raise ValueError(f'no image files ({", ".join(sorted(IMAGE_SUFFIXES))}) under {folder}')
    features, kept, skipped = [], [], 0
    batches = range(0, len(files), extractor.batch_size)
    for start in tqdm(batches, desc='extract', unit='batch', disable=not progress):
        images = []
        for path in files[start:start + extractor.batch_size]:
            try:
                images.append(load_image(path))
                kept.append(path)
            except ImageLoadError:
                skipped += 1
        features.append(extractor(images))
    if not kept:
        raise ValueError(f'none of the {len(files)} image files under {folder} could be read')
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in extractor.data_config.items()}
    return Gallery(torch.cat(features).numpy(), [str(p.relative_to(folder)) for p in kept],
                   str(Path(folder).resolve()), extractor.model_name, extractor.checkpoint, config, skipped)


def search_gallery(gallery_features: np.ndarray, query_features: np.ndarray, top_k: int = 10,
                   index: str = 'auto') -> tuple[np.ndarray, np.ndarray]:
    """``(distances, indices)``, each ``(num_queries, k)``: every query's nearest gallery features, closest
    first, by Euclidean distance; ``k = min(top_k, gallery size)``.

    ``index``: ``'exact'`` (faiss ``IndexFlatL2``, brute force), ``'hnsw'`` (``IndexHNSWFlat``,
    approximate, for millions of crops) or ``'auto'`` (exact up to :data:`EXACT_SEARCH_LIMIT` images).
    """
    if index not in SEARCH_INDEXES:
        raise ValueError(f'index must be one of {SEARCH_INDEXES}, got {index!r}')
    if top_k < 1:
        raise ValueError(f'top_k must be positive, got {top_k}')
    gallery = np.ascontiguousarray(gallery_features, dtype=np.float32)
    queries = np.ascontiguousarray(query_features, dtype=np.float32)
    if gallery.ndim != 2 or queries.ndim != 2 or gallery.shape[1] != queries.shape[1]:
        raise ValueError(f'gallery features {gallery.shape} and query features {queries.shape} must be '
                         '(n, d) of the same d: embed the queries with the model that made the gallery')
    if index == 'auto':
        index = 'exact' if len(gallery) <= EXACT_SEARCH_LIMIT else 'hnsw'
    searcher = faiss.IndexFlatL2(gallery.shape[1]) if index == 'exact' else faiss.IndexHNSWFlat(
        gallery.shape[1], 32)
    searcher.add(gallery)
    squared, indices = searcher.search(queries, min(top_k, len(gallery)))
    return np.sqrt(np.maximum(squared, 0)), indices
