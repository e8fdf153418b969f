"""recipes/visualize.py: every subcommand writes a PNG that shows something, from tiny synthetic runs and
models; the ranked lists hold one picture per rank."""
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from recipe_scripts import load_recipe
from release_checkpoints import save_untrained_checkpoint

from timm_gam import visualize
from timm_gam.reid import ReidImage, create_embedder


@pytest.fixture(scope='module')
def recipe():
    return load_recipe('visualize')


@pytest.fixture(scope='module')
def tiny_run(tiny_run):
    return tiny_run.folder


def assert_png(path: Path):
    """A PNG that shows something: coloured pixels (channels more than 60 apart: neither the white page
    nor the black and grey of frames and text, which an empty figure still has) make up more than 0.2%
    of it, in more than a hundred shades. A blank picture, or empty axes, fail."""
    assert path.suffix == '.png' and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == 'PNG' and min(image.size) > 50
        pixels = np.asarray(image.convert('RGB')).astype(np.int16)
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert coloured.mean() > 0.002, f'{path.name} shows nothing in colour'
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, f'{path.name} has almost no shades'


def test_attention_gam_and_cbam_side_by_side(recipe, tiny_run, tmp_path):
    gam = save_untrained_checkpoint(tmp_path / 'gam.pt', 'gam_resnet50_g4')
    cbam = save_untrained_checkpoint(tmp_path / 'cbam.pt', 'cbam_resnet50')
    out = recipe.main(['attention', '--checkpoint', str(gam), '--checkpoint', str(cbam), '--data-root',
                       str(tiny_run / 'data' / 'synthetic'), '--num-images', '2', '--output',
                       str(tmp_path / 'attention.png')])
    assert_png(out)


def test_attention_maps_come_from_the_spatial_gate():
    """The hooked map is Eq. 3's sigmoid gate: the spatial attention's output is its input times the map
    (cloned in the hook: the block adds the shortcut to that output in place)."""
    torch.manual_seed(0)
    model = timm.create_model('gam_resnet50_g4', layers=(1, 1, 1, 1), zero_init_last=False).eval()
    images = torch.randn(2, 3, 64, 32)
    maps = visualize.spatial_attention_maps(model, images, blocks='stages')
    assert list(maps) == [f'layer{i}.0.attn.spatial' for i in range(1, 5)]
    assert maps['layer1.0.attn.spatial'].shape == (2, 16, 8)
    seen = {}
    handle = model.layer4[0].attn.spatial.register_forward_hook(
        lambda module, inputs, output: seen.update(x=inputs[0].clone(), y=output.clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    torch.testing.assert_close(seen['y'], seen['x'] * maps['layer4.0.attn.spatial'][:, None])
    assert list(visualize.spatial_attention_maps(model, images)) == ['layer4.0.attn.spatial']


def test_activation_maps_for_a_model_without_attention(tmp_path, tiny_run):
    image = Image.open(next((tiny_run / 'data' / 'synthetic' / 'query').iterdir())).convert('RGB')
    loaded = visualize.LoadedEmbedder(create_embedder('test_convnext', 16).eval(), (64, 32), 'convnext')
    with pytest.raises(ValueError, match='--map activation'):
        visualize.plot_attention([loaded], [image], tmp_path / 'a.png', map_kind='attention')
    assert_png(visualize.plot_attention([loaded], [image], tmp_path / 'a.png', blocks='stages'))  # auto


def test_ranks_show_each_query_then_one_picture_per_rank(recipe, tiny_run, tmp_path, monkeypatch):
    figures = []
    draw = visualize._ranked_rows_figure
    monkeypatch.setattr(visualize, '_ranked_rows_figure', lambda *a, **k: figures.append(draw(*a, **k)) or
                        figures[-1])
    out = recipe.main(['ranks', '--checkpoint', str(tiny_run / 'checkpoint.pt'), '--data-root',
                       str(tiny_run / 'data' / 'synthetic'), '--num-queries', '2', '--top-k', '5', '--output',
                       str(tmp_path / 'ranks.png')])
    assert_png(out)
    (figure,) = figures
    shown = [ax for ax in figure.axes if ax.images]
    assert len(shown) == 2 * (1 + 5)  # per query: the query, then ranks 1..5
    assert [ax.get_title() for ax in shown[1:6]] == ['1', '2', '3', '4', '5']
    for ax in shown:  # every tile a person crop, not an empty frame
        assert np.asarray(ax.images[0].get_array()).std() > 5


def test_ranking_leaves_out_same_identity_same_camera():
    query = [ReidImage('q', 1, 0)]
    gallery = [ReidImage('a', 1, 0), ReidImage('b', 2, 1), ReidImage('c', 1, 1)]
    embeddings = torch.tensor([[0.0], [1.0], [2.0]])
    assert visualize.rank_gallery(torch.zeros(1, 1), embeddings, query, gallery) == [[1, 2]]


def test_tsne_one_panel_per_model(recipe, tiny_run, tmp_path):
    checkpoint = str(tiny_run / 'checkpoint.pt')
    out = recipe.main(['tsne', '--checkpoint', checkpoint, '--checkpoint', checkpoint, '--data-root',
                       str(tiny_run / 'data' / 'synthetic'), '--num-ids', '4', '--output',
                       str(tmp_path / 'tsne.png')])
    one = recipe.main(['tsne', '--checkpoint', checkpoint, '--data-root',
                       str(tiny_run / 'data' / 'synthetic'), '--num-ids', '4', '--output',
                       str(tmp_path / 'tsne1.png')])
    assert_png(out)
    assert_png(one)
    assert Image.open(out).width > 1.5 * Image.open(one).width


def test_choose_identities_most_images_first_without_distractors():
    images = [ReidImage('x', pid, 0) for pid in (0, 0, 0, 3, 3, 5, 7, 7)]
    assert visualize.choose_identities(images, 2) == [3, 7]


def test_curves_of_two_runs_and_a_resumed_log(recipe, tiny_run, tmp_path):
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    log = (tiny_run / 'log.jsonl').read_text()
    (resumed / 'log.jsonl').write_text(log + log)  # every epoch and stage logged twice
    assert visualize.read_run_log(resumed)['stages'] == visualize.read_run_log(tiny_run)['stages']
    assert_png(recipe.main(['curves', str(tiny_run), str(resumed), '--output', str(tmp_path / 'curves.png')]))


def test_curves_of_a_folder_without_log_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match='--output folder of a recipes/unsup_reid.py run'):
        visualize.read_run_log(tmp_path)
