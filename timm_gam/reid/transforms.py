"""The image transforms of the re-ID recipe.

IDL (paper Eq. 4-6) asks a network to recognise an image ``x_i`` in its augmented view ``x̂_i``.
The augmentations are meant to imitate what changes between cameras (paper 4.2 and 5.2): random
zoom and crop, horizontal flip, contrast change and occlusion. Colour (hue, saturation) is left
alone on purpose: clothing colour is the main cue that identifies a person across cameras. The one
option against it, a greyscale view (``greyscale_prob``, off in the paper's recipe), keeps the colour
but stops a network from resting on colour alone (docs/recipe.md, options beyond the paper).

All transforms take a PIL RGB image (see :func:`~timm_gam.reid.datasets.load_image`), return a
normalised float tensor of shape (3, height, width), draw their randomness from torch's global
generator (seeded per DataLoader worker) and pickle, so they work in DataLoader worker processes.
"""
from dataclasses import dataclass, replace

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

__all__ = ['AUGMENTATION', 'AugmentationSpec', 'TwoViews', 'build_eval_transform', 'build_train_transform']

ImageSize = tuple[int, int]  # (height, width), 256x128 in the paper; 128x64 or 64x32 for CPU runs


def _to_normalised_tensor(mean, std) -> list:
    # ToPureTensor: batches collate to plain tensors, not torchvision's Image subclass
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def build_eval_transform(image_size: ImageSize = (256, 128), *, mean=IMAGENET_DEFAULT_MEAN,
                         std=IMAGENET_DEFAULT_STD) -> v2.Compose:
    """Resize to ``image_size`` and normalise: what clustering, evaluation and export all see."""
    return v2.Compose([v2.ToImage(), v2.Resize(tuple(image_size), antialias=True),
                       *_to_normalised_tensor(mean, std)])


@dataclass(frozen=True)
class AugmentationSpec:
    """The ranges of section 5.2's augmentations: the one statement both data paths read.

    ``files`` (:func:`build_train_transform`, torchvision per image) and ``decoded``
    (:func:`~timm_gam.reid.decoded_images.augment_batch`, batched on the training device) draw from
    these ranges, in this order:

    1. Random zoom and crop: a box covering ``crop_scale`` of the image area (0.64 = zoom in up to
       1.25x), its aspect within ``crop_aspect_jitter`` of the output's, resized to the full size.
    2. Horizontal flip with ``flip_prob``: cameras see people from either side.
    3. Brightness and contrast change (torchvision's ``ColorJitter`` definitions), imitating exposure.
    4. Greyscale with ``greyscale_prob`` (torchvision's ``rgb_to_grayscale`` weights, three equal
       channels): not in the paper; the anchor view keeps its colour, so IDL must match the two on
       shape and texture (CACL, Li et al. 2021; SimCLR's random greyscale, Chen et al. 2020).
    5. Occlusion by random erasing with ``erasing_prob``: a box of ``erasing_scale`` of the area, its
       height / width in ``erasing_ratio``, set to 0 after normalisation, so it is the mean colour
       rather than a black patch.
    """
    crop_scale: tuple[float, float] = (0.64, 1.0)
    crop_aspect_jitter: float = 1.2
    flip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.4
    greyscale_prob: float = 0.0
    erasing_prob: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.25)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)


AUGMENTATION = AugmentationSpec()  # the recipe's


def build_train_transform(image_size: ImageSize = (256, 128), augmentation: AugmentationSpec = AUGMENTATION,
                          *, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, **changes) -> v2.Compose:
    """The strong augmentation that makes ``x̂_i`` of paper Eq. 4: ``augmentation`` (with ``changes`` to
    its fields) on a PIL image.

    The image is first resized to ``image_size`` so that the crop is relative to the person box whatever
    the source size, exactly as the anchor view sees it.
    """
    spec = replace(augmentation, **changes)
    height, width = image_size
    aspect = width / height
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((height, width), antialias=True),
        v2.RandomResizedCrop((height, width), scale=spec.crop_scale,
                             ratio=(aspect / spec.crop_aspect_jitter, aspect * spec.crop_aspect_jitter),
                             antialias=True),
        v2.RandomHorizontalFlip(spec.flip_prob),
        v2.ColorJitter(brightness=spec.brightness, contrast=spec.contrast),
        # only when asked for: RandomGrayscale draws from the generator even at p=0, which would change
        # every later draw of the recipe's own augmentations
        *([v2.RandomGrayscale(spec.greyscale_prob)] if spec.greyscale_prob else []),
        *_to_normalised_tensor(mean, std),
        v2.RandomErasing(p=spec.erasing_prob, scale=spec.erasing_scale, ratio=spec.erasing_ratio, value=0),
    ])


class TwoViews:
    """``(anchor_view, augmented_view)`` of one image: ``x_i`` and ``x̂_i`` of paper Eq. 4.

    The recipe passes the evaluation transform as ``anchor_transform``, so ``x_i`` is the image as
    clustering and retrieval see it and IDL pulls augmented views towards that embedding. Ye et al.
    (CVPR 2019, the paper's [37]) augment both views instead: pass the train transform twice for that.
    """

    def __init__(self, anchor_transform, augment_transform):
        self.anchor_transform = anchor_transform
        self.augment_transform = augment_transform

    def __call__(self, image):
        return self.anchor_transform(image), self.augment_transform(image)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(anchor={self.anchor_transform!r}, augment={self.augment_transform!r})'
