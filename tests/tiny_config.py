"""The one tiny configuration of the tests: the recipe's ``smoke`` preset, a whole schedule in seconds.

Tests override only what they are about (a model, a schedule length, a seed); the data set, the image
size and the batch shape are the preset's, so a change to it reaches every test at once. One departure:
the tests train in fp32 (``amp=False``). The preset's bf16 autocast runs only where the CPU computes
bf16 natively, so with it a test's numbers would depend on the machine running it; the tests of the
bf16 path turn it on themselves.
"""
from pathlib import Path

from recipe_scripts import load_recipe

from timm_gam.reid.synthetic import make_synthetic_reid
from timm_gam.reid.trainer import TrainConfig

SMOKE = load_recipe('unsup_reid').PRESETS['smoke']


def tiny_config(output: str | Path, **overrides) -> TrainConfig:
    """The smoke preset writing to ``output``, with ``overrides`` applied."""
    return TrainConfig(output=str(output), **{**SMOKE, 'amp': False, **overrides})


def make_tiny_market(root: Path) -> Path:
    """A smaller synthetic set than the smoke preset's, for tests that run the recipe many times: 24
    training images (6 people, 2 cameras, 2 images each), 4 test people."""
    return make_synthetic_reid(root, num_train_identities=6, num_test_identities=4, num_cameras=2,
                               images_per_identity_per_camera=2, image_size=SMOKE['image_size'])
