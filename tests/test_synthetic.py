"""The embedded synthetic data set: Market layout, Market protocol properties, determinism, caching."""
from collections import defaultdict

import pytest
from PIL import Image

from timm_gam.reid.datasets import check_images, load_reid_dataset
from timm_gam.reid.synthetic import make_synthetic_reid

TINY = dict(num_train_identities=6, num_test_identities=4, num_cameras=3, images_per_identity_per_camera=2,
            image_size=(32, 16))


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp('synthetic') / 'data', **TINY)


def test_is_read_as_market1501(tiny_root):
    splits = load_reid_dataset(tiny_root)
    assert splits.name == 'market1501'
    assert {im.pid for im in splits.train} == set(range(1, 7))
    assert {im.pid for im in splits.query} == {im.pid for im in splits.gallery} == set(range(7, 11))
    images = splits.train + splits.query + splits.gallery
    assert check_images(images) == images
    assert Image.open(images[0].path).size == (16, 32)


def test_query_is_one_image_per_person_and_camera_with_a_cross_camera_match(tiny_root):
    splits = load_reid_dataset(tiny_root)
    query_keys = [(im.pid, im.camid) for im in splits.query]
    assert len(query_keys) == len(set(query_keys))
    for pid, camid in query_keys:
        assert any(g.pid == pid and g.camid != camid for g in splits.gallery)


def test_cameras_do_not_identify_people(tiny_root):
    images = load_reid_dataset(tiny_root).train
    cameras_of, people_in = defaultdict(set), defaultdict(set)
    for im in images:
        cameras_of[im.pid].add(im.camid)
        people_in[im.camid].add(im.pid)
    assert min(len(c) for c in cameras_of.values()) >= 2
    assert min(len(p) for p in people_in.values()) >= 2


def _file_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, tiny_root):
    again = make_synthetic_reid(tmp_path / 'again', **TINY)
    assert _file_bytes(again) == _file_bytes(tiny_root)
    other = make_synthetic_reid(tmp_path / 'other', **{**TINY, 'seed': 1})
    assert _file_bytes(other) != _file_bytes(tiny_root)


def test_existing_data_set_is_reused_and_other_arguments_regenerate(tmp_path):
    root = make_synthetic_reid(tmp_path / 'data', **TINY)
    first_image = next((root / 'query').iterdir())
    stamp = first_image.stat().st_mtime_ns
    assert make_synthetic_reid(root, **TINY) == root and first_image.stat().st_mtime_ns == stamp
    make_synthetic_reid(root, **{**TINY, 'num_test_identities': 2})
    assert {im.pid for im in load_reid_dataset(root).query} == {7, 8}
    assert [p.name for p in tmp_path.iterdir()] == ['data']  # no staging folder left behind


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / 'mine.txt').write_text('precious')
    with pytest.raises(ValueError, match='not written by make_synthetic_reid'):
        make_synthetic_reid(tmp_path, **TINY)


@pytest.mark.parametrize('bad', [{'num_cameras': 1}, {'num_test_identities': 0}, {'image_size': (8, 8)}])
def test_rejects_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        make_synthetic_reid(tmp_path / 'data', **{**TINY, **bad})
