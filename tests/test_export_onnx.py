"""recipes/export_onnx.py: a GAM embedding model exported to ONNX gives PyTorch's embeddings in
onnxruntime."""

import onnx
import pytest
import torch
from recipe_scripts import load_recipe
from release_checkpoints import save_untrained_checkpoint

from timm_gam.onnx_export import onnx_max_abs_diff
from timm_gam.reid.embedding import load_embedder


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """gam_resnet50_g4 at 64x32 with a 32-d embedding, exported by the recipe (which checks it once)."""
    root = tmp_path_factory.mktemp('onnx')
    checkpoint = save_untrained_checkpoint(root / 'checkpoint.pt', 'gam_resnet50_g4', embed_dim=32)
    diff = load_recipe('export_onnx').main(['--checkpoint', str(checkpoint),
                                            '--output', str(root / 'model.onnx')])
    return load_embedder(checkpoint=checkpoint), root / 'model.onnx', diff


def test_onnx_matches_pytorch_on_another_batch_size(exported):
    loaded, path, recipe_diff = exported
    images = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    diff = onnx_max_abs_diff(loaded, path, images)
    print(f'max abs difference, onnxruntime vs PyTorch: {recipe_diff:.3g} (batch 3), {diff:.3g} (batch 5)')
    assert recipe_diff < 1e-4 and diff < 1e-4


def test_graph_has_a_dynamic_batch(exported):
    _, path, _ = exported
    graph = onnx.load(str(path)).graph
    (images,), (embeddings,) = graph.input, graph.output
    assert images.name == 'images' and embeddings.name == 'embeddings'
    batch, *chw = images.type.tensor_type.shape.dim
    assert batch.dim_param and [d.dim_value for d in chw] == [3, 64, 32]
    assert embeddings.type.tensor_type.shape.dim[0].dim_param == batch.dim_param
