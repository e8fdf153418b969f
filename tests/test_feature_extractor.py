"""FeatureExtractor, and ``timm-gam extract`` / ``search``: features of crops in any form, a gallery on disk,
its nearest neighbours; offline with the published weights (issue 12)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from release_checkpoints import tiny_training_run
from test_release import RELEASE, REPO_ID

from timm_gam import cli, hub
from timm_gam.reid import FeatureExtractor, ImageLoadError, extract_embeddings, load_embedder
from timm_gam.reid.gallery import Gallery, search_gallery
from timm_gam.reid.transforms import build_eval_transform


@pytest.fixture(scope='module', autouse=True)
def onnx_cache(tmp_path_factory):
    """Exported ONNX models go to a folder of the test session, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp('cache')
        patch.setenv('TIMM_GAM_CACHE', str(cache))
        yield cache


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A finished smoke run: its checkpoint and its synthetic data set."""
    config, _ = tiny_training_run(tmp_path_factory.mktemp('run'))
    return Path(config.output) / 'checkpoint.pt', Path(config.output) / 'data' / 'synthetic'


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
    """onnxruntime and folded batch norm give the trained model's features to float rounding; the unfolded
    torch model gives the recipe's own, bit for bit."""
    from timm_gam.reid import ReidImage
    loaded = load_embedder(checkpoint=tiny_run[0])
    recipe = extract_embeddings(loaded.embedder, [ReidImage(str(p)) for p in gallery_paths],
                                build_eval_transform(loaded.image_size))
    assert extractor.backend == 'onnxruntime'  # the default on a CPU
    torch.testing.assert_close(extractor(gallery_paths), recipe, rtol=0, atol=1e-5)
    folded = FeatureExtractor(checkpoint=tiny_run[0], backend='torch')
    torch.testing.assert_close(folded(gallery_paths), recipe, rtol=0, atol=1e-5)
    exact = FeatureExtractor(checkpoint=tiny_run[0], backend='torch', fuse_batch_norm=False,
                             batch_size=len(gallery_paths))
    assert torch.equal(exact(gallery_paths), recipe)  # the same batches: float sums in the same order


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
    assert 'skipped 1 unreadable file(s)' in capsys.readouterr().out
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

    assert cli.main(['search', '--features', str(tmp_path / 'none.npz'), '--query', str(query)]) == 2
    assert 'does not exist' in capsys.readouterr().err


OFFLINE_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
from timm_gam.reid import FeatureExtractor
extractor = FeatureExtractor()
paths = sys.argv[1:]
arrays = [np.asarray(Image.open(p).convert('RGB')) for p in paths]
a, b = extractor(paths), extractor(arrays)
print(json.dumps({'repr': repr(extractor), 'shape': list(a.shape), 'same': bool((a == b).all())}))
"""


def test_the_published_weights_offline(gallery_paths, tmp_path):
    """``FeatureExtractor()`` is the released g4, from huggingface_hub's cache with the network off."""
    hub.install_into_hf_cache(RELEASE, REPO_ID, cache_dir=tmp_path / 'cache')
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'cache'), HF_HUB_OFFLINE='1', TIMM_GAM_PROGRESS='0',
               TIMM_GAM_CACHE=str(tmp_path / 'timm-gam-cache'))
    result = subprocess.run([sys.executable, '-c', OFFLINE_SCRIPT, *map(str, gallery_paths[:3])], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report['shape'] == [3, 1024] and report['same']
    assert '1024-d, input 64x32' in report['repr']
    result = subprocess.run([sys.executable, '-m', 'timm_gam.cli', 'extract', '--images',
                             str(gallery_paths[0].parent), '--output', str(tmp_path / 'g4.npz')],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Gallery.load(tmp_path / 'g4.npz').features.shape[1] == 1024
