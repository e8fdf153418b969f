"""The embedded synthetic re-ID data set: drawn in code, so the recipe runs with no download.

People are simple figures (head, hair, torso, arms, legs, shoes) whose clothing colours, torso
pattern (plain, stripes, two-tone, logo), sleeves, shorts or skirt, hat, bag and build are fixed per
identity. Cameras differ the way real ones do: each has its own background, colour cast, exposure,
blur, noise and viewpoint (person scale and position), and images add walking pose, facing
direction and, sometimes, an occluder. Every identity is seen by two or more cameras and every
camera sees many identities, so the camera does not tell who someone is: a model has to learn
appearance across camera changes, which is the re-ID problem in miniature.

The folders and file names are Market-1501's (see :func:`make_synthetic_reid`), so the synthetic
set goes through exactly the reader that real data does.
"""
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ['data_root_or_synthetic', 'make_synthetic_reid']

_FORMAT_VERSION = 1  # bump when the drawing changes, so cached copies are regenerated
_MANIFEST = 'synthetic.json'
_SUPERSAMPLE = 2  # draw at twice the size and shrink: smooth edges at no noticeable cost

# A shared palette, so many people wear the same colour: identity lies in the combination.
_CLOTHES = np.array([
    (30, 30, 35), (225, 225, 220), (128, 128, 128), (30, 40, 90), (50, 90, 180), (180, 35, 40),
    (40, 120, 60), (200, 180, 140), (110, 70, 40), (220, 190, 50), (220, 130, 160), (110, 60, 140),
    (225, 120, 40), (140, 180, 220),
])
_SKIN = np.array([(250, 215, 185), (230, 190, 150), (190, 140, 100), (140, 95, 60), (95, 65, 40)])
_HAIR = np.array([(20, 15, 10), (60, 40, 25), (110, 75, 40), (210, 180, 110), (150, 150, 150)])


@dataclass(frozen=True)
class _Identity:
    """What stays the same about a person from camera to camera."""
    shirt: tuple
    accent: tuple  # second colour of the torso pattern
    pants: tuple
    shoes: tuple
    skin: tuple
    hair: tuple
    pattern: str  # plain | stripes | two_tone | logo
    num_stripes: int
    long_sleeves: bool
    lower: str  # trousers | shorts | skirt
    long_hair: bool
    hat: tuple | None
    bag: str | None  # backpack | shoulder
    bag_colour: tuple
    width: float  # build, relative to an average person
    height: float


@dataclass(frozen=True)
class _Camera:
    """What a camera adds to every image it takes."""
    backgrounds: list[np.ndarray]  # scenes of (H, 2W, 3), twice as wide as an image: each image sees a window
    gain: np.ndarray  # per-channel colour cast
    brightness: float
    blur: float  # Gaussian sigma in output pixels
    noise: float
    scale: float  # person height / image height
    offset: float  # horizontal position of the person, fraction of the width
    occlusion_prob: float


def _colour(rng: np.random.Generator, palette: np.ndarray, jitter: float = 12) -> tuple:
    base = palette[rng.integers(len(palette))]
    return tuple(int(c) for c in np.clip(base + rng.normal(0, jitter, 3), 0, 255))


def _sample_identity(rng: np.random.Generator) -> _Identity:
    return _Identity(
        shirt=_colour(rng, _CLOTHES), accent=_colour(rng, _CLOTHES), pants=_colour(rng, _CLOTHES),
        shoes=_colour(rng, _CLOTHES[[0, 1, 2, 8]]), skin=_colour(rng, _SKIN, 6), hair=_colour(rng, _HAIR, 6),
        pattern=str(rng.choice(['plain', 'stripes', 'two_tone', 'logo'])),
        num_stripes=int(rng.integers(3, 7)),
        long_sleeves=bool(rng.random() < 0.5),
        lower=str(rng.choice(['trousers', 'shorts', 'skirt'], p=[0.6, 0.2, 0.2])),
        long_hair=bool(rng.random() < 0.3),
        hat=_colour(rng, _CLOTHES) if rng.random() < 0.15 else None,
        bag=[None, 'backpack', 'shoulder'][rng.choice(3, p=[0.5, 0.25, 0.25])],
        bag_colour=_colour(rng, _CLOTHES),
        width=float(rng.uniform(0.8, 1.2)), height=float(rng.uniform(0.9, 1.0)),
    )


def _sample_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A wall above a floor, with panels and blotches: texture that differs from camera to camera."""
    # mostly grey surfaces with a tint, like concrete, tarmac and painted walls
    wall, floor = rng.uniform(80, 180) + rng.normal(0, 10, 3), rng.uniform(80, 180) + rng.normal(0, 10, 3)
    horizon = int(height * rng.uniform(0.5, 0.8))
    bg = np.empty((height, width, 3))
    bg[:horizon], bg[horizon:] = wall, floor
    panel_width = int(rng.integers(6, 40))
    panels = rng.uniform(0.8, 1.2, width // panel_width + 1).repeat(panel_width)[:width]
    bg[:horizon] *= panels[None, :, None]
    coarse = rng.normal(0, 18, (height // 16 + 1, width // 16 + 1)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    return np.clip(bg + blotches[..., None], 0, 255).astype(np.float32)


def _sample_camera(rng: np.random.Generator, height: int, width: int) -> _Camera:
    return _Camera(
        backgrounds=[_sample_background(rng, height * _SUPERSAMPLE, 2 * width * _SUPERSAMPLE)
                     for _ in range(3)],
        gain=rng.uniform(0.9, 1.1, 3), brightness=float(rng.uniform(-10, 10)),
        blur=float(rng.uniform(0.0, 1.0)), noise=float(rng.uniform(2, 8)),
        scale=float(rng.uniform(0.8, 0.95)), offset=float(rng.uniform(-0.08, 0.08)),
        occlusion_prob=float(rng.uniform(0.1, 0.3)),
    )


class _FigureCanvas:
    """Draws in person coordinates: u across and v down, in units of the person's height (v=0 at the
    top of the head), so the figure is written once and placed at any scale and position."""

    def __init__(self, size: tuple[int, int], centre_x: float, top: float, person_height: float):
        self.image = Image.new('RGBA', (size[1], size[0]), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.centre_x, self.top, self.h = centre_x, top, person_height

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return self.centre_x + u * self.h, self.top + v * self.h

    def polygon(self, points, colour):
        self.draw.polygon([self.xy(u, v) for u, v in points], fill=(*colour, 255))

    def ellipse(self, u, v, ru, rv, colour):
        (x0, y0), (x1, y1) = self.xy(u - ru, v - rv), self.xy(u + ru, v + rv)
        self.draw.ellipse([x0, y0, x1, y1], fill=(*colour, 255))

    def line(self, points, width, colour):
        self.draw.line([self.xy(u, v) for u, v in points], fill=(*colour, 255),
                       width=max(1, round(width * self.h)))

    def band(self, u0, u1, v0, v1, colour):
        self.polygon([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], colour)


def _limb(top_u, top_v, angle, length, width):
    """A limb as a quadrilateral hanging from (top_u, top_v), rotated by ``angle`` radians."""
    du, dv = np.sin(angle) * length, np.cos(angle) * length
    nu, nv = np.cos(angle) * width / 2, -np.sin(angle) * width / 2
    return [(top_u - nu, top_v - nv), (top_u + nu, top_v + nv), (top_u + du + nu, top_v + dv + nv),
            (top_u + du - nu, top_v + dv - nv)]


def _draw_torso(canvas: _FigureCanvas, person: _Identity, half_width: float):
    top, bottom = 0.16, 0.53
    canvas.polygon([(-half_width, top), (half_width, top), (0.9 * half_width, bottom),
                    (-0.9 * half_width, bottom)], person.shirt)
    if person.pattern == 'stripes':
        step = (bottom - top) / (2 * person.num_stripes)
        for k in range(person.num_stripes):
            v = top + (2 * k + 1) * step
            canvas.band(-0.95 * half_width, 0.95 * half_width, v, v + step, person.accent)
    elif person.pattern == 'two_tone':
        canvas.polygon([(0, top), (half_width, top), (0.9 * half_width, bottom), (0, bottom)], person.accent)
    elif person.pattern == 'logo':
        canvas.ellipse(0, 0.3, 0.45 * half_width, 0.06, person.accent)


def _draw_person(canvas: _FigureCanvas, person: _Identity, swing: float, stride: float):
    """One walking pose of ``person``; ``swing`` (radians) moves arms and legs in opposite phase."""
    w = person.width
    half_width = 0.14 * w
    if person.bag == 'backpack':  # behind the body, sticking out on one side
        canvas.band(half_width - 0.03, half_width + 0.06, 0.18, 0.44, person.bag_colour)
    if person.long_hair:
        canvas.band(-0.065, 0.065, 0.05, 0.22, person.hair)
    for side in (-1, 1):
        leg = _limb(side * 0.06 * w, 0.5, side * stride, 0.45, 0.11 * w)
        canvas.polygon(leg, person.skin if person.lower == 'skirt' else person.pants)
        if person.lower == 'shorts':
            canvas.polygon(_limb(side * 0.06 * w, 0.68, side * stride, 0.27, 0.1 * w), person.skin)
        foot_u, foot_v = side * 0.06 * w + np.sin(side * stride) * 0.45, 0.5 + np.cos(stride) * 0.45
        canvas.ellipse(foot_u + 0.02, foot_v, 0.06, 0.028, person.shoes)
    if person.lower == 'skirt':
        canvas.polygon([(-0.13 * w, 0.5), (0.13 * w, 0.5), (0.2 * w, 0.74), (-0.2 * w, 0.74)], person.pants)
    _draw_torso(canvas, person, half_width)
    for side in (-1, 1):
        arm_top = (side * (half_width + 0.03), 0.18)
        canvas.polygon(_limb(*arm_top, -side * swing, 0.33, 0.075 * w), person.skin)
        sleeve = 0.33 if person.long_sleeves else 0.13
        canvas.polygon(_limb(*arm_top, -side * swing, sleeve, 0.085 * w), person.shirt)
    if person.bag == 'shoulder':
        canvas.line([(-0.7 * half_width, 0.17), (half_width + 0.03, 0.45)], 0.015, person.bag_colour)
        canvas.band(half_width, half_width + 0.1, 0.42, 0.55, person.bag_colour)
    canvas.ellipse(0, 0.065, 0.06, 0.065, person.hair)
    canvas.ellipse(0, 0.085, 0.05, 0.055, person.skin)
    if person.hat is not None:
        canvas.ellipse(0, 0.035, 0.07, 0.035, person.hat)


def _render_image(person: _Identity, camera: _Camera, rng: np.random.Generator,
                  image_size: tuple[int, int]) -> Image.Image:
    """One camera's view of ``person``: pose, placement, occlusion, then the camera's optics."""
    height, width = image_size[0] * _SUPERSAMPLE, image_size[1] * _SUPERSAMPLE
    person_height = height * person.height * float(np.clip(camera.scale + rng.normal(0, 0.04), 0.6, 1.0))
    centre_x = width * (0.5 + camera.offset + rng.normal(0, 0.04))
    top = (height - person_height) * rng.uniform(0.2, 0.8)
    canvas = _FigureCanvas((height, width), centre_x, top, person_height)
    _draw_person(canvas, person, swing=float(rng.uniform(-0.45, 0.45)), stride=float(rng.uniform(0, 0.2)))
    figure = canvas.image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else canvas.image

    # several scenes per camera and a shifting light: same-camera images must not match on background alone
    background = camera.backgrounds[rng.integers(len(camera.backgrounds))]
    start = int(rng.integers(0, background.shape[1] - width + 1))
    light = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    window = np.clip(background[:, start:start + width] * light, 0, 255)
    scene = Image.fromarray(window.astype(np.uint8)).convert('RGBA')
    scene.alpha_composite(figure)
    if rng.random() < camera.occlusion_prob:
        _draw_occluder(ImageDraw.Draw(scene), rng, height, width)
    image = scene.convert('RGB').resize((image_size[1], image_size[0]), Image.BOX)
    return _apply_optics(image, camera, rng)


def _apply_optics(image: Image.Image, camera: _Camera, rng: np.random.Generator) -> Image.Image:
    """The camera's blur, colour cast and exposure (with a little change per image), and sensor noise."""
    if camera.blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur))
    gain = (camera.gain * rng.uniform(0.9, 1.1)).astype(np.float32)
    pixels = np.asarray(image, dtype=np.float32) * gain + (camera.brightness + rng.normal(0, 5))
    pixels += camera.noise * rng.standard_normal(pixels.shape, np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int, width: int):
    """Something between camera and person: a bench or car in front of the legs, or a pole."""
    colour = tuple(int(c) for c in rng.uniform(30, 200, 3))
    if rng.random() < 0.5:
        draw.rectangle([0, height * rng.uniform(0.65, 0.85), width, height], fill=colour)
    else:
        x, pole_width = width * rng.uniform(0, 0.9), width * rng.uniform(0.08, 0.18)
        draw.rectangle([x, 0, x + pole_width, height], fill=colour)


@dataclass(frozen=True)
class _Shot:
    """One image to write: who, which camera, which of their images in that camera, which folder."""
    pid: int
    camid: int
    index: int
    folder: str


def _plan_shots(rng: np.random.Generator, pids: range, num_cameras: int, per_camera: int,
                is_test: bool) -> list[_Shot]:
    """Each person is seen by 2..num_cameras cameras, ``per_camera`` images in each. For test people,
    as in Market-1501, the first image of each of half their cameras (rounded up) is a query and all
    other images form the gallery, so every query has a match in another camera."""
    shots = []
    for pid in pids:
        cameras = np.sort(rng.choice(num_cameras, size=int(rng.integers(2, num_cameras + 1)), replace=False))
        query_cameras = set(rng.choice(cameras, size=(len(cameras) + 1) // 2, replace=False).tolist())
        for camid in cameras.tolist():
            for index in range(per_camera):
                if not is_test:
                    folder = 'bounding_box_train'
                else:
                    folder = 'query' if camid in query_cameras and index == 0 else 'bounding_box_test'
                shots.append(_Shot(pid, camid, index, folder))
    return shots


def _market_name(shot: _Shot) -> str:
    # Market-1501 names: person, camera (from 1) and sequence, frame, box number
    return f'{shot.pid:04d}_c{shot.camid + 1}s1_{25 * (shot.index + 1):06d}_00.jpg'


def _rng(seed: int, *key: int) -> np.random.Generator:
    # one independent stream per (seed, role, ...): a person looks the same whatever the data set size
    return np.random.default_rng([seed, *key])


def _write_dataset(folder: Path, config: dict):
    image_size = tuple(config['image_size'])
    seed, num_train = config['seed'], config['num_train_identities']
    num_cameras, per_camera = config['num_cameras'], config['images_per_identity_per_camera']
    cameras = [_sample_camera(_rng(seed, 1, c), *image_size) for c in range(num_cameras)]
    train_pids = range(1, num_train + 1)
    test_pids = range(num_train + 1, num_train + config['num_test_identities'] + 1)
    shots = (_plan_shots(_rng(seed, 2, 0), train_pids, num_cameras, per_camera, is_test=False)
             + _plan_shots(_rng(seed, 2, 1), test_pids, num_cameras, per_camera, is_test=True))
    for name in ('bounding_box_train', 'query', 'bounding_box_test'):
        (folder / name).mkdir(parents=True)
    people = {}
    for shot in shots:
        if shot.pid not in people:
            people[shot.pid] = _sample_identity(_rng(seed, 3, shot.pid))
        image = _render_image(people[shot.pid], cameras[shot.camid],
                              _rng(seed, 4, shot.pid, shot.camid, shot.index), image_size)
        image.save(folder / shot.folder / _market_name(shot), quality=90)
    (folder / _MANIFEST).write_text(json.dumps(config, indent=2, sort_keys=True) + '\n')


def make_synthetic_reid(
        root: str | Path,
        *,
        num_train_identities: int = 64,
        num_test_identities: int = 32,
        num_cameras: int = 4,
        images_per_identity_per_camera: int = 3,
        image_size: tuple[int, int] = (128, 64),
        seed: int = 0,
) -> Path:
    """Write the synthetic multi-camera person data set to ``root`` in Market-1501 layout; return ``root``.

    ``bounding_box_train`` holds ``num_train_identities`` people, ``query`` and ``bounding_box_test``
    another ``num_test_identities`` (disjoint, as in Market-1501). Each person is seen by 2 to
    ``num_cameras`` cameras, ``images_per_identity_per_camera`` images in each; file names are
    Market's ``PPPP_cCs1_FFFFFF_00.jpg`` with person ids from 1, so :func:`load_reid_dataset` reads it
    like the real thing. ``image_size`` is (height, width). The defaults (about 580 training and 290
    test images of 128x64) take a few seconds to draw and keep a CPU run to minutes.

    The same arguments give byte-identical files. A ``synthetic.json`` manifest records them: a
    ``root`` already holding the same data set is reused as is; one made with other arguments is
    replaced. The data set is written to a temporary folder and renamed, so an interrupted call never
    leaves a half-written data set behind. A non-empty ``root`` that this function did not write is
    an error rather than something to overwrite.
    """
    if num_cameras < 2:
        raise ValueError(f'num_cameras must be at least 2 (re-ID matches across cameras), got {num_cameras}')
    if min(num_train_identities, num_test_identities, images_per_identity_per_camera) < 1:
        raise ValueError(f'identity and image counts must be positive, got {num_train_identities=}, '
                         f'{num_test_identities=}, {images_per_identity_per_camera=}')
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f'image_size is (height, width) of at least 16 pixels each, got {image_size}')
    config = {
        'format_version': _FORMAT_VERSION, 'num_train_identities': num_train_identities,
        'num_test_identities': num_test_identities, 'num_cameras': num_cameras,
        'images_per_identity_per_camera': images_per_identity_per_camera,
        'image_size': [int(s) for s in image_size], 'seed': seed,
    }
    root = Path(root).expanduser()
    manifest = root / _MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == config:
        return root
    if root.exists() and not manifest.is_file() and any(root.iterdir()):
        raise ValueError(f'{root} is not empty and was not written by make_synthetic_reid; '
                         f'choose an empty or new folder for the synthetic data set')
    staging = root.with_name(f'.{root.name}.tmp-{os.getpid()}')
    shutil.rmtree(staging, ignore_errors=True)
    _write_dataset(staging, config)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(staging, root)
    return root


def data_root_or_synthetic(data_root: str | Path | None, synthetic_root: str | Path, *, seed: int = 0,
                           **options) -> str | Path:
    """``data_root`` where one is given; else the synthetic set made (or found) in ``synthetic_root``
    with ``seed`` and the :func:`make_synthetic_reid` ``options``: where a run's data lies."""
    if data_root is not None:
        return data_root
    return make_synthetic_reid(synthetic_root, seed=seed, **options)
