""" Hugging Face Hub folders for timm-gam weights: write, publish, and install into an offline cache

A Hub folder is what timm's ``pretrained=True`` and ``hf-hub:`` loading read: ``model.safetensors`` (the
state dict), ``config.json`` (timm's format: ``architecture``, ``num_classes``, ``num_features``,
``pretrained_cfg``, written by timm's own ``save_config_for_hf``) and an optional ``README.md`` model card.
Release folders are committed under ``hub/<model>.<tag>/`` in this repository.

``install_into_hf_cache`` lays a folder out in a Hub cache exactly as ``huggingface_hub`` does after a
download, so that with ``HF_HUB_OFFLINE=1`` the real ``hf_hub_download`` path finds the files::

    <HF_HUB_CACHE>/models--<org>--<name>/
        blobs/<etag>                          file contents, named by the Hub's etag
        snapshots/<commit>/<file>             relative symlinks to ../../blobs/<etag>
        refs/main                             the commit hash, no trailing newline
"""
import hashlib
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import CommitInfo, HfApi, constants
from huggingface_hub.file_download import repo_folder_name
from timm.models._hub import save_config_for_hf

__all__ = ['save_hub_folder', 'install_into_hf_cache', 'push_to_hub', 'MissingWeightsError',
           'StaleWeightsError', 'missing_weights_message', 'stale_weights_message']

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
MODEL_CARD_NAME = 'README.md'
# files the Hub keeps in Git LFS: their etag is the sha256 of the content, other files' is their git blob id
LFS_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth', '.onnx', '.npz')


def save_hub_folder(
        model: torch.nn.Module,
        folder: str | os.PathLike,
        *,
        model_card: str | None = None,
        dtype: torch.dtype = torch.float32,
        extra_config: dict | None = None,
) -> Path:
    """Write ``model`` (created by ``timm.create_model``) as a Hub folder and return its path.

    Floating-point tensors are stored in ``dtype`` (``torch.float16`` halves the download; timm casts back to
    the model's dtype on load); integer buffers such as BN's ``num_batches_tracked`` are kept as they are.
    ``extra_config`` is merged into ``config.json`` the way timm's ``model_config`` argument is.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = {
        name: (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in model.state_dict().items()
    }
    safetensors.torch.save_file(state_dict, folder / WEIGHTS_NAME, metadata={'format': 'pt'})
    save_config_for_hf(model, folder / CONFIG_NAME, model_config=extra_config)
    if model_card is not None:
        (folder / MODEL_CARD_NAME).write_text(model_card)
    return folder


def _hub_etag(path: Path) -> str:
    """The etag the Hub serves for a file, which names its blob in the cache."""
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def install_into_hf_cache(
        folder: str | os.PathLike,
        repo_id: str,
        cache_dir: str | os.PathLike | None = None,
        revision: str = 'main',
) -> Path:
    """Place the files of a Hub folder into a Hub cache as the model repo ``repo_id`` and return the snapshot.

    ``cache_dir`` defaults to the cache ``huggingface_hub`` uses (``HF_HUB_CACHE``). The snapshot's commit
    id is a hash of the file names and etags, so installing the same folder twice yields the same snapshot;
    it is a local id, not a commit that exists on the Hub. ``revision`` is the ref (branch) pointing at it.
    """
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f'{folder} is not a Hub folder: it needs {WEIGHTS_NAME} and {CONFIG_NAME}; '
            f'write one with timm_gam.hub.save_hub_folder(model, folder).')
    if repo_id.count('/') != 1:
        raise ValueError(f"repo_id must be 'org/name' as on the Hub, got {repo_id!r}.")

    storage = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type='model')
    files = sorted(p.relative_to(folder) for p in folder.rglob('*') if p.is_file() and p.name[0] != '.')
    etags = {rel: _hub_etag(folder / rel) for rel in files}
    listing = ''.join(f'{rel.as_posix()} {etag}\n' for rel, etag in etags.items())
    commit = hashlib.sha1(listing.encode()).hexdigest()

    snapshot = storage / 'snapshots' / commit
    for rel, etag in etags.items():
        blob = storage / 'blobs' / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(folder / rel, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))

    ref = storage / 'refs' / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)  # huggingface_hub compares the whole file content with the commit hash
    return snapshot


def push_to_hub(
        folder: str | os.PathLike,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = False,
        commit_message: str = 'Upload timm-gam weights',
) -> CommitInfo:
    """Upload a Hub folder to the model repo ``repo_id``, creating the repo if needed."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type='model', commit_message=commit_message)


class MissingWeightsError(RuntimeError):
    """Pretrained weights that neither the Hub nor its local cache could give."""


class StaleWeightsError(MissingWeightsError):
    """Cached pretrained weights that do not fit the model timm-gam registers for them."""


def _install_command(repo_id: str | None) -> str:
    """The command that puts a git checkout's committed release of ``repo_id`` into the Hub cache."""
    tag = (repo_id or 'org/<model>.<tag>').split('/')[-1]
    return (f'python -c "from timm_gam.hub import install_into_hf_cache; '
            f"install_into_hf_cache('hub/{tag}', '{repo_id}')\"")


def stale_weights_message(variant: str, repo_id: str | None, error: BaseException) -> str:
    """Explain cached weights whose tensors don't fit the registered model (an earlier release of the repo,
    kept by the Hub cache, e.g. one with an embedding head where the current release has none)."""
    return (
        f'the weights of {variant!r} in the Hugging Face Hub cache ({constants.HF_HUB_CACHE}) do not fit the '
        f'model this timm-gam registers for {repo_id!r}: they are another release of it; update them with '
        f'`hf download {repo_id}` (online), or from a git checkout of timm-gam with '
        f'{_install_command(repo_id)}\n'
        f'  cause: {type(error).__name__}: {str(error)[:300]}'
    )


def missing_weights_message(variant: str, repo_id: str | None, error: BaseException) -> str:
    """Explain a failed pretrained-weights download: the first line alone says what failed and the fix, the
    rest gives the details and the other ways to get the weights."""
    offline = int(constants.HF_HUB_OFFLINE)
    return (
        f'no weights for {variant!r} in the Hugging Face Hub cache ({constants.HF_HUB_CACHE}) and the Hub '
        f'repo {repo_id!r} could not be reached (HF_HUB_OFFLINE={offline}): run it once online, or pass '
        f'--checkpoint RUN/checkpoint.pt for weights of your own\n'
        f'  cause: {type(error).__name__}: {error}\n'
        f'Other ways to get the weights:\n'
        f'  - on a machine with the network, `hf download {repo_id}`, then copy its Hub cache here;\n'
        f'  - from a git checkout of timm-gam, whose hub/ folder holds the released weights:\n'
        f'      {_install_command(repo_id)}\n'
        f'  - or create the model with pretrained=False.'
    )
