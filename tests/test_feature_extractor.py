"""FeatureExtractor, and ``timm-gam extract`` / ``search``: features of crops in any form and shape, a gallery
on disk, its nearest neighbours; offline with the published weights."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from test_release import RELEASE, REPO_ID

from timm_gam import cli, hub
from timm_gam.reid import FeatureExtractor, ImageLoadError, ReidEmbedder, extract_embeddings, load_embedder
from timm_gam.reid import gallery as gallery_module
from timm_gam.reid.gallery import Gallery, saved_index_path, search_gallery
from timm_gam.reid.transforms import build_eval_transform

# a tracker's crops: square (a box padded to 1:1), wide (2:1, a person lying or two side by side), and tall
# and thin (1:4); H x W of each
CROP_SHAPES = {'1:1': (96, 96), '2:1': (50, 100), '1:4': (160, 40)}


def tracker_crop(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A crop whose sides differ from its centre, so cutting the centre out and squashing the whole differ."""
    rng = np.random.default_rng(seed)
    crop = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    crop[:, : width // 4] = (200, 30, 30)
    crop[:, -width // 4:] = (30, 30, 200)
    crop[: height // 4] = (30, 200, 30)
    return crop


def card_snippet_features(backbone: torch.nn.Module, crops: list[np.ndarray]) -> torch.Tensor:
    """The model card's timm snippet, as a user runs it: timm's transform from the pretrained cfg."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=backbone))
    with torch.no_grad():
        return ReidEmbedder(backbone).eval()(torch.stack([transform(Image.fromarray(c)) for c in crops]))


@pytest.fixture(scope='module', autouse=True)
def onnx_cache(tmp_path_factory):
    """Exported ONNX models go to a folder of the test session, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp('cache')
        patch.setenv('TIMM_GAM_CACHE', str(cache))
        yield cache


@pytest.fixture(scope='module')
def tiny_run(tiny_run):
    """The session's smoke run: its checkpoint and its synthetic data set."""
    return tiny_run.checkpoint, tiny_run.data_root


@pytest.fixture(scope='module')
def extractor(tiny_run):
    return FeatureExtractor(checkpoint=tiny_run[0])


@pytest.fixture(scope='module')
def gallery_paths(tiny_run):
    return sorted((tiny_run[1] / 'bounding_box_test').glob('*.jpg'))[:12]


def test_a_picture_gives_the_same_features_as_a_path_pil_image_array_or_preprocessed_batch(extractor,
                                                                                            gallery_paths):
    paths = gallery_paths[:5]
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(image.convert('RGB')) for image in pil]
    from_paths = extractor(paths)
    assert from_paths.shape == (5, extractor.embed_dim) and from_paths.dtype == torch.float32
    torch.testing.assert_close(from_paths.norm(dim=1), torch.ones(5))
    for other in (extractor([str(p) for p in paths]), extractor(pil), extractor(arrays),
                  extractor(extractor.preprocess(arrays))):
        assert torch.equal(other, from_paths)


def test_the_features_are_the_recipes_within_rounding(extractor, tiny_run, gallery_paths):
    """onnxruntime and folded batch norm give the trained model's features to float rounding, on crops of
    the trained size as the recipe's evaluation reads them."""
    from timm_gam.reid import ReidImage
    loaded = load_embedder(checkpoint=tiny_run[0])
    recipe = extract_embeddings(loaded.embedder, [ReidImage(str(p)) for p in gallery_paths],
                                build_eval_transform(loaded.image_size))
    assert extractor.backend == 'onnxruntime'  # the default on a CPU
    torch.testing.assert_close(extractor(gallery_paths), recipe, rtol=0, atol=1e-5)
    folded = FeatureExtractor(checkpoint=tiny_run[0], backend='torch')
    torch.testing.assert_close(folded(gallery_paths), recipe, rtol=0, atol=1e-5)


def test_the_input_is_the_whole_crop_squashed_whatever_its_shape(extractor):
    """The model sees every crop resized whole to 64x32 (no centre cut), checked against PIL's own resize."""
    mean, std = (torch.tensor(extractor.data_config[k]).view(3, 1, 1) for k in ('mean', 'std'))
    height, width = extractor.image_size
    for name, shape in CROP_SHAPES.items():
        crop = tracker_crop(*shape)
        squashed = np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR))
        reference = (torch.from_numpy(squashed.copy()).permute(2, 0, 1) / 255 - mean) / std
        torch.testing.assert_close(extractor.preprocess([crop])[0], reference, rtol=0, atol=1e-5, msg=name)


def test_crops_of_any_shape_give_the_card_snippets_features(extractor, tiny_run):
    """FeatureExtractor and the model card's timm snippet agree on square, wide and tall crops."""
    crops = [tracker_crop(*shape) for shape in CROP_SHAPES.values()]
    snippet = card_snippet_features(load_embedder(checkpoint=tiny_run[0]).backbone, crops)
    torch.testing.assert_close(extractor(crops), snippet, rtol=0, atol=1e-5)
    exact = FeatureExtractor(checkpoint=tiny_run[0], backend='torch', fuse_batch_norm=False)
    assert torch.equal(exact(crops), snippet)  # the same transform, batch and model: bit for bit


def test_tracker_crops_of_any_size_and_mode(extractor, gallery_paths):
    rgb = np.asarray(Image.open(gallery_paths[0]).convert('RGB'))
    big = np.asarray(Image.fromarray(rgb).resize((48, 131)))
    grey = np.asarray(Image.fromarray(rgb).convert('L'))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    crops = [rgb, big, grey, grey[..., None], Image.fromarray(grey), rgba]
    features = extractor(crops)
    assert features.shape == (6, extractor.embed_dim) and torch.isfinite(features).all()
    inputs = extractor.preprocess(crops)  # the model sees the same pixels:
    assert torch.equal(inputs[2], inputs[3])  # (H, W) and (H, W, 1) greyscale alike
    assert torch.equal(inputs[2], inputs[4])  # as a greyscale image (file) gives
    assert torch.equal(inputs[5], inputs[0])  # opaque RGBA is the RGB picture
    # rows at other places of a batch, or in batches of other sizes, sum in another order
    torch.testing.assert_close(features[4], features[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(extractor([rgb])[0], features[0], rtol=0, atol=1e-6)


def test_the_onnx_export_is_made_once_per_weights(extractor, tiny_run, onnx_cache):
    (exported,) = (onnx_cache / 'onnx').glob('test_convnext-*.onnx')
    made = exported.stat().st_mtime_ns
    again = FeatureExtractor(checkpoint=tiny_run[0])
    assert again.model.path == exported and exported.stat().st_mtime_ns == made
    assert not list((onnx_cache / 'onnx').glob('tmp*'))  # no scratch folder left behind


def test_a_damaged_onnx_cache_entry_is_rebuilt_and_said(extractor, tiny_run, gallery_paths, caplog):
    """A cached export cut short (full disk, interrupted copy) is exported again, not a failure for good."""
    exported = extractor.model.path
    good = exported.read_bytes()
    exported.write_bytes(good[:len(good) // 3])
    with caplog.at_level(logging.INFO, logger='timm_gam'):
        again = FeatureExtractor(checkpoint=tiny_run[0])
    assert exported.read_bytes() == good  # the same export as before, whole
    assert [r.levelname for r in caplog.records] == ['WARNING'] and 'exporting it again' in caplog.text
    assert str(exported) in caplog.text
    torch.testing.assert_close(again(gallery_paths), extractor(gallery_paths), rtol=0, atol=0)


def test_the_first_export_says_where_the_cache_is(tiny_run, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='timm_gam'):
        FeatureExtractor(checkpoint=tiny_run[0], cache_dir=tmp_path)
        FeatureExtractor(checkpoint=tiny_run[0], cache_dir=tmp_path)
    (record,) = caplog.records  # once: the second extractor finds the export
    assert str(tmp_path / 'onnx') in record.getMessage() and 'delete' in record.getMessage()


def test_no_detections_give_an_empty_batch(extractor):
    assert extractor([]).shape == (0, extractor.embed_dim)


@pytest.mark.parametrize('bad, message', [
    (np.zeros((64, 32, 3), np.float32), 'float32 array; expected uint8'),
    (np.zeros((64, 32, 2), np.uint8), 'has shape (64, 32, 2)'),
    (np.zeros((0, 32, 3), np.uint8), 'H, W > 0'),
    (42, 'input 0 is a int'),
])
def test_bad_inputs_are_named(extractor, bad, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        extractor([bad])


def test_a_bare_image_or_a_wrong_batch_is_refused(extractor, gallery_paths):
    with pytest.raises(ValueError, match='pass a list'):
        extractor(np.zeros((64, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r'shape \(n, 3, 64, 32\)'):
        extractor(torch.zeros(2, 3, 128, 64))
    with pytest.raises(ImageLoadError, match='does not exist'):
        extractor([gallery_paths[0].with_name('missing.jpg')])


def test_search_is_exact_and_hnsw_finds_the_same_neighbours():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((500, 64)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:20] + 0.05 * rng.standard_normal((20, 64)).astype(np.float32)
    distances, indices = search_gallery(gallery, queries, top_k=5, index='exact')
    brute = np.linalg.norm(queries[:, None] - gallery[None], axis=2)
    assert (indices == np.argsort(brute, axis=1)[:, :5]).all()
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :5], atol=1e-4)
    _, approximate = search_gallery(gallery, queries, top_k=5, index='hnsw')
    assert (approximate[:, 0] == np.arange(20)).all()
    with pytest.raises(ValueError, match='same d'):
        search_gallery(gallery, queries[:, :32])


def unit_rows(rows: int, seed: int) -> np.ndarray:
    features = np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_the_hnsw_graph_is_saved_beside_the_gallery_and_reused_while_it_is_unchanged(tmp_path, monkeypatch):
    gallery_file = tmp_path / 'gallery.npz'
    gallery, queries = unit_rows(300, 0), unit_rows(5, 1)
    first = search_gallery(gallery, queries, top_k=3, index='hnsw', gallery_file=gallery_file)
    saved = saved_index_path(gallery_file, gallery)
    assert saved.parent == tmp_path and saved.is_file()

    def no_building(*args):
        raise AssertionError('the graph was built again')
    with monkeypatch.context() as patch:
        patch.setattr(gallery_module.faiss, 'IndexHNSWFlat', no_building)
        again = search_gallery(gallery, queries, top_k=3, index='hnsw', gallery_file=gallery_file)
    for reused, built in zip(again, first, strict=True):
        np.testing.assert_array_equal(reused, built)

    changed = unit_rows(300, 2)  # the gallery extracted again from other images
    _, indices = search_gallery(changed, changed[:5], top_k=1, index='hnsw', gallery_file=gallery_file)
    assert (indices[:, 0] == np.arange(5)).all()  # the new gallery's graph, not the old one's
    assert sorted(tmp_path.iterdir()) == [saved_index_path(gallery_file, changed)]  # the old graph removed


def test_an_interrupted_save_leaves_the_older_gallery_whole(tmp_path, monkeypatch):
    path = tmp_path / 'gallery.npz'
    older = Gallery(unit_rows(4, 0), ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg'], str(tmp_path), 'm', None, {})
    older.save(path)
    real_savez = np.savez

    def interrupted_savez(file, **arrays):
        real_savez(file, **arrays)
        file.truncate(100)  # what a kill in the middle of writing leaves
        raise KeyboardInterrupt
    monkeypatch.setattr(gallery_module.np, 'savez', interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        Gallery(unit_rows(9, 1), ['x.jpg'] * 9, str(tmp_path), 'm', None, {}).save(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(Gallery.load(path).features, older.features)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['gallery.npz']  # no scratch file left


def test_extract_and_search_on_the_command_line(tiny_run, tmp_path, capsys):
    checkpoint, data = tiny_run
    images = tmp_path / 'crops'
    (images / 'camera1').mkdir(parents=True)
    gallery_files = sorted((data / 'bounding_box_test').glob('*.jpg'))
    for path in gallery_files:
        (images / 'camera1' / path.name).write_bytes(path.read_bytes())
    (images / 'broken.jpg').write_bytes(b'not a jpeg')
    output = tmp_path / 'gallery.npz'
    assert cli.main(['extract', '--checkpoint', str(checkpoint), '--images', str(images),
                     '--output', str(output)]) == 0
    assert 'skipped 1 unreadable file(s): broken.jpg ->' in capsys.readouterr().out
    gallery = Gallery.load(output)
    assert len(gallery.paths) == len(gallery_files) and gallery.paths[0].startswith('camera1/')
    assert gallery.model == 'test_convnext' and gallery.data_config['input_size'] == [3, 64, 32]

    query = images / 'camera1' / gallery_files[3].name
    png = tmp_path / 'ranks.png'
    assert cli.main(['search', '--features', str(output), '--query', str(query), '--top-k', '4',
                     '--output', str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rank, distance, path = lines[1].split()
    assert rank == '1' and float(distance) < 1e-3 and path == str(query.resolve())  # itself, first
    assert len([line for line in lines if line.startswith('  ')]) == 4
    assert png.stat().st_size > 0 and Image.open(png).size[0] > 300

    (images / 'broken.jpg').rename(tmp_path / 'broken.jpg')
    assert cli.main(['search', '--features', str(output), '--query', str(tmp_path / 'broken.jpg')]) == 2
    assert capsys.readouterr().err == (f'timm-gam search: error: query {tmp_path / "broken.jpg"} is not a '
                                       'readable image: pass image files to --query\n')


OFFLINE_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
from timm_gam.reid import FeatureExtractor
from test_feature_extractor import CROP_SHAPES, card_snippet_features, tracker_crop
import timm
extractor = FeatureExtractor()
paths = sys.argv[1:]
arrays = [np.asarray(Image.open(p).convert('RGB')) for p in paths]
a, b = extractor(paths), extractor(arrays)
crops = [tracker_crop(*shape) for shape in CROP_SHAPES.values()]
snippet = card_snippet_features(timm.create_model('gam_resnet50_g4', pretrained=True), crops)
print(json.dumps({'repr': repr(extractor), 'shape': list(a.shape), 'same': bool((a == b).all()),
                  'crops_to_snippet': (extractor(crops) - snippet).norm(dim=1).tolist()}))
"""


def test_the_published_weights_offline(gallery_paths, tmp_path):
    """``FeatureExtractor()`` is the released g4, from huggingface_hub's cache with the network off."""
    hub.install_into_hf_cache(RELEASE, REPO_ID, cache_dir=tmp_path / 'cache')
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'cache'), HF_HUB_OFFLINE='1', TIMM_GAM_PROGRESS='0',
               TIMM_GAM_CACHE=str(tmp_path / 'timm-gam-cache'))
    result = subprocess.run([sys.executable, '-c', OFFLINE_SCRIPT, *map(str, gallery_paths[:3])], env=env,
                            capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report['shape'] == [3, 2048] and report['same']
    assert '2048-d, input 128x64' in report['repr']
    # a square, a wide and a tall crop: FeatureExtractor and the card's timm snippet see the same input
    # (two pictures of one person are 0.5-0.9 apart; a centre cut against a squash was 1.0)
    assert max(report['crops_to_snippet']) < 1e-4
    result = subprocess.run([sys.executable, '-m', 'timm_gam.cli', 'extract', '--images',
                             str(gallery_paths[0].parent), '--output', str(tmp_path / 'g4.npz')],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Gallery.load(tmp_path / 'g4.npz').features.shape[1] == 2048
