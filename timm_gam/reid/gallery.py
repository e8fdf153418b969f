"""A gallery of person crops as features on disk, and nearest-neighbour search in it.

:func:`extract_gallery` embeds every image under a folder with a
:class:`~timm_gam.reid.FeatureExtractor` and saves a :class:`Gallery` as ``.npz`` (numpy's open
format, read back without pickle): the features, the image paths relative to the folder, and the
model that made them (name, checkpoint, data config), so queries can later be embedded the same way.
:func:`search_gallery` finds each query's nearest gallery images by Euclidean distance of the
normalised features, as the re-ID evaluation ranks them, through faiss: an exact flat index for
galleries up to :data:`EXACT_SEARCH_LIMIT` images, an HNSW graph (approximate, memory-resident,
sub-linear) beyond. Building the graph takes minutes for hundreds of thousands of crops, so given the
gallery's file it is saved beside it and reused while the features are the same.
"""
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from .datasets import IMAGE_SUFFIXES, ImageLoadError, image_files, load_image
from .feature_extractor import FeatureExtractor

__all__ = ['Gallery', 'extract_gallery', 'search_gallery', 'saved_index_path', 'EXACT_SEARCH_LIMIT',
           'SEARCH_INDEXES']

logger = logging.getLogger(__name__)

EXACT_SEARCH_LIMIT = 200_000  # exact search of 200k x 1024 features: ~0.1 s per query on 2 cores
SEARCH_INDEXES = ('auto', 'exact', 'hnsw')
HNSW_NEIGHBOURS = 32  # faiss's M: graph links per node


@dataclass
class Gallery:
    """Features of a folder of images and what made them."""
    features: np.ndarray  # (n, d) float32, L2-normalised
    paths: list[str]  # relative to root
    root: str  # the folder the images were read from
    model: str  # the model name given to the extractor
    checkpoint: str | None  # the training checkpoint, if the weights came from one
    data_config: dict  # timm data config of the weights (input size, mean, std)
    skipped: list[str] = field(default_factory=list)  # unreadable files left out, relative to root

    def save(self, path: str | os.PathLike) -> Path:
        """Write the gallery to ``path`` (``.npz``); a run stopped while saving leaves an older file whole."""
        path = Path(path)
        if path.suffix != '.npz':
            raise ValueError(f'{path}: gallery files are .npz; name it {path.with_suffix(".npz").name}')
        path.parent.mkdir(parents=True, exist_ok=True)
        about = dict(root=self.root, model=self.model, checkpoint=self.checkpoint,
                     data_config=self.data_config, skipped=self.skipped)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f'.{path.stem}-', suffix='.npz',
                                         delete=False) as scratch:
            try:
                np.savez(scratch, features=self.features, paths=np.array(self.paths, dtype=str),
                         about=np.array(json.dumps(about)))
            except BaseException:  # an interrupt too: never leave the half-written scratch file behind
                scratch.close()
                os.unlink(scratch.name)
                raise
        os.replace(scratch.name, path)
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


def extract_gallery(extractor: FeatureExtractor, folder: str | os.PathLike,
                    progress: bool | None = None) -> Gallery:
    """Features of every readable image under ``folder``; unreadable files are skipped, logged and listed.

    ``progress``: a progress bar, by default only on a terminal (tqdm's ``disable=None``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f'{folder} is not a folder of images; pass --images DIR')
    files = image_files(folder, recursive=True)
    if not files:
        raise ValueError(f'no image files ({", ".join(sorted(IMAGE_SUFFIXES))}) under {folder}')
    features, kept, skipped = [], [], []
    batches = range(0, len(files), extractor.batch_size)
    hide_bar = None if progress is None else not progress  # None: tqdm shows it on a terminal only
    for start in tqdm(batches, desc='extract', unit='batch', disable=hide_bar):
        images = []
        for path in files[start:start + extractor.batch_size]:
            try:
                images.append(load_image(path))
                kept.append(path)
            except ImageLoadError as error:
                skipped.append(str(path.relative_to(folder)))
                logger.warning('skipped %s', error)
        features.append(extractor(images))
    if not kept:
        raise ValueError(f'none of the {len(files)} image files under {folder} could be read')
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in extractor.data_config.items()}
    return Gallery(torch.cat(features).numpy(), [str(p.relative_to(folder)) for p in kept],
                   str(Path(folder).resolve()), extractor.model_name, extractor.checkpoint, config, skipped)


def saved_index_path(gallery_file: str | os.PathLike, features: np.ndarray) -> Path:
    """Where the HNSW graph of ``features`` is kept beside ``gallery_file``: named by a digest of the
    features, so a gallery written again with other images never finds the old graph."""
    gallery_file = Path(gallery_file)
    digest = hashlib.blake2b(np.ascontiguousarray(features, dtype=np.float32).tobytes(), digest_size=8)
    return gallery_file.with_name(f'{gallery_file.stem}.hnsw{HNSW_NEIGHBOURS}-{digest.hexdigest()}.faiss')


def _hnsw_index(gallery: np.ndarray, gallery_file: str | os.PathLike | None):
    """The HNSW graph of ``gallery``, read from beside ``gallery_file`` when it was built before."""
    saved = None if gallery_file is None else saved_index_path(gallery_file, gallery)
    if saved is not None and saved.is_file():
        logger.info('reusing the search graph %s', saved)
        return faiss.read_index(str(saved))
    searcher = faiss.IndexHNSWFlat(gallery.shape[1], HNSW_NEIGHBOURS)
    searcher.add(gallery)
    if saved is not None:
        for stale in saved.parent.glob(f'{Path(gallery_file).stem}.hnsw{HNSW_NEIGHBOURS}-*.faiss'):
            stale.unlink()  # graphs of the gallery's earlier contents
        with tempfile.TemporaryDirectory(dir=saved.parent) as scratch:  # renamed whole, never half-written
            faiss.write_index(searcher, str(Path(scratch) / saved.name))
            os.replace(Path(scratch) / saved.name, saved)
        logger.info('saved the search graph as %s, reused while the gallery is unchanged', saved)
    return searcher


def search_gallery(gallery_features: np.ndarray, query_features: np.ndarray, top_k: int = 10,
                   index: str = 'auto', gallery_file: str | os.PathLike | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, indices)``, each ``(num_queries, k)``: every query's nearest gallery features, closest
    first, by Euclidean distance; ``k = min(top_k, gallery size)``.

    ``index``: ``'exact'`` (faiss ``IndexFlatL2``, brute force), ``'hnsw'`` (``IndexHNSWFlat``,
    approximate, for millions of crops) or ``'auto'`` (exact up to :data:`EXACT_SEARCH_LIMIT` images).
    ``gallery_file``: the ``.npz`` the features came from; the HNSW graph is saved beside it
    (:func:`saved_index_path`) and read back by later searches of the same features. The exact index is
    a copy of the features, as fast to build as to read, and is never saved.
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
    if index == 'exact':
        searcher = faiss.IndexFlatL2(gallery.shape[1])
        searcher.add(gallery)
    else:
        searcher = _hnsw_index(gallery, gallery_file)
    squared, indices = searcher.search(queries, min(top_k, len(gallery)))
    return np.sqrt(np.maximum(squared, 0)), indices
