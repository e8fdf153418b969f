"""Hub folders and the offline Hub cache: timm's real ``pretrained=True`` / ``hf-hub:`` loading path.

The loads run in a subprocess started with ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` in its environment,
because huggingface_hub reads both when it is imported: that is how a user's offline machine sees them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch

from timm_gam import hub

REPO_ID = 'timm-gam/gam_resnet50_g4.unsup_market1501dev'
FP16_REPO_ID = 'timm-gam/gam_resnet50_g4.fp16-test'

# creates each (name, kwargs) spec with pretrained=True; saves its state dict as <out>/<index>.safetensors,
# or the RuntimeError timm_gam raises when it can't get the weights as <out>/<index>.error
LOAD_SCRIPT = """
import json, sys
import safetensors.torch, timm, timm_gam
out, specs = sys.argv[1], json.loads(sys.argv[2])
for index, (name, kwargs) in enumerate(specs):
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as err:
        open(f'{out}/{index}.error', 'w').write(str(err))
        continue
    safetensors.torch.save_file(model.state_dict(), f'{out}/{index}.safetensors')
"""
MISSING_REPO_ID = 'timm-gam/gam_resnet50_g4.not-in-the-cache'


def run_offline(cache_dir: Path, out_dir: Path, specs: list) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_CACHE=str(cache_dir), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1')
    return subprocess.run(
        [sys.executable, '-c', LOAD_SCRIPT, str(out_dir), json.dumps(specs)],
        env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def random_gam(tmp_path_factory):
    """A gam_resnet50_g4 with random weights and BN statistics, saved as fp32 and fp16 Hub folders; built
    as its registered cfg builds it (the g4 release's pooled features: no head, ``num_classes=0``)."""
    torch.manual_seed(0)
    model = timm.create_model('gam_resnet50_g4', zero_init_last=False)
    assert model.num_classes == 0
    for name, buffer in model.named_buffers():
        if name.endswith('running_var'):
            buffer.uniform_(0.5, 2.)
    root = tmp_path_factory.mktemp('hub')
    fp32 = hub.save_hub_folder(model, root / 'fp32', model_card='# gam_resnet50_g4\nrandom weights')
    fp16 = hub.save_hub_folder(model, root / 'fp16', dtype=torch.float16)
    return model.state_dict(), fp32, fp16


@pytest.fixture(scope='module')
def offline_loads(random_gam, tmp_path_factory):
    """What timm loaded offline from a Hub cache holding the fp32 and fp16 folders (one subprocess: each
    start costs seconds): state dicts, and for a repo that is not in the cache, the error message."""
    _, fp32, fp16 = random_gam
    cache, out = tmp_path_factory.mktemp('hf_cache'), tmp_path_factory.mktemp('loaded')
    hub.install_into_hf_cache(fp32, REPO_ID, cache_dir=cache)
    hub.install_into_hf_cache(fp16, FP16_REPO_ID, cache_dir=cache)
    specs = [
        ('gam_resnet50_g4', {}),
        (f'hf-hub:{REPO_ID}', {}),
        (f'hf-hub:{FP16_REPO_ID}', {}),
        ('gam_resnet50_g4', {'num_classes': 16}),
        ('gam_resnet50_g4', {'pretrained_cfg_overlay': {'hf_hub_id': MISSING_REPO_ID}}),
    ]
    result = run_offline(cache, out, specs)
    assert result.returncode == 0, result.stderr
    loaded = [safetensors.torch.load_file(out / f'{index}.safetensors') for index in range(len(specs) - 1)]
    return loaded + [(out / f'{len(specs) - 1}.error').read_text()]


def assert_same_tensors(expected: dict, loaded: dict):
    assert expected.keys() == loaded.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def test_pretrained_true_loads_identical_tensors_offline(random_gam, offline_loads):
    saved, _, _ = random_gam
    by_default_cfg, by_hub_name = offline_loads[:2]
    assert_same_tensors(saved, by_default_cfg)
    assert_same_tensors(saved, by_hub_name)


def test_fp16_folder_loads_as_rounded_fp32(random_gam, offline_loads):
    saved, _, _ = random_gam
    rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in saved.items()}
    assert_same_tensors(rounded, offline_loads[2])
    assert offline_loads[2]['conv1.weight'].dtype == torch.float32


def test_a_head_asked_of_headless_weights_is_new_on_the_pretrained_trunk(random_gam, offline_loads):
    saved, _, _ = random_gam
    with_head = offline_loads[3]
    assert_same_tensors(saved, {k: v for k, v in with_head.items() if not k.startswith('fc.')})
    assert with_head['fc.weight'].shape == (16, 2048)


def test_missing_weights_error_names_repo_and_remedies(offline_loads):
    message = offline_loads[4]
    assert MISSING_REPO_ID in message and 'HF_HUB_OFFLINE=1' in message
    assert f'hf download {MISSING_REPO_ID}' in message
    assert "install_into_hf_cache('hub/gam_resnet50_g4.not-in-the-cache'" in message


def test_hub_folder_contents(random_gam):
    _, fp32, fp16 = random_gam
    assert sorted(p.name for p in fp32.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((fp32 / 'config.json').read_text())
    assert config['architecture'] == 'gam_resnet50_g4'
    assert config['num_classes'] == 0 and config['num_features'] == 2048  # the released g4 cfg: no head
    assert config['pretrained_cfg']['input_size'] == [3, 128, 64]  # the released g4 cfg
    half = safetensors.torch.load_file(fp16 / 'model.safetensors')
    assert half['conv1.weight'].dtype == torch.float16
    assert half['bn1.num_batches_tracked'].dtype == torch.int64


def test_cache_layout_matches_huggingface_hub(random_gam, tmp_path):
    _, fp32, _ = random_gam
    snapshot = hub.install_into_hf_cache(fp32, REPO_ID, cache_dir=tmp_path)
    storage = tmp_path / 'models--timm-gam--gam_resnet50_g4.unsup_market1501dev'
    assert snapshot.parent == storage / 'snapshots'
    assert (storage / 'refs' / 'main').read_bytes() == snapshot.name.encode()  # no trailing newline
    weights = snapshot / 'model.safetensors'
    assert weights.is_symlink() and not os.path.isabs(os.readlink(weights))
    assert weights.resolve().parent == (storage / 'blobs').resolve()
    cached = huggingface_hub.try_to_load_from_cache(REPO_ID, 'config.json', cache_dir=tmp_path)
    assert Path(cached).read_bytes() == (fp32 / 'config.json').read_bytes()
    assert hub.install_into_hf_cache(fp32, REPO_ID, cache_dir=tmp_path) == snapshot  # idempotent


def test_install_rejects_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match='save_hub_folder'):
        hub.install_into_hf_cache(tmp_path, REPO_ID, cache_dir=tmp_path)


def test_push_to_hub_creates_repo_and_uploads(monkeypatch, tmp_path):
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(('init', token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(('create_repo', repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(('upload_folder', kwargs))

    monkeypatch.setattr(hub, 'HfApi', RecordingApi)
    hub.push_to_hub(tmp_path, REPO_ID, token='t', private=True)
    assert calls[0] == ('init', 't')
    assert calls[1] == ('create_repo', REPO_ID, {'repo_type': 'model', 'private': True, 'exist_ok': True})
    assert calls[2][1]['repo_id'] == REPO_ID and calls[2][1]['folder_path'] == tmp_path


def test_cached_weights_of_another_release_are_named_with_the_update(tmp_path):
    """A Hub cache still holding g4 with an embedding head, where the registered release has none."""
    with_head = timm.create_model('gam_resnet50_g4', num_classes=1024)
    folder = hub.save_hub_folder(with_head, tmp_path / 'old-release')
    cache, out = tmp_path / 'cache', tmp_path / 'loaded'
    out.mkdir()
    hub.install_into_hf_cache(folder, 'timm-gam/gam_resnet50_g4.unsup_market1501dev', cache_dir=cache)
    result = run_offline(cache, out, [('gam_resnet50_g4', {})])
    assert result.returncode == 0, result.stderr
    message = (out / '0.error').read_text()
    assert message.startswith("the weights of 'gam_resnet50_g4' in the Hugging Face Hub cache")
    assert 'hf download timm-gam/gam_resnet50_g4.unsup_market1501dev' in message
    assert "install_into_hf_cache('hub/gam_resnet50_g4.unsup_market1501dev'" in message
