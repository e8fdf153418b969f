"""Readers, file-name parsing and image loading, including every bad input they refuse."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from timm_gam.reid.datasets import (
    ImageLoadError,
    ReidImage,
    ReidImageDataset,
    check_images,
    load_image,
    load_reid_dataset,
    parse_duke_name,
    parse_market_name,
)
from timm_gam.reid.transforms import TwoViews, build_eval_transform


def write_image(path, colour=(200, 30, 30), size=(32, 16), mode='RGB'):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size[1], size[0]), colour).save(path)
    return path


def market_tree(root, train=(), query=(), gallery=()):
    for folder, names in (('bounding_box_train', train), ('query', query), ('bounding_box_test', gallery)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(root / folder / name)
    return root


@pytest.fixture
def market_root(tmp_path):
    return market_tree(
        tmp_path / 'market',
        train=['0002_c1s1_000451_03.jpg', '0002_c3s1_000551_01.jpg', '0007_c2s3_070952_01.jpg',
               '-1_c1s1_000401_03.jpg', '0000_c6s1_002101_02.jpg'],
        query=['0003_c1s1_000100_00.jpg', '0005_c6s1_000200_00.jpg'],
        gallery=['0003_c2s1_000300_01.jpg', '0005_c1s1_000400_01.jpg', '0000_c3s1_000500_01.jpg',
                 '-1_c2s1_000600_01.jpg'],
    )


# --- file names ---------------------------------------------------------------------------------

def test_parse_market_name_is_zero_based_in_camera():
    assert parse_market_name('0002_c1s1_000451_03.jpg') == (2, 0)
    assert parse_market_name('/some/dir/1501_c6s4_001877_02.jpg') == (1501, 5)
    assert parse_market_name('-1_c3s2_000001_00.jpg') == (-1, 2)


def test_parse_duke_name():
    assert parse_duke_name('0001_c2_f0046182.jpg') == (1, 1)


@pytest.mark.parametrize('name', ['0002_c0s1_000451_03.jpg', 'img001.jpg', '0002_c1s1_000451_03.txt',
                                  '0001_c2_f0046182.jpg', 'abcd_c1s1_000451_03.jpg', ''])
def test_parse_market_name_rejects_with_file_and_pattern(name):
    with pytest.raises(ValueError, match='PPPP_cCsS_FFFFFF_BB') as info:
        parse_market_name(name)
    assert repr(name) in str(info.value)


@given(pid=st.one_of(st.just(-1), st.integers(0, 99999)), cam=st.integers(1, 99), seq=st.integers(0, 9),
       frame=st.integers(0, 999999), box=st.integers(0, 99))
def test_parse_market_name_round_trips(pid, cam, seq, frame, box):
    pid_text = '-1' if pid == -1 else f'{pid:04d}'  # junk is written '-1', not zero-padded
    name = f'{pid_text}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg'
    assert parse_market_name(name) == (pid, cam - 1)


@given(pid=st.integers(0, 9999), cam=st.integers(1, 9), frame=st.integers(0, 9999999))
def test_parse_duke_name_round_trips(pid, cam, frame):
    assert parse_duke_name(f'{pid:04d}_c{cam}_f{frame:07d}.jpg') == (pid, cam - 1)


@given(st.text())
def test_parsers_raise_only_value_error(name):
    for parse in (parse_market_name, parse_duke_name):
        try:
            pid, camid = parse(name)
        except ValueError:
            continue
        assert pid >= -1 and camid >= 0


# --- layouts --------------------------------------------------------------------------------------

def test_market_layout_applies_junk_and_distractor_rules(market_root):
    splits = load_reid_dataset(market_root)
    assert splits.name == 'market1501' and splits.root == market_root
    assert [(im.pid, im.camid) for im in splits.train] == [(2, 0), (2, 2), (7, 1)]  # -1 and 0 dropped
    assert [(im.pid, im.camid) for im in splits.query] == [(3, 0), (5, 5)]
    assert sorted(im.pid for im in splits.gallery) == [0, 3, 5]  # distractor kept, junk dropped
    for split in (splits.train, splits.query, splits.gallery):
        assert [im.path for im in split] == sorted(im.path for im in split)


def test_misnamed_files_are_skipped_with_a_count_and_non_images_ignored(market_root):
    write_image(market_root / 'bounding_box_train' / 'holiday.jpg')
    write_image(market_root / 'bounding_box_train' / 'IMG_0001.png')
    (market_root / 'bounding_box_train' / 'Thumbs.db').write_bytes(b'\0' * 10)
    with pytest.warns(UserWarning, match='skipped 2 file'):
        splits = load_reid_dataset(market_root)
    assert len(splits.train) == 3


def test_split_with_only_misnamed_files_is_an_error(market_root):
    for path in (market_root / 'query').iterdir():
        path.rename(path.with_name('q_' + path.name))
    with pytest.raises(ValueError, match='no usable query image'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        load_reid_dataset(market_root)


def test_dukemtmc_layout_is_detected_from_file_names(tmp_path):
    root = market_tree(tmp_path, train=['0001_c2_f0046182.jpg', '0001_c5_f0051291.jpg'],
                       query=['0005_c2_f0046999.jpg'], gallery=['0005_c1_f0030000.jpg'])
    splits = load_reid_dataset(root)
    assert splits.name == 'dukemtmc'
    assert [(im.pid, im.camid) for im in splits.train] == [(1, 1), (1, 4)]


def test_plain_folder_is_read_recursively_without_labels(tmp_path):
    write_image(tmp_path / 'a.jpg')
    write_image(tmp_path / 'day2' / 'b.PNG')
    (tmp_path / 'notes.txt').write_text('not an image')
    splits = load_reid_dataset(tmp_path)
    assert splits.name == 'folder' and splits.query == [] and splits.gallery == []
    assert [(im.pid, im.camid) for im in splits.train] == [(-1, -1), (-1, -1)]
    assert [im.path for im in splits.train] == [str(tmp_path / 'a.jpg'), str(tmp_path / 'day2' / 'b.PNG')]


def test_one_image_only_is_a_data_set(tmp_path):
    write_image(tmp_path / 'only.jpg')
    assert len(load_reid_dataset(tmp_path).train) == 1


def test_missing_root_names_the_path_and_the_flag(tmp_path):
    with pytest.raises(ValueError, match='does not exist.*--data-root'):
        load_reid_dataset(tmp_path / 'nowhere')


def test_empty_root(tmp_path):
    with pytest.raises(ValueError, match=f'{tmp_path} is empty'):
        load_reid_dataset(tmp_path)


def test_folder_without_images(tmp_path):
    (tmp_path / 'readme.txt').write_text('hello')
    with pytest.raises(ValueError, match='no image files'):
        load_reid_dataset(tmp_path)


def test_misnamed_market_folders_say_what_was_found_and_expected(tmp_path):
    for folder in ('train', 'query', 'bounding_box_test'):
        write_image(tmp_path / folder / '0001_c1s1_000001_00.jpg')
    with pytest.raises(ValueError) as info:
        load_reid_dataset(tmp_path)
    message = str(info.value)
    assert "missing folder(s) ['bounding_box_train']" in message
    assert "'train'" in message and '--data-root' in message and 'layout="folder"' in message


def test_market_layout_one_level_down_suggests_the_right_root(market_root):
    with pytest.raises(ValueError, match=f'use --data-root {market_root}'):
        load_reid_dataset(market_root.parent)


def test_explicit_market_layout_on_a_plain_folder_is_an_error(tmp_path):
    write_image(tmp_path / 'a.jpg')
    with pytest.raises(ValueError, match='not in Market-1501 layout'):
        load_reid_dataset(tmp_path, layout='market1501')


def test_unknown_layout(market_root):
    with pytest.raises(ValueError, match='unknown layout'):
        load_reid_dataset(market_root, layout='cuhk03')


# --- images ---------------------------------------------------------------------------------------

def test_load_image_converts_grayscale_to_rgb(tmp_path):
    image = load_image(write_image(tmp_path / 'g.png', colour=90, mode='L'))
    assert image.mode == 'RGB' and image.getpixel((0, 0)) == (90, 90, 90)


def test_load_image_fills_transparency_with_the_mean_colour(tmp_path):
    path = tmp_path / 'rgba.png'
    pixels = np.zeros((8, 4, 4), np.uint8)
    pixels[:4] = (255, 0, 0, 255)  # opaque red top, transparent black bottom
    Image.fromarray(pixels, 'RGBA').save(path)
    image = load_image(path)
    assert image.mode == 'RGB'
    assert image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((0, 7)) == (124, 116, 104)


def test_load_image_handles_palette_with_transparency(tmp_path):
    path = tmp_path / 'p.png'
    palette_image = Image.new('P', (4, 8), 1)
    palette_image.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette_image.save(path, transparency=0)
    assert load_image(path).getpixel((0, 0)) == (10, 200, 10)


def test_load_image_rescales_16_bit(tmp_path):
    path = tmp_path / 'deep.png'
    Image.fromarray(np.array([[0, 32896, 65535]] * 2, np.uint16)).save(path)
    image = load_image(path)
    assert image.mode == 'RGB'
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def truncated_jpeg(path):
    write_image(path, size=(64, 32))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def zero_byte_file(path):
    path.write_bytes(b'')


def text_file(path):
    path.write_text('this is not a picture')


@pytest.mark.parametrize('make_bad, problem', [
    (truncated_jpeg, 'cannot be decoded'), (zero_byte_file, 'is empty'), (text_file, 'cannot be decoded'),
])
def test_unreadable_images_raise_image_load_error_naming_the_path(tmp_path, make_bad, problem):
    path = tmp_path / 'bad.jpg'
    make_bad(path)
    with pytest.raises(ImageLoadError, match=problem) as info:
        load_image(path)
    assert str(path) in str(info.value) and 'delete or replace' in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_image(tmp_path):
    with pytest.raises(ImageLoadError, match='does not exist'):
        load_image(tmp_path / 'gone.jpg')


def test_check_images_skips_bad_files_with_a_count(tmp_path):
    good = [ReidImage(str(write_image(tmp_path / f'{i}.jpg')), i, 0) for i in range(3)]
    zero_byte_file(tmp_path / 'zero.jpg')
    bad = [ReidImage(str(truncated_jpeg(tmp_path / 't.jpg'))), ReidImage(str(tmp_path / 'zero.jpg'))]
    with pytest.warns(UserWarning, match='skipped 2 unreadable'):
        assert check_images([good[0], bad[0], good[1], bad[1], good[2]], on_error='skip') == good


def test_check_images_raises_with_every_count(tmp_path):
    paths = [truncated_jpeg(tmp_path / f'{i}.jpg') for i in range(7)]
    with pytest.raises(ImageLoadError, match='7 unreadable image') as info:
        check_images(paths)
    assert '... and 2 more' in str(info.value)


def test_identical_images_are_valid(tmp_path):
    paths = [write_image(tmp_path / f'{i}.jpg') for i in range(4)]
    assert check_images(paths) == paths


# --- torch dataset --------------------------------------------------------------------------------

def test_dataset_returns_the_list_position_as_index(market_root):
    images = load_reid_dataset(market_root).train
    dataset = ReidImageDataset(images, build_eval_transform((16, 8)))
    batch, index = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert len(dataset) == 3 and batch.shape == (3, 3, 16, 8) and index.tolist() == [0, 1, 2]


def test_dataset_passes_view_tuples_through(market_root):
    images = load_reid_dataset(market_root).train
    transform = build_eval_transform((16, 8))
    (anchor, augmented), index = next(iter(torch.utils.data.DataLoader(
        ReidImageDataset(images, TwoViews(transform, transform)), batch_size=2)))
    assert anchor.shape == augmented.shape == (2, 3, 16, 8) and index.tolist() == [0, 1]
