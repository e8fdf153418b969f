"""The batches of a training epoch: ``((anchor_views, augmented_views), image_indices)``, on either data path.

:func:`train_batches` is the one way the trainer gets them. The shuffle and every image's augmentation
depend on (seed, epoch, image) alone (:func:`seed_for`), never on the process (torchrun rank) or the
DataLoader worker that loads an image nor on what it loaded before, so:

* a two-process run trains on the batches one process would (rank r takes every world_size-th image of
  one global permutation, so the ranks' shares of a step make up the single-process batch);
* a resumed run draws the batches an uninterrupted one would, also part-way through an epoch.

Both paths augment with the ranges of :class:`~timm_gam.reid.transforms.AugmentationSpec`: ``files``
decodes and augments each image in DataLoader workers (torchvision), ``decoded`` augments the training
set decoded once onto the training device, a batch at a time (:mod:`~timm_gam.reid.decoded_images`).
"""
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .datasets import ReidImage, ReidImageDataset
from .decoded_images import augment_batch, draw_augmentations, normalise
from .transforms import AUGMENTATION, AugmentationSpec, TwoViews, build_eval_transform, build_train_transform

__all__ = ['DecodedBatches', 'SeededPerImage', 'seed_for', 'steps_per_epoch', 'train_batches']


def seed_for(*keys: int) -> int:
    """A 32-bit seed that depends on ``keys`` alone (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def steps_per_epoch(num_images: int, batch_size: int, world_size: int = 1) -> int:
    """Batches per epoch, as :func:`train_batches` makes them (drop_last, one share per rank)."""
    return (num_images // world_size) // _share(num_images, batch_size, world_size)


def _share(num_images: int, batch_size: int, world_size: int) -> int:
    """Images of a step each rank takes: the batch (at most the whole set) split between the ranks."""
    return max(1, min(batch_size, num_images) // world_size)


class SeededPerImage(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's generator seeded by (seed, epoch, index) first: the random
    augmentations of an image depend on the image and the epoch alone."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        torch.manual_seed(seed_for(self.seed, self.epoch, index))
        return self.dataset[index]


class DecodedBatches:
    """The batches of an epoch on the ``decoded`` data path: views made on the training device.

    Yields what a DataLoader of :class:`SeededPerImage` yields, ``((anchor_views, augmented_views),
    indices)``; each image's augmentation is drawn from (seed, epoch, image) as there.
    """

    def __init__(self, decoded: torch.Tensor, indices: list[int], batch_size: int, seed: int, epoch: int,
                 augmentation: AugmentationSpec = AUGMENTATION):
        self.decoded, self.indices, self.batch_size = decoded, indices, batch_size
        self.seed, self.epoch, self.augmentation = seed, epoch, augmentation

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = torch.tensor(self.indices[start:start + self.batch_size])
            images = self.decoded[index.to(self.decoded.device)]
            uniforms = draw_augmentations([seed_for(self.seed, self.epoch, i) for i in index.tolist()])
            yield (normalise(images), augment_batch(images, uniforms, self.augmentation)), index


def train_batches(images: Sequence[ReidImage], *, image_size: tuple[int, int], batch_size: int, seed: int,
                  epoch: int, skip_steps: int = 0, rank: int = 0, world_size: int = 1,
                  decoded: torch.Tensor | None = None, workers: int = 0, pin_memory: bool = False,
                  augmentation: AugmentationSpec = AUGMENTATION):
    """This rank's batches of ``epoch`` over ``images``, after the first ``skip_steps`` (those a time
    budget's stop had taken already), their augmented views drawn from ``augmentation``: from
    ``decoded`` (the ``decoded`` path) when given, else from the files."""
    sampler = DistributedSampler(range(len(images)), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    share = _share(len(images), batch_size, world_size)
    indices = list(sampler)[skip_steps * share:]
    if decoded is not None:
        return DecodedBatches(decoded, indices, share, seed, epoch, augmentation)
    views = TwoViews(build_eval_transform(image_size), build_train_transform(image_size, augmentation))
    dataset = SeededPerImage(ReidImageDataset(images, views), seed, epoch)
    return DataLoader(dataset, batch_size=share, sampler=indices, drop_last=True, num_workers=workers,
                      pin_memory=pin_memory)
