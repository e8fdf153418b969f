"""The IDL augmentation, the evaluation transform and the two views of Eq. 4."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from timm_gam.reid.datasets import ReidImage, ReidImageDataset
from timm_gam.reid.transforms import TwoViews, build_eval_transform, build_train_transform

NO_AUGMENTATION = dict(crop_scale=(1.0, 1.0), crop_aspect_jitter=1.0, flip_prob=0.0, brightness=0.0,
                       contrast=0.0, erasing_prob=0.0)


@pytest.fixture
def person():
    """A 128x64 picture with structure: left/right and top/bottom halves differ."""
    pixels = np.zeros((128, 64, 3), np.uint8)
    pixels[:64, :32], pixels[:64, 32:], pixels[64:] = (220, 40, 40), (40, 40, 220), (40, 160, 40)
    return Image.fromarray(pixels)


@pytest.mark.parametrize('image_size', [(256, 128), (128, 64), (64, 32)])
@pytest.mark.parametrize('source_size', [(128, 64), (300, 90)])
def test_output_shapes(image_size, source_size):
    image = Image.new('RGB', (source_size[1], source_size[0]), (10, 20, 30))
    for transform in (build_eval_transform(image_size), build_train_transform(image_size)):
        output = transform(image)
        assert type(output) is torch.Tensor and output.dtype == torch.float32
        assert output.shape == (3, *image_size)


def test_eval_transform_normalises_with_imagenet_statistics():
    mean_colour = Image.new('RGB', (8, 16), (124, 116, 104))  # ImageNet mean in 8 bits
    assert build_eval_transform((16, 8))(mean_colour).abs().max() < 0.01


def test_train_transform_without_augmentation_is_the_eval_transform(person):
    plain = build_train_transform((64, 32), **NO_AUGMENTATION)
    torch.testing.assert_close(plain(person), build_eval_transform((64, 32))(person))


def test_train_transform_is_deterministic_under_a_seed(person):
    transform = build_train_transform((64, 32))
    torch.manual_seed(3)
    first = [transform(person) for _ in range(4)]
    torch.manual_seed(3)
    again = [transform(person) for _ in range(4)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first[0], first[1])


def test_flip_mirrors_the_image(person):
    flipped = build_train_transform((64, 32), **{**NO_AUGMENTATION, 'flip_prob': 1.0})(person)
    torch.testing.assert_close(flipped, build_eval_transform((64, 32))(person).flip(-1))


def test_erasing_blanks_a_box_to_the_mean_colour(person):
    torch.manual_seed(0)
    erased = build_train_transform((64, 32), **{**NO_AUGMENTATION, 'erasing_prob': 1.0})(person)
    zeros = (erased == 0).all(dim=0)
    assert zeros.any() and not (build_eval_transform((64, 32))(person) == 0).all(dim=0).any()
    rows, cols = zeros.nonzero(as_tuple=True)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert zeros.sum() == box_area  # one rectangle
    assert 0.02 * 64 * 32 <= box_area <= 0.25 * 64 * 32 + 32


def test_contrast_change_keeps_the_image_layout(person):
    torch.manual_seed(0)
    jittered = build_train_transform((64, 32), **{**NO_AUGMENTATION, 'contrast': 0.8})(person)
    plain = build_eval_transform((64, 32))(person)
    assert not torch.allclose(jittered, plain)
    assert torch.corrcoef(torch.stack([jittered.flatten(), plain.flatten()]))[0, 1] > 0.9


def test_two_views_are_anchor_and_augmentation(person):
    anchor_transform, augment_transform = build_eval_transform((64, 32)), build_train_transform((64, 32))
    torch.manual_seed(1)
    anchor, augmented = TwoViews(anchor_transform, augment_transform)(person)
    torch.testing.assert_close(anchor, anchor_transform(person))
    assert anchor.shape == augmented.shape and not torch.allclose(anchor, augmented)


def test_transforms_work_in_dataloader_workers(tmp_path, person):
    path = tmp_path / 'person.png'
    person.save(path)
    views = TwoViews(build_eval_transform((32, 16)), build_train_transform((32, 16)))
    assert repr(pickle.loads(pickle.dumps(views))) == repr(views)
    loader = torch.utils.data.DataLoader(ReidImageDataset([ReidImage(str(path))] * 4, views), batch_size=4,
                                         num_workers=1)
    (anchor, augmented), index = next(iter(loader))
    assert anchor.shape == augmented.shape == (4, 3, 32, 16) and index.tolist() == [0, 1, 2, 3]
