"""The ``decoded`` data path: views made from one uint8 tensor, against the ``files`` path's transforms."""
import inspect
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tiny_config import SMOKE, make_tiny_market
from torchvision.transforms import v2

from timm_gam.reid.batches import train_batches
from timm_gam.reid.config import TrainConfig
from timm_gam.reid.datasets import load_image, prepare_data
from timm_gam.reid.decoded_images import (
    AUGMENTATION_PARAMETERS,
    augment_batch,
    decode_images,
    draw_augmentations,
    normalise,
)
from timm_gam.reid.transforms import (
    AUGMENTATION,
    AugmentationSpec,
    build_eval_transform,
    build_train_transform,
)

# uniforms that make every augmentation the identity: the whole image, its aspect, no flip, brightness
# and contrast factors of exactly 1, no greyscale, no erasing
IDENTITY = dict(crop_scale=1.0, crop_aspect=0.5, crop_x=0.0, crop_y=0.0, flip=0.99, brightness=0.5,
                contrast=0.5, erase=0.99, erase_scale=0.0, erase_aspect=0.5, erase_x=0.0, erase_y=0.0,
                grey=0.99)


def uniforms(batch: int, **changes) -> torch.Tensor:
    row = {**IDENTITY, **changes}
    return torch.tensor([[row[name] for name in AUGMENTATION_PARAMETERS]] * batch)


@pytest.fixture(scope='module')
def images():
    return torch.randint(0, 256, (3, 3, 16, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_anchor_view_is_the_evaluation_transform(tmp_path):
    splits = prepare_data(make_tiny_market(tmp_path / 'data'), splits=('train',))
    decoded = decode_images(splits.train[:5], SMOKE['image_size'])
    evaluation = build_eval_transform(SMOKE['image_size'])
    expected = torch.stack([evaluation(load_image(im.path)) for im in splits.train[:5]])
    assert decoded.dtype == torch.uint8 and decoded.shape == (5, 3, *SMOKE['image_size'])
    torch.testing.assert_close(normalise(decoded), expected, rtol=0, atol=1e-6)


def test_identity_parameters_change_nothing(images):
    torch.testing.assert_close(augment_batch(images, uniforms(3)), normalise(images), rtol=0, atol=1e-5)


def test_flip_mirrors_the_image(images):
    flipped = augment_batch(images, uniforms(3, flip=0.0))
    torch.testing.assert_close(flipped, normalise(images).flip(-1), rtol=0, atol=1e-5)


def test_erasing_sets_a_box_of_the_drawn_area_to_zero(images):
    erased = augment_batch(images, uniforms(3, erase=0.0, erase_scale=1.0, erase_x=0.0, erase_y=0.0))
    plain = normalise(images)
    zero = (erased == 0).all(dim=1)  # (B, H, W): pixels erased in every channel
    kept = ~zero.unsqueeze(1).expand_as(erased)
    torch.testing.assert_close(erased[kept], plain[kept], rtol=0, atol=1e-5)
    area = 0.25 * 16 * 8  # erasing_scale's upper end, aspect 1 (log-ratio midpoint ~ 1)
    for box in zero:
        rows, cols = box.nonzero(as_tuple=True)
        assert rows.min() == 0 and cols.min() == 0  # at the drawn corner
        assert abs(int(box.sum()) - area) <= 0.35 * area


def test_zoom_magnifies_the_centre(images):
    """A crop of 64% of the area (0.8 of each side), centred, is the middle of the image enlarged."""
    zoomed = augment_batch(images, uniforms(3, crop_scale=0.0, crop_x=0.5, crop_y=0.5))
    plain = normalise(images)
    # the output's centre pixel pair samples the input's centre pair region: close to its mean
    centre = plain[:, :, 7:9, 3:5].mean(dim=(2, 3))
    torch.testing.assert_close(zoomed[:, :, 7:9, 3:5].mean(dim=(2, 3)), centre, rtol=0, atol=0.35)
    assert not torch.allclose(zoomed, plain, atol=1e-3)


def test_brightness_and_contrast_use_torchvision_definitions(images):
    from torchvision.transforms.v2 import functional as TF
    factor_b, factor_c = 1.2, 0.6  # uniforms 1.0 and 0.0 at the default ranges
    out = augment_batch(images, uniforms(3, brightness=1.0, contrast=0.0))
    expected = TF.adjust_contrast(TF.adjust_brightness(images.float() / 255, factor_b), factor_c)
    torch.testing.assert_close(out, normalise(expected), rtol=0, atol=1e-4)


def test_greyscale_is_torchvisions_and_off_by_default(images):
    from torchvision.transforms.v2 import functional as TF
    grey = TF.rgb_to_grayscale(images.float() / 255, num_output_channels=3)
    out = augment_batch(images, uniforms(3, grey=0.0), greyscale_prob=1.0)
    torch.testing.assert_close(out, normalise(grey), rtol=0, atol=1e-5)
    unchanged = augment_batch(images, uniforms(3, grey=0.0))
    torch.testing.assert_close(unchanged, normalise(images), rtol=0, atol=1e-5)


def test_a_new_parameter_keeps_the_earlier_parameters_draws():
    """Parameters are appended: each image's first values are what numpy drew for it before, so a
    run keeps its augmentations when an option is added."""
    seeds = [3, 1234567]
    expected = np.stack([np.random.default_rng(seed).random(12) for seed in seeds]).astype(np.float32)
    assert AUGMENTATION_PARAMETERS[:12] == ('crop_scale', 'crop_aspect', 'crop_x', 'crop_y', 'flip',
                                            'brightness', 'contrast', 'erase', 'erase_scale', 'erase_aspect',
                                            'erase_x', 'erase_y')
    np.testing.assert_array_equal(draw_augmentations(seeds)[:, :12].numpy(), expected)


def test_parameters_depend_on_the_seed_alone():
    a = draw_augmentations([7, 8, 9])
    b = draw_augmentations([9, 8, 7])
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert a.shape == (3, len(AUGMENTATION_PARAMETERS)) and (a >= 0).all() and (a < 1).all()
    assert not torch.equal(a[0], a[1])


def test_augmentation_is_the_same_whatever_the_batch(images):
    u = draw_augmentations([1, 2, 3])
    whole = augment_batch(images, u)
    one_by_one = torch.cat([augment_batch(images[i:i + 1], u[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=1e-6)


def test_random_views_keep_the_normalised_range(images):
    out = augment_batch(images, draw_augmentations(list(range(3))))
    assert out.shape == images.shape and out.dtype == torch.float32
    low, high = normalise(torch.zeros(1, 3, 1, 1)), normalise(torch.ones(1, 3, 1, 1))
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    assert np.isfinite(out.numpy()).all()


# -- one augmentation spec, read by both data paths ----------------------------------------------------

def both_paths(person_pixels: np.ndarray, spec: AugmentationSpec, seeds: range) -> tuple[torch.Tensor, ...]:
    """The augmented views of one picture by the ``files`` path (torchvision, seeded per view) and the
    ``decoded`` path (one batch), both from ``spec``."""
    size = person_pixels.shape[:2]
    transform = build_train_transform(size, spec)
    files = []
    for seed in seeds:
        torch.manual_seed(seed)
        files.append(transform(Image.fromarray(person_pixels)))
    decoded = torch.from_numpy(person_pixels).permute(2, 0, 1).unsqueeze(0).repeat(len(seeds), 1, 1, 1)
    return torch.stack(files), augment_batch(decoded, draw_augmentations(list(seeds)), spec)


@pytest.fixture(scope='module')
def person_pixels() -> np.ndarray:
    pixels = np.zeros((64, 32, 3), np.uint8)
    pixels[:32, :16], pixels[:32, 16:], pixels[32:] = (220, 40, 40), (40, 40, 220), (40, 160, 40)
    return pixels


def test_both_paths_default_to_the_one_spec():
    assert inspect.signature(build_train_transform).parameters['augmentation'].default is AUGMENTATION
    assert inspect.signature(augment_batch).parameters['augmentation'].default is AUGMENTATION


def test_both_paths_draw_the_erased_box_and_the_flip_from_the_spec(person_pixels):
    # ranges of one value: both paths must then draw the same flip and the same 32x16 box (height / width
    # 2, a quarter of the area), wherever they place it
    spec = AugmentationSpec(crop_scale=(1.0, 1.0), crop_aspect_jitter=1.0, flip_prob=1.0, brightness=0.0,
                            contrast=0.0, erasing_prob=1.0, erasing_scale=(0.25, 0.25),
                            erasing_ratio=(2.0, 2.0))
    files, decoded = both_paths(person_pixels, spec, range(6))
    mirrored = build_eval_transform((64, 32))(Image.fromarray(person_pixels)).flip(-1)
    for views in (files, decoded):
        erased = (views == 0).all(dim=1)
        assert erased.sum(dim=(1, 2)).tolist() == [32 * 16] * 6
        assert (erased.any(dim=2).sum(dim=1) == 32).all() and (erased.any(dim=1).sum(dim=1) == 16).all()
        kept = ~erased.unsqueeze(1).expand_as(views)
        torch.testing.assert_close(views[kept], mirrored.expand_as(views)[kept], rtol=0, atol=1e-5)


def test_both_paths_flip_as_often_as_the_spec_says(person_pixels):
    spec = replace(AugmentationSpec(crop_scale=(1.0, 1.0), crop_aspect_jitter=1.0, brightness=0.0,
                                    contrast=0.0, erasing_prob=0.0), flip_prob=0.25)
    mirrored = build_eval_transform((64, 32))(Image.fromarray(person_pixels)).flip(-1)
    for views in both_paths(person_pixels, spec, range(400)):
        flipped = (views - mirrored).abs().amax(dim=(1, 2, 3)) < 1e-5
        assert abs(flipped.float().mean().item() - 0.25) < 0.06


def unnormalised(views: torch.Tensor) -> torch.Tensor:
    """Normalised views back to [0, 1] pixels."""
    std, mean = torch.tensor(IMAGENET_DEFAULT_STD), torch.tensor(IMAGENET_DEFAULT_MEAN)
    return views * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)


def test_both_paths_make_greyscale_views_as_often_as_the_spec_says(person_pixels):
    spec = AugmentationSpec(crop_scale=(1.0, 1.0), crop_aspect_jitter=1.0, flip_prob=0.0, brightness=0.0,
                            contrast=0.0, greyscale_prob=0.3, erasing_prob=0.0)
    for views in both_paths(person_pixels, spec, range(400)):
        pixels = unnormalised(views)
        greyed = (pixels - pixels[:, :1]).abs().amax(dim=(1, 2, 3)) < 1e-4  # three equal channels
        assert abs(greyed.float().mean().item() - 0.3) < 0.06


def test_files_path_draws_as_before_without_greyscale(person_pixels):
    """RandomGrayscale would draw from the generator even at p=0: it is left out unless asked for."""
    assert not any(isinstance(t, v2.RandomGrayscale) for t in build_train_transform((64, 32)).transforms)
    assert any(isinstance(t, v2.RandomGrayscale)
               for t in build_train_transform((64, 32), greyscale_prob=0.2).transforms)


@pytest.mark.parametrize('data_path', ['decoded', 'files'])
def test_a_runs_greyscale_view_reaches_its_batches(tmp_path, data_path):
    splits = prepare_data(make_tiny_market(tmp_path / 'data'), splits=('train',))
    size = SMOKE['image_size']
    decoded = decode_images(splits.train, size) if data_path == 'decoded' else None
    batches = train_batches(splits.train, image_size=size, batch_size=8, seed=0, epoch=0, decoded=decoded,
                            augmentation=TrainConfig(greyscale_view=1.0).augmentation)
    (anchors, views), _ = next(iter(batches))
    spread = lambda v: (unnormalised(v) - unnormalised(v).mean(1, keepdim=True)).abs()  # noqa: E731
    kept = ~(views == 0).all(dim=1, keepdim=True)  # erased pixels are the mean colour, not grey
    assert spread(views).masked_select(kept).max() < 1e-4
    assert spread(anchors).max() > 0.05  # the anchor keeps its colour
