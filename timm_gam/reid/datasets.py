"""Person re-ID data: Market-1501 / DukeMTMC-reID / plain-folder readers and safe image loading.

A data set is read into :class:`ReidSplits`, three lists of :class:`ReidImage` (path, person id,
camera id). Training never needs the person ids: the recipe learns from ``train`` without labels
and uses ``pid`` only to evaluate (``query`` / ``gallery``) and to report cluster purity.

Every list is sorted by path so that a run is reproducible. Market-1501 file names start with the
person id, so that order groups identities together: whoever consumes ``train`` must shuffle it and
must never derive anything from list positions (BUC's first published numbers were inflated by
memory slots initialised in file order).
"""
import hashlib
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch.utils.data
from PIL import Image, ImageOps

__all__ = [
    'ALL_SPLITS', 'EVALUATION_SPLITS', 'LAYOUTS', 'in_content_order', 'prepare_data', 'to_rgb',
    'image_files', 'IMAGE_SUFFIXES', 'ImageLoadError', 'ReidImage', 'ReidImageDataset', 'ReidSplits',
    'check_images',
    'load_image', 'load_reid_dataset', 'parse_duke_name', 'parse_market_name',
]

IMAGE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff'})

# Folder names of the Market-1501 / DukeMTMC-reID release archives, by split.
MARKET_FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
# Names people commonly give the same splits; found instead of the above, they mean a misnamed layout.
_ALIAS_FOLDERS = ('train', 'test', 'gallery', 'bounding_box_query', 'gt_bbox', 'gt_query')



class _NameScheme(NamedTuple):
    pattern: re.Pattern  # groups 1 and 2: person id, camera number (from 1)
    example: str


_MARKET_NAMES = _NameScheme(re.compile(r'(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.(?:jpe?g|png)', re.IGNORECASE),
                            "'PPPP_cCsS_FFFFFF_BB.jpg' (e.g. '0002_c1s1_000451_03.jpg', person -1 for junk)")
_DUKE_NAMES = _NameScheme(re.compile(r'(\d+)_c(\d+)_f(\d+)\.(?:jpe?g|png)', re.IGNORECASE),
                          "'PPPP_cC_fFFFFFFF.jpg' (e.g. '0001_c2_f0046182.jpg')")
_NAME_SCHEMES = {'market1501': _MARKET_NAMES, 'dukemtmc': _DUKE_NAMES}

# Transparent pixels are filled with the ImageNet mean colour: after normalisation it is zero, so
# what lies behind a cut-out person carries no signal.
_TRANSPARENT_FILL = (124, 116, 104)


class ReidImage(NamedTuple):
    """One image of a re-ID data set; ``pid`` and ``camid`` are -1 when unknown."""
    path: str
    pid: int = -1
    camid: int = -1


@dataclass
class ReidSplits:
    """The splits of a data set; ``query`` and ``gallery`` are empty for an unlabelled folder."""
    train: list[ReidImage]
    query: list[ReidImage]
    gallery: list[ReidImage]
    name: str
    root: Path


class ImageLoadError(ValueError):
    """An image file that cannot be decoded (truncated, empty, not an image, missing)."""


# ---------------------------------------------------------------------------------------------
# File names


def _parse_name(filename: str | Path, scheme: _NameScheme) -> tuple[int, int]:
    name = Path(filename).name
    match = scheme.pattern.fullmatch(name)
    if match is None or int(match.group(2)) == 0:
        raise ValueError(f'{name!r} is not a re-ID file name of the form {scheme.example}; '
                         f'rename it, or read the folder with layout="folder" (no labels needed)')
    # cameras are numbered from 1 in file names and from 0 in code, as in torchreid
    return int(match.group(1)), int(match.group(2)) - 1


def parse_market_name(filename: str | Path) -> tuple[int, int]:
    """``(pid, camid)`` of a Market-1501 file name ``PPPP_cCsS_FFFFFF_BB.jpg``; camid is 0-based.

    pid -1 marks junk boxes and 0 distractors, exactly as the file names say. Raises ``ValueError``
    naming the file and the expected pattern for anything else.
    """
    return _parse_name(filename, _MARKET_NAMES)


def parse_duke_name(filename: str | Path) -> tuple[int, int]:
    """``(pid, camid)`` of a DukeMTMC-reID file name ``PPPP_cC_fFFFFFFF.jpg``; camid is 0-based."""
    return _parse_name(filename, _DUKE_NAMES)


# ---------------------------------------------------------------------------------------------
# Layouts


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and below it, with ``recursive``), sorted by path."""
    files = folder.rglob('*') if recursive else folder.iterdir()
    # Market-1501's archive ships Thumbs.db files: anything without an image suffix is not data
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_labelled_folder(folder: Path, scheme: _NameScheme, split: str,
                          keep_distractors: bool) -> list[ReidImage]:
    """One split's images; pid -1 junk always dropped, pid 0 distractors only if asked (as torchreid)."""
    images, misnamed = [], []
    for path in image_files(folder):
        try:
            pid, camid = _parse_name(path.name, scheme)
        except ValueError:
            misnamed.append(path.name)
            continue
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        images.append(ReidImage(str(path), pid, camid))
    if misnamed:
        # skipped rather than fatal: one stray file should not stop a run on thousands of good ones
        warnings.warn(f'{folder}: skipped {len(misnamed)} file(s) whose names do not match the '
                      f'{split} pattern, e.g. {misnamed[:3]}', stacklevel=3)
    if not images:
        raise ValueError(f'{folder} holds no usable {split} image (found {len(misnamed)} misnamed file(s)); '
                         f'expected names like {scheme.example}')
    return images


def _read_market_layout(root: Path, name: str, splits: Sequence[str]) -> ReidSplits:
    _check_market_folders(root, splits)
    scheme = _NAME_SCHEMES[name]
    read = {split: _read_labelled_folder(root / MARKET_FOLDERS[split], scheme, split,
                                         keep_distractors=split != 'train') for split in splits}
    return ReidSplits(**{split: read.get(split, []) for split in MARKET_FOLDERS}, name=name, root=root)


def _read_folder_layout(root: Path) -> ReidSplits:
    images = [ReidImage(str(p)) for p in image_files(root, recursive=True)]
    if not images:
        raise ValueError(f'no image files ({", ".join(sorted(IMAGE_SUFFIXES))}) under {root}; '
                         f'point --data-root at a folder of person images')
    return ReidSplits(train=images, query=[], gallery=[], name='folder', root=root)


def _subfolder_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def _check_market_folders(root: Path, splits: Sequence[str] = tuple(MARKET_FOLDERS)):
    found = _subfolder_names(root)
    wanted = [MARKET_FOLDERS[split] for split in splits]
    missing = [f for f in wanted if f not in found]
    if not missing:
        return
    hint = ''
    nested = [d for d in found if all((root / d / f).is_dir() for f in wanted)]
    if nested:
        hint = f' The data set seems to sit one level down: use --data-root {root / nested[0]}.'
    raise ValueError(
        f'{root} is not in Market-1501 layout: missing folder(s) {missing}; found {found or "no folders"}. '
        f'Expected {wanted} ({" / ".join(splits)}).{hint} Rename the folders, '
        f'point --data-root at the folder that holds them, or use layout="folder" to train on all images '
        f'without labels.')


def _looks_like_market_attempt(root: Path) -> bool:
    found = set(_subfolder_names(root))
    return bool(found & set(MARKET_FOLDERS.values())) or bool(found & set(_ALIAS_FOLDERS)) or any(
        (root / d / MARKET_FOLDERS['train']).is_dir() for d in found)


def _detect_layout(root: Path, splits: Sequence[str]) -> str:
    """'market1501' or 'dukemtmc' from the file names of the first split's folder, else 'folder'."""
    first = root / MARKET_FOLDERS[splits[0]]
    if not first.is_dir():
        if splits != ALL_SPLITS or _looks_like_market_attempt(root):
            _check_market_folders(root, splits)  # raises, naming what is there and what is expected
        return 'folder'
    names = [p.name for p in image_files(first)[:200]]
    duke = sum(bool(_DUKE_NAMES.pattern.fullmatch(n)) for n in names)
    market = sum(bool(_MARKET_NAMES.pattern.fullmatch(n)) for n in names)
    return 'dukemtmc' if duke > market else 'market1501'


Layout = Literal['auto', 'market1501', 'dukemtmc', 'folder']
LAYOUTS = ('auto', 'market1501', 'dukemtmc', 'folder')
ALL_SPLITS = ('train', 'query', 'gallery')
EVALUATION_SPLITS = ('query', 'gallery')


def load_reid_dataset(root: str | Path, layout: Layout = 'auto',
                      splits: Sequence[str] = ALL_SPLITS) -> ReidSplits:
    """Read a re-ID data set from ``root``.

    Layouts:
        * ``market1501``: ``bounding_box_train``, ``query``, ``bounding_box_test`` with Market names.
          As in torchreid, pid -1 junk images are dropped from every split and pid 0 distractors
          from ``train`` only (they stay in the gallery, where they are hard negatives).
        * ``dukemtmc``: the same folders with DukeMTMC-reID names ``PPPP_cC_fFFFFFFF.jpg``.
        * ``folder``: every image under ``root``, recursively, unlabelled (pid = camid = -1);
          ``query`` and ``gallery`` are empty. Training needs no labels.
        * ``auto``: Market or Duke when ``bounding_box_train`` exists (by its file names), else a
          plain folder; a root that looks like a misnamed Market layout is an error, not a folder.

    Image files whose names do not match the pattern are skipped with a warning giving their count;
    a split left with no image is an error. Lists are sorted by path (see the module docstring:
    consumers must shuffle). Images are not decoded here: see :func:`check_images`.

    ``splits`` names the splits to read; the others are left empty and their folders may be
    absent. Evaluation reads :data:`EVALUATION_SPLITS` only, so a test set alone (``query`` and
    ``bounding_box_test``) is enough for it; without ``train`` the layout cannot be a plain folder.
    """
    unknown = sorted(set(splits) - set(ALL_SPLITS))
    if unknown or not splits:
        raise ValueError(f'splits must be some of {ALL_SPLITS}, got {tuple(splits)}')
    root = Path(root).expanduser()
    if not root.is_dir():
        what = 'is a file, not a folder' if root.exists() else 'does not exist'
        raise ValueError(f'data root {root} {what}; pass --data-root with the folder that holds the images '
                         f'(or leave it out to use the embedded synthetic data set)')
    if not any(root.iterdir()):
        raise ValueError(f'data root {root} is empty; copy the images there or pass another --data-root')
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; choose one of {", ".join(LAYOUTS)}')
    if layout == 'auto':
        layout = _detect_layout(root, tuple(splits))
    if layout == 'folder':
        if 'train' not in splits:
            raise ValueError(f'a plain folder of images ({root}) has no labelled {"/".join(splits)} split; '
                             'give a Market-1501 or DukeMTMC-reID layout with query/ and bounding_box_test/')
        return _read_folder_layout(root)
    return _read_market_layout(root, layout, tuple(splits))


def prepare_data(root: str | Path, layout: Layout = 'auto', splits: Sequence[str] = ALL_SPLITS) -> ReidSplits:
    """The splits of a data set as a run uses them: unreadable images dropped (and counted on stdout),
    the training list in content order (:func:`in_content_order`). Training, ``--eval-only`` and the
    publish command read their data through this one function, so they see the same images."""
    splits = load_reid_dataset(root, layout=layout, splits=splits)
    for split in ALL_SPLITS:
        images = getattr(splits, split)
        good = check_images(images, on_error='skip')
        if len(good) < len(images):
            print(f'[data] {split}: skipped {len(images) - len(good)} unreadable image(s) '
                  f'under {splits.root}')
        setattr(splits, split, good)
    splits.train = in_content_order(splits.train)
    return splits


def in_content_order(images: list) -> list:
    """``images`` sorted by a digest of each file's bytes (then path, for byte-identical copies).

    The shuffle permutes positions in this list and cluster labels are keyed by them, so a list
    sorted by path would make a run depend on what the files are called: renaming them, or
    another reader listing them differently, would draw other batches. In content order the same
    images always train the same way, whatever their names.
    """
    def key(image):
        return hashlib.sha1(Path(image.path).read_bytes()).hexdigest(), image.path
    return sorted(images, key=key)


# ---------------------------------------------------------------------------------------------
# Images


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without the surprises of a bare ``convert('RGB')``: greyscale
    replicated, 16-bit greyscale rescaled, transparency composited over the ImageNet mean colour."""
    if img.mode.startswith('I'):
        # 16-bit (and 32-bit integer) greyscale: convert('RGB') would clip at 255, whitening the image
        values = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith('I;16') or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values * (255.0 / scale), 0, 255).round().astype(np.uint8))
    elif img.mode == 'F':
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
    if (img.mode == 'P' and 'transparency' in img.info) or img.mode in ('LA', 'La', 'PA', 'RGBa'):
        img = img.convert('RGBA')
    if img.mode == 'RGBA':
        background = Image.new('RGB', img.size, _TRANSPARENT_FILL)
        background.paste(img, mask=img.getchannel('A'))
        return background
    return img.convert('RGB')


def _open_decoded(path: str | Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    path = Path(path)
    try:
        img = Image.open(path)
        if draft_size is not None:
            img.draft('RGB', draft_size)  # JPEG: decode at reduced scale, still reading every byte
        img.load()
        return img
    except FileNotFoundError:
        raise ImageLoadError(f'image {path} does not exist; restore it or re-read the data set') from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f'image {path} is too large to decode safely ({e}); crop or resize it') from None
    except (OSError, SyntaxError, ValueError) as e:
        size = path.stat().st_size if path.exists() else 0
        problem = 'is empty (0 bytes)' if size == 0 else f'cannot be decoded ({e})'
        raise ImageLoadError(f'image {path} {problem}; it is truncated, corrupt or not an image: '
                             f'delete or replace it (training leaves such files out)') from None


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, whatever its mode.

    Greyscale is replicated to three channels, 16-bit greyscale rescaled (65535 -> 255), palette
    and transparency composited over the ImageNet mean colour, EXIF rotation applied. Raises
    :class:`ImageLoadError` (a ``ValueError``) naming the path for a truncated, empty, missing or
    non-image file.
    """
    img = _open_decoded(path)
    return to_rgb(ImageOps.exif_transpose(img))


def _path_of(item: ReidImage | str | Path) -> str:
    return item.path if isinstance(item, ReidImage) else str(item)


def check_images(items: Iterable[ReidImage | str | Path], *,
                 on_error: Literal['raise', 'skip'] = 'raise') -> list:
    """The items whose image decodes, so a long run does not fail at epoch 7 on one bad file.

    Each image is fully decoded once (JPEGs at 1/8 scale, which still reads every byte; PIL's
    ``verify()`` alone misses truncated JPEGs). ``on_error='raise'`` raises one
    :class:`ImageLoadError` listing how many failed and the first few; ``'skip'`` returns the good
    items and warns with the count. The recipe uses ``'skip'`` and prints the number skipped.
    Items may be :class:`ReidImage` or paths and are returned unchanged, in order.
    """
    good, errors = [], []
    for item in items:
        try:
            _open_decoded(_path_of(item), draft_size=(32, 32))
            good.append(item)
        except ImageLoadError as e:
            errors.append(str(e))
    if errors:
        report = f'{len(errors)} unreadable image(s):\n  ' + '\n  '.join(errors[:5])
        if len(errors) > 5:
            report += f'\n  ... and {len(errors) - 5} more'
        if on_error == 'raise':
            raise ImageLoadError(report + "\nDelete or replace them, or check with on_error='skip'.")
        warnings.warn(f'skipped {report}', stacklevel=2)
    return good


class ReidImageDataset(torch.utils.data.Dataset):
    """``(transform(image), index)`` for each :class:`ReidImage` of a list.

    The index is the position in ``images``: the trainer keys its cluster labels and memory slots
    by it, never by person id. When ``transform`` returns a tuple of views (see
    :class:`~timm_gam.reid.transforms.TwoViews`) the tuple is passed through, and the default
    collate function stacks each view into its own batch.
    """

    def __init__(self, images: Sequence[ReidImage], transform: Callable):
        self.images = list(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(load_image(self.images[index].path)), index
