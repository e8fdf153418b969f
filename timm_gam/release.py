""" Releasing a trained re-ID model: Hub folder with a model card, and ONNX export of the embedding

The library behind ``recipes/publish.py`` and ``recipes/export_onnx.py`` (``recipes/visualize.py`` loads its
models here too). A released model is the timm backbone of a training checkpoint, whose classifier ``fc`` is
the embedding (``num_classes = embed_dim``); its pretrained cfg carries the input size the run trained with,
so ``hf-hub:`` loading resizes images as training did. Users L2-normalise its output, as
:class:`~timm_gam.reid.ReidEmbedder` does.

The model card states only what was measured: rank-1/5/10 and mAP either measured by the publish command on
the published (possibly fp16-rounded) weights, or copied from the checkpoint's own evaluation history and
labelled so; parameters and GMACs counted on the released model; the training time and epochs the
checkpoint recorded.
"""
import math
import os
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import timm
import torch
from huggingface_hub import get_token
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

from .hub import push_to_hub, save_hub_folder
from .reid.checkpoint import load_checkpoint
from .reid.embedding import ReidEmbedder, create_embedder, extract_embeddings
from .reid.trainer import TrainConfig, evaluate_split, prepare_data
from .reid.transforms import build_eval_transform

__all__ = [
    'LoadedEmbedder', 'embedder_from_checkpoint', 'pretrained_embedder', 'load_embedders', 'measure_metrics',
    'count_gmacs', 'recipe_command', 'model_card', 'write_release_folder', 'publish', 'export_onnx',
    'onnx_max_abs_diff', 'RESEARCH_ONLY_DATASETS',
]

# data sets whose terms allow research use only; weights trained on them inherit the restriction
RESEARCH_ONLY_DATASETS = {'market1501': 'Market-1501', 'dukemtmc': 'DukeMTMC-reID'}
# TrainConfig fields recipes/unsup_reid.py has no flag for (tests/test_publish.py checks this against its
# parser): the card lists those not at their default, leaving out the ones that cannot change the weights
_CONFIG_WITHOUT_FLAG = (
    'momentum', 'memory_momentum', 'lr_decay', 'eval_batch_size', 'log_every', 'synthetic')
_CONFIG_NOT_AFFECTING_WEIGHTS = ('eval_batch_size', 'log_every')


@dataclass
class LoadedEmbedder:
    """An L2-normalised embedding model with what is needed to feed it and to describe it."""
    embedder: ReidEmbedder
    image_size: tuple[int, int]  # (height, width) the weights were trained with
    label: str  # short name for figures and messages
    checkpoint: dict | None = None  # the training checkpoint, when loaded from one

    @property
    def backbone(self) -> torch.nn.Module:
        return self.embedder.backbone


def trained_input_cfg(backbone: torch.nn.Module, image_size: tuple[int, int]) -> dict:
    """Pretrained-cfg entries describing the recipe's preprocessing at ``image_size``, whatever the model's
    own cfg says: the whole crop resized bilinearly (``crop_pct`` 1), ImageNet mean and std."""
    height, width = image_size
    reduction = backbone.feature_info[-1]['reduction']
    return {'input_size': (3, height, width), 'pool_size': (math.ceil(height / reduction),
                                                             math.ceil(width / reduction)),
            'interpolation': 'bilinear', 'crop_pct': 1.0, 'crop_mode': 'center',
            'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD}


def embedder_from_checkpoint(path: str | os.PathLike) -> LoadedEmbedder:
    """The model of a ``checkpoint.pt`` of ``recipes/unsup_reid.py``, its cfg set to the trained input."""
    state = load_checkpoint(path)
    image_size = tuple(state['config']['image_size'])
    embedder = create_embedder(state['model_name'], state['embed_dim'])
    embedder.backbone.load_state_dict(state['model'])
    backbone = embedder.backbone
    backbone.pretrained_cfg = {**backbone.pretrained_cfg, **trained_input_cfg(backbone, image_size)}
    label = f'{state["model_name"]} ({Path(path).parent.name})'
    return LoadedEmbedder(embedder.eval(), image_size, label, checkpoint=state)


def pretrained_embedder(model_name: str) -> LoadedEmbedder:
    """A model with its pretrained weights (``gam_resnet50_g4``, ``hf-hub:org/name``, ...) as an embedder."""
    backbone = timm.create_model(model_name, pretrained=True)
    image_size = tuple(backbone.pretrained_cfg['input_size'][1:])
    return LoadedEmbedder(ReidEmbedder(backbone).eval(), image_size, f'{model_name} (pretrained)')


def load_embedders(checkpoints=(), pretrained=()) -> list[LoadedEmbedder]:
    """Checkpoints first, then pretrained model names, in the order given; at least one is needed."""
    loaded = [embedder_from_checkpoint(p) for p in checkpoints] + [pretrained_embedder(n) for n in pretrained]
    if not loaded:
        raise ValueError('no model given: pass --checkpoint RUN/checkpoint.pt or --pretrained MODEL_NAME')
    return loaded


# ---------------------------------------------------------------------------------------------------------
# What the card reports


def measure_metrics(loaded: LoadedEmbedder, data_root: str | os.PathLike, batch_size: int = 128,
                    workers: int = 0) -> dict:
    """Rank-1/5/10 and mAP (percent, Market-1501 protocol) on the query/gallery split of ``data_root``.

    Reads the data as ``recipes/unsup_reid.py --eval-only`` does (unreadable images skipped), so both give
    the same numbers for the same weights. Adds the split sizes and where the data is.
    """
    splits = prepare_data(TrainConfig(data_root=str(data_root)))
    if not splits.query or not splits.gallery or any(im.pid < 0 for im in splits.query + splits.gallery):
        raise ValueError(f'{data_root} has no labelled query/gallery split to measure on: give a '
                         'Market-1501 or DukeMTMC-reID layout with query/ and bounding_box_test/')
    embed = dict(transform=build_eval_transform(loaded.image_size), batch_size=batch_size,
                 num_workers=workers)
    metrics = evaluate_split(extract_embeddings(loaded.embedder, splits.query, **embed),
                             extract_embeddings(loaded.embedder, splits.gallery, **embed),
                             splits.query, splits.gallery)
    return {**metrics, 'data_root': str(data_root),
            'num_query': len(splits.query), 'num_gallery': len(splits.gallery)}


def count_gmacs(model: torch.nn.Module, image_size: tuple[int, int]) -> float:
    """Multiply-accumulates (10^9) of one forward pass on one image, counted as docs/models.md says:
    convolutions and matrix products only (FLOPs / 2), the embedding layer included."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *image_size))
    model.train(was_training)
    return counter.get_total_flops() / 2e9


def recipe_command(config: dict) -> str:
    """The ``recipes/unsup_reid.py`` command that trains with ``config``: every setting as an explicit flag,
    so no preset default can change what it means."""
    defaults = asdict(TrainConfig())
    args = ['python', 'recipes/unsup_reid.py']
    for field in fields(TrainConfig):
        name, value = field.name, config.get(field.name, defaults[field.name])
        if name in _CONFIG_WITHOUT_FLAG or value is None:
            continue
        flag = '--' + name.replace('_', '-')
        if name == 'amp':
            args += [] if value else ['--no-amp']
        elif isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return shlex.join(args)


def settings_without_flag(config: dict) -> dict:
    """Settings of ``config`` that differ from TrainConfig's defaults and have no recipe flag."""
    defaults = asdict(TrainConfig())
    return {k: config[k] for k in _CONFIG_WITHOUT_FLAG
            if k not in _CONFIG_NOT_AFFECTING_WEIGHTS and k in config and config[k] != defaults[k]}


def history_metrics(checkpoint: dict) -> dict | None:
    """The evaluation the training run made of exactly these weights, if it made one.

    The trainer evaluates at the end of each stage and saves right after, so the last stage record describes
    the saved weights only when the checkpoint is at a stage boundary (``epoch_in_stage == 0``).
    """
    state = checkpoint['state']
    stages = state['history']['stages']
    if not stages or state['epoch_in_stage'] != 0 or 'rank1' not in stages[-1]:
        return None
    return {**stages[-1], 'data_root': checkpoint['config']['data_root'] or 'the synthetic data set'}


def _format_hours(seconds: float) -> str:
    return f'{seconds / 3600:.2f} h' if seconds >= 360 else f'{seconds / 60:.1f} min'


def _data_description(config: dict) -> tuple[str, str]:
    """(what the model was trained on, the licence paragraph) for the card."""
    root = config['data_root']
    if root is None:
        return ('the synthetic person data set drawn in code by `timm_gam.reid.make_synthetic_reid` '
                f'(arguments {config["synthetic"] or "default"})',
                'The training images are synthetic and carry no third-party terms; the code is Apache-2.0.')
    name = next((title for key, title in RESEARCH_ONLY_DATASETS.items() if key in Path(root).name.lower()),
                None)
    if name is None:
        return (f'the images under `{root}` (`{Path(root).name}/bounding_box_train`)',
                'These weights are derived from those images: their terms apply to the weights too. '
                'Check them before any use beyond research. The code is Apache-2.0.')
    return (f'{name} images under `{root}` (`bounding_box_train`, identity labels never used)',
            f'{name} may be used for non-commercial research only and must not be redistributed. These '
            f'weights are derived from {name} images, so they are released for research use only under the '
            f'same terms (licence "other"); the timm-gam code is Apache-2.0.')


def _metrics_section(metrics: dict | None, measured_by_publish: bool, dtype: torch.dtype) -> str:
    if metrics is None:
        return ('Not measured for these weights: the checkpoint was saved in the middle of a stage, after '
                'its last evaluation. Run `recipes/publish.py --data-root DIR` to measure them.')
    table = ('| rank-1 | rank-5 | rank-10 | mAP |\n|---|---|---|---|\n'
             f'| {metrics["rank1"]:.1f} | {metrics["rank5"]:.1f} | {metrics["rank10"]:.1f} '
             f'| {metrics["mAP"]:.1f} |')
    if measured_by_publish:
        source = (f'Measured by `recipes/publish.py` on the published {_dtype_name(dtype)} weights, '
                  f'the query/gallery split of `{metrics["data_root"]}` ({metrics["num_query"]} query and '
                  f'{metrics["num_gallery"]} gallery images), Market-1501 protocol (same identity in the '
                  'same camera ignored), Euclidean distance of the L2-normalised embeddings, percent.')
    else:
        source = ('Copied from the training checkpoint\'s own evaluation after its last stage (stage '
                  f'{metrics["stage"]}) on the query/gallery split of `{metrics["data_root"]}`, fp32 '
                  'weights, Market-1501 protocol, percent. Not re-measured by the publish command.')
    return f'{source}\n\n{table}'


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}[dtype]


def model_card(loaded: LoadedEmbedder, repo_id: str, *, metrics: dict | None, measured_by_publish: bool,
               dtype: torch.dtype = torch.float32, hardware: str | None = None) -> str:
    """The ``README.md`` of a Hub folder: what the model is, how to use it, data and licence, the recipe
    command, what was measured, size and cost, how it was trained, and its limitations."""
    checkpoint = loaded.checkpoint
    config, state = checkpoint['config'], checkpoint['state']
    model_name, embed_dim = checkpoint['model_name'], checkpoint['embed_dim']
    height, width = loaded.image_size
    backbone = loaded.backbone
    params = sum(p.numel() for p in backbone.parameters())
    embedding_params = sum(p.numel() for p in backbone.get_classifier().parameters())
    gmacs = count_gmacs(backbone, loaded.image_size)
    stages = state['history']['stages']
    clusters = stages[-1]['num_clusters'] if stages else len(state['cluster_labels'])
    finished = state['stage'] > config['stages']
    trained_on, licence = _data_description(config)
    extra_settings = settings_without_flag(config)
    extra = f'\nSettings without a command-line flag, not at their default: `{extra_settings}`.\n' \
        if extra_settings else ''
    purity = stages[-1].get('cluster_purity') if stages else None
    purity_line = (f' Their purity against the file-name identities (a diagnostic the training never sees) '
                   f'is {purity:.3f}.') if purity is not None else ''
    progress = ('the full schedule' if finished else
                f'an unfinished run: {len(stages)} of {config["stages"] + 1} stages completed')
    hardware_line = hardware or f'device setting `{config["device"]}` (the checkpoint does not record more)'
    small_input = (f'- Trained at {height}x{width}, far below the paper\'s 256x128: expect much lower '
                   'accuracy than the paper reports, and feed images at this size (timm\'s data config '
                   'does).\n'
                   if height * width < 256 * 128 else '')
    tag = repo_id.split('/')[-1]
    return f"""---
license: other
library_name: timm
tags:
- image-feature-extraction
- person-re-identification
- timm
- timm-gam
---
# {tag}

A person re-identification embedding: timm's `{model_name}` whose classifier outputs a {embed_dim}-d
embedding, trained **without identity labels** by the IDL + ACL recipe of Nikhal & Riggan, "Unsupervised
Attention Based Instance Discriminative Learning for Person Re-Identification" (WACV 2021), as implemented
in timm-gam. Compare people by the Euclidean distance of the L2-normalised embeddings.

## Usage

```python
import timm
import torch.nn.functional as F
import timm_gam  # registers the GAM models with timm

model = timm.create_model('{model_name}', pretrained=True).eval()  # or 'hf-hub:{repo_id}'
config = timm.data.resolve_data_config({{}}, model=model)       # input {height}x{width}, ImageNet mean/std
transform = timm.data.create_transform(**config)
embedding = F.normalize(model(transform(image).unsqueeze(0)), dim=1)  # image: a PIL person crop
```

## Results

{_metrics_section(metrics, measured_by_publish, dtype)}

Reproduce with `python recipes/unsup_reid.py --eval-only --pretrained --model {model_name} \
--embed-dim {embed_dim} --data-root DIR`.

## Model

| | |
|---|---|
| architecture | `{model_name}`, {embed_dim}-d embedding (`num_classes={embed_dim}`) |
| input | 3x{height}x{width}, ImageNet mean/std, bilinear resize of the whole crop |
| parameters | {params:,} ({params - embedding_params:,} without the embedding layer) |
| GMACs | {gmacs:.2f} at {height}x{width} (convolutions and matrix products, FlopCounterMode) |
| weights | `model.safetensors`, {_dtype_name(dtype)} |

## Training

Trained on {trained_on}, from {'pretrained' if config['pretrained'] else 'scratch (no ImageNet weights)'},
with loss `{config['loss']}`. {progress.capitalize()}: {state['epoch']} epochs in all, ending
with {clusters} clusters of {len(state['cluster_labels'])} training images.{purity_line} Training took
{_format_hours(state['elapsed_s'])} of wall time (evaluations included) on {hardware_line}.

The exact command (a run interrupted and continued adds `--resume`):

```bash
{recipe_command(config)}
```
{extra}
## Data and licence

{licence}

## Limitations

{small_input}- Label-free clustering merges different people that look alike (same clothing colours) and
  splits one person seen from different cameras; the numbers above are for one data set and do not transfer
  to other cameras or populations without measuring.
- The figures are for a single training run (seed {config['seed']}); no variance over seeds was measured.
- Person re-identification can be used to track people: use it only where the people filmed have agreed or
  the law allows it.
"""


# ---------------------------------------------------------------------------------------------------------
# The Hub folder


def round_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round the floating-point weights to ``dtype`` and back in place: the model then holds exactly what a
    ``dtype`` Hub folder gives after loading, so metrics measured on it are those of the published file."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            rounded = tensor.to(dtype)
            if not torch.isfinite(rounded).all() and torch.isfinite(tensor).all():
                raise ValueError(f'{name} holds values up to {tensor.abs().max().item():.4g}, beyond the '
                                 f'range of {_dtype_name(dtype)}: publish these weights in fp32 '
                                 '(leave out --fp16)')
            tensor.copy_(rounded)


def registry_mismatch(loaded: LoadedEmbedder, repo_id: str) -> str | None:
    """Whether ``timm.create_model(name, pretrained=True)`` would build a model that doesn't fit this release.

    ``pretrained=True`` takes ``num_classes`` and ``input_size`` from the cfg registered in timm-gam, not
    from the folder's ``config.json`` (only ``hf-hub:`` reads that), so the two must agree.
    """
    tag = repo_id.split('/')[-1]
    if tag not in timm.list_pretrained(tag):
        return None
    registered = get_pretrained_cfg(tag)
    if registered.hf_hub_id != repo_id:
        return None
    released = {'num_classes': loaded.embedder.embed_dim, 'input_size': (3, *loaded.image_size)}
    registered_values = {'num_classes': registered.num_classes, 'input_size': tuple(registered.input_size)}
    differing = {k: (registered_values[k], v) for k, v in released.items() if registered_values[k] != v}
    if not differing:
        return None
    changes = ', '.join(f'{k}={new} (registered: {old})' for k, (old, new) in differing.items())
    return (f'the pretrained cfg registered for {tag} does not match this release: {changes}. '
            f'timm.create_model(..., pretrained=True) would build the wrong model; update its cfg in '
            f'timm_gam/models/ (hf-hub:{repo_id} loading is unaffected).')


def write_release_folder(loaded: LoadedEmbedder, output: str | os.PathLike, repo_id: str, *,
                         dtype: torch.dtype = torch.float32, data_root: str | os.PathLike | None = None,
                         hardware: str | None = None, workers: int = 0) -> Path:
    """Write the Hub folder of a checkpoint's model: weights in ``dtype``, timm config, model card.

    With ``data_root`` the card's metrics are measured here on the weights rounded to ``dtype``; without it
    they are the checkpoint's own last evaluation (labelled as such), or absent when it has none.
    """
    if loaded.checkpoint is None:
        raise ValueError('a release is made from a training checkpoint (its config and history go into the '
                         'model card): pass --checkpoint RUN/checkpoint.pt')
    if repo_id.count('/') != 1:
        raise ValueError(f"--repo-id must be 'org/name' as on the Hub, got {repo_id!r}")
    round_weights(loaded.backbone, dtype)
    if data_root is not None:
        metrics = measure_metrics(loaded, data_root, workers=workers)
    else:
        metrics = history_metrics(loaded.checkpoint)
    card = model_card(loaded, repo_id, metrics=metrics, measured_by_publish=data_root is not None,
                      dtype=dtype, hardware=hardware)
    return save_hub_folder(loaded.backbone, output, model_card=card, dtype=dtype)


def publish(folder: str | os.PathLike, repo_id: str, token: str | None = None) -> str:
    """Upload a Hub folder; raise a ``RuntimeError`` saying what to do when no token or network is there."""
    token = token or get_token()
    if token is None:
        raise RuntimeError(f'no Hugging Face token to upload {folder} to {repo_id}: log in with '
                           '`hf auth login`, set HF_TOKEN or pass --token; or keep the folder with --dry-run')
    try:
        return push_to_hub(folder, repo_id, token=token).commit_url
    except Exception as err:  # failures come from huggingface_hub, its HTTP client and the OS alike
        raise RuntimeError(f'uploading {folder} to https://huggingface.co/{repo_id} failed '
                           f'({type(err).__name__}: {err}); check the network and that the token may write '
                           f'to {repo_id.split("/")[0]}, or keep the folder with --dry-run') from err


# ---------------------------------------------------------------------------------------------------------
# ONNX


def export_onnx(loaded: LoadedEmbedder, path: str | os.PathLike, opset: int = 18,
                dynamo: bool = False) -> Path:
    """Export the L2-normalised embedding model to ONNX: input ``images`` (batch, 3, H, W) with a dynamic
    batch size, output ``embeddings`` (batch, embed_dim).

    The TorchScript exporter is the default because it is several times faster than the dynamo one on these
    ResNets; both are checked the same way by :func:`onnx_max_abs_diff`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, *loaded.image_size)
    names = dict(input_names=['images'], output_names=['embeddings'])
    if dynamo:
        shapes = {'images': {0: torch.export.Dim('batch')}}
        torch.onnx.export(loaded.embedder, (example,), path, opset_version=opset, dynamo=True,
                          dynamic_shapes=shapes, **names)
    else:
        axes = {'images': {0: 'batch'}, 'embeddings': {0: 'batch'}}
        torch.onnx.export(loaded.embedder, (example,), path, opset_version=opset, dynamo=False,
                          dynamic_axes=axes, **names)
    return path


def onnx_max_abs_diff(loaded: LoadedEmbedder, path: str | os.PathLike, images: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's embeddings of ``images``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (onnx_out,) = session.run(['embeddings'], {'images': images.numpy()})
    with torch.no_grad():
        torch_out = loaded.embedder.eval()(images).numpy()
    if onnx_out.shape != torch_out.shape:
        raise AssertionError(f'{path} gives embeddings of shape {onnx_out.shape}, PyTorch {torch_out.shape}')
    return float(np.abs(onnx_out - torch_out).max())
