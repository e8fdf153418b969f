"""The training set decoded once into one uint8 tensor, and IDL's two views made from it a batch at a time.

The ``files`` data path reads, decodes and augments every image in DataLoader worker processes, one image
at a time, each epoch. On a 2-core CPU those processes take cores from the training step; on a GPU they
cannot keep up with it. The ``decoded`` path (``TrainConfig.data_path``) decodes the training images once,
resized to the training size, into a ``(n, 3, H, W)`` uint8 tensor on the training device (6,970 images
are 43 MB at 64x32, 685 MB at 256x128), and makes each batch's views there:

* the anchor ``x_i`` is that tensor normalised: exactly the evaluation transform's output;
* the augmented ``x^_i`` gets section 5.2's augmentations, the ranges of
  :class:`~timm_gam.reid.transforms.AugmentationSpec` as the ``files`` path, as batched tensor operations
  (:func:`augment_batch`): one affine resampling per image for zoom, crop and flip, brightness and
  contrast, greyscale (where asked for), normalisation, and random erasing as a mask.

The transforms are those of the ``files`` path with the same parameter ranges, not the same pixels:
the crop is resampled bilinearly without antialiasing, an infeasible crop box is clipped to the image
rather than redrawn, and brightness is always applied before contrast.

Each image's random parameters depend on (seed, epoch, image) alone (:func:`draw_augmentations`), as
on the ``files`` path, so results do not depend on the number of processes, and a resumed run augments
as an uninterrupted one.
"""
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .datasets import ReidImage, load_image
from .transforms import AUGMENTATION, AugmentationSpec

__all__ = ['AUGMENTATION_PARAMETERS', 'augment_batch', 'decode_images', 'draw_augmentations', 'normalise']

# the uniform numbers each image's augmentation is made of, in this order; a new one goes at the end,
# so the others' values (a prefix of each image's draw) stay those of earlier runs
AUGMENTATION_PARAMETERS = ('crop_scale', 'crop_aspect', 'crop_x', 'crop_y', 'flip', 'brightness',
                           'contrast', 'erase', 'erase_scale', 'erase_aspect', 'erase_x', 'erase_y', 'grey')


def decode_images(images: Sequence[ReidImage], image_size: tuple[int, int]) -> torch.Tensor:
    """All ``images`` decoded and resized (antialiased, as the evaluation transform) to ``image_size``."""
    resize = v2.Compose([v2.ToImage(), v2.Resize(tuple(image_size), antialias=True)])
    decoded = torch.empty(len(images), 3, *image_size, dtype=torch.uint8)
    for i, image in enumerate(images):
        decoded[i] = resize(load_image(image.path))
    return decoded


def normalise(images: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 (or [0, 1] float) images to the network's normalised float input."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def draw_augmentations(seeds: Sequence[int]) -> torch.Tensor:
    """``(len(seeds), len(AUGMENTATION_PARAMETERS))`` uniforms in [0, 1): one row per image, from its seed."""
    rows = [np.random.default_rng(seed).random(len(AUGMENTATION_PARAMETERS)) for seed in seeds]
    return torch.as_tensor(np.array(rows, dtype=np.float32).reshape(len(seeds), -1))


def augment_batch(images: torch.Tensor, uniforms: torch.Tensor, augmentation: AugmentationSpec = AUGMENTATION,
                  *, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, **changes) -> torch.Tensor:
    """Section 5.2's augmentations of a uint8 batch ``(B, 3, H, W)``, normalised: ``augmentation`` (with
    ``changes`` to its fields), the ranges the ``files`` path draws from too.

    ``uniforms`` (B, len(AUGMENTATION_PARAMETERS)) decide everything random, so the result is a function
    of its inputs: the same on any device, for any batch composition.
    """
    spec = replace(augmentation, **changes)
    batch, _, height, width = images.shape
    u = dict(zip(AUGMENTATION_PARAMETERS, uniforms.to(images.device, torch.float32).unbind(1), strict=True))

    # 1-2. zoom, crop and flip: a box of crop_scale of the area, aspect within crop_aspect_jitter,
    # resampled to the full size; a flip mirrors the box
    area = _between(u['crop_scale'], *spec.crop_scale)
    log_jitter = math.log(spec.crop_aspect_jitter)
    aspect_change = torch.exp(_between(u['crop_aspect'], -log_jitter, log_jitter))
    box_w = torch.sqrt(area * aspect_change).clamp(max=1.0)  # fractions of the width and height
    box_h = torch.sqrt(area / aspect_change).clamp(max=1.0)
    centre_x = (box_w + u['crop_x'] * (1 - box_w)) * 2 - 1 - box_w  # in [-1, 1] grid coordinates
    centre_y = (box_h + u['crop_y'] * (1 - box_h)) * 2 - 1 - box_h
    mirror = torch.where(u['flip'] < spec.flip_prob, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = box_w * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = box_h, centre_y
    grid = F.affine_grid(theta, (batch, 3, height, width), align_corners=False)
    views = F.grid_sample(images.float() / 255, grid, mode='bilinear', padding_mode='border',
                          align_corners=False)

    # 3. brightness, then contrast around each image's mean grey level (torchvision's definitions)
    exposure = _between(u['brightness'], 1 - spec.brightness, 1 + spec.brightness).view(-1, 1, 1, 1)
    views = (views * exposure).clamp(0, 1)
    grey = TF.rgb_to_grayscale(views).mean(dim=(1, 2, 3))
    factor = _between(u['contrast'], 1 - spec.contrast, 1 + spec.contrast).view(-1, 1, 1, 1)
    views = (factor * views + (1 - factor) * grey.view(-1, 1, 1, 1)).clamp(0, 1)

    # 4. greyscale with greyscale_prob: the luma in all three channels
    greyed = (u['grey'] < spec.greyscale_prob).view(-1, 1, 1, 1)
    views = torch.where(greyed, TF.rgb_to_grayscale(views, num_output_channels=3), views)
    views = normalise(views, mean, std)

    # 5. occlusion: a box of erasing_scale of the area, aspect in erasing_ratio, set to 0 (the mean colour)
    erase_area = _between(u['erase_scale'], *spec.erasing_scale) * height * width
    log_ratio = _between(u['erase_aspect'], *(math.log(r) for r in spec.erasing_ratio))
    erase_h = torch.sqrt(erase_area * torch.exp(log_ratio)).round().clamp(1, height)
    erase_w = torch.sqrt(erase_area / torch.exp(log_ratio)).round().clamp(1, width)
    top = (u['erase_y'] * (height - erase_h + 1)).floor()
    left = (u['erase_x'] * (width - erase_w + 1)).floor()
    rows = torch.arange(height, device=images.device).view(1, -1, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + erase_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + erase_w).view(-1, 1, 1)))
    erased = inside & (u['erase'] < spec.erasing_prob).view(-1, 1, 1)
    return views.masked_fill(erased.unsqueeze(1), 0.0)


def _between(uniform: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + uniform * (high - low)
