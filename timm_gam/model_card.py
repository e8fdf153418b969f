"""The model card (``README.md``) of a released re-ID model: what it is, how to use it, what was measured.

The card states only what was measured: rank-1/5/10 and mAP either measured by the publish command on
the published (possibly fp16-rounded) weights, or copied from the checkpoint's own evaluation history and
labelled so; parameters and GMACs counted on the released model; the training time and epochs the
checkpoint recorded. It names data sets, never paths on the machine that trained: a reader on the Hub
has only the name to go by. Its metadata is written by huggingface_hub (:mod:`timm_gam.card_metadata`).
"""
import os
import re
import shlex
from dataclasses import asdict, fields
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .card_metadata import CITATION, INSTALL, baseline_paragraph, card_data, split_note, with_metadata
from .reid.checkpoint import TrainingCheckpoint
from .reid.config import FIELDS_WITHOUT_FLAG, TrainConfig
from .reid.embedding import LoadedEmbedder

__all__ = ['RESEARCH_ONLY_DATASETS', 'count_gmacs', 'recipe_command', 'settings_without_flag',
           'model_card', 'refresh_release_card', 'dtype_name', 'earlier_releases', 'release_summary',
           'training_section']

# data sets whose terms allow research use only; weights trained on them inherit the restriction
RESEARCH_ONLY_DATASETS = {'market1501': 'Market-1501', 'dukemtmc': 'DukeMTMC-reID'}
# of the TrainConfig fields without a recipe flag (FIELDS_WITHOUT_FLAG), the card lists those not at their
# default, leaving out the ones that cannot change the weights
_CONFIG_NOT_AFFECTING_WEIGHTS = ('eval_batch_size', 'log_every', 'eval_every_min')
METRIC_KEYS = ('rank1', 'rank5', 'rank10', 'mAP')  # the columns of every results table of a card
EARLIER_HEADING = '### Earlier releases'


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


def recipe_command(config: dict, data_root: str | None = None, output: str | None = None) -> str:
    """The ``recipes/unsup_reid.py`` command that trains with ``config``: every setting as an explicit flag,
    so no preset default can change what it means. ``data_root`` and ``output``, if given, stand in for the
    config's (a path on the training machine means nothing to a reader of the card)."""
    defaults = asdict(TrainConfig())
    if data_root is not None and config.get('data_root') is not None:
        config = {**config, 'data_root': data_root}
    if output is not None:
        config = {**config, 'output': output}
    args = ['python', 'recipes/unsup_reid.py']
    for field in fields(TrainConfig):
        name, value = field.name, config.get(field.name, defaults[field.name])
        at_default_bool = isinstance(value, bool) and value == defaults[name]  # a flag only says a change
        if name in FIELDS_WITHOUT_FLAG or value is None or at_default_bool:
            continue
        args += _flag_arguments(name, value)
    return shlex.join(args)


def _flag_arguments(name: str, value) -> list[str]:
    flag = '--' + name.replace('_', '-')
    if isinstance(value, bool):
        return [flag] if value else ['--no-' + name.replace('_', '-')]
    if isinstance(value, (list, tuple)):  # an empty list is the default of an epoch list: no flag says it
        return [flag, *map(str, value)] if value else []
    return [flag, str(value)]


def recipe_commands(config: dict, state, data_root: str | None = None, output: str | None = None) -> str:
    """The commands that made the run: :func:`recipe_command` of the configuration it started with, then one
    ``--resume`` line for each resume that changed settings (``state.history['resumed_with']``, recorded by
    the trainer), with the epoch it continued from."""
    resumes = state.history.get('resumed_with', []) if state else []
    started_with = dict(config)
    for resume in reversed(resumes):
        started_with.update({name: before for name, (before, _) in resume['changes'].items()})
    lines = [recipe_command(started_with, data_root, output)]
    folder = output or config['output']
    for resume in resumes:
        steps = f' and {resume["step_in_epoch"]} steps' if resume['step_in_epoch'] else ''
        changed = [arg for name, (_, after) in resume['changes'].items() if name not in FIELDS_WITHOUT_FLAG
                   and after is not None for arg in _flag_arguments(name, after)]
        lines.append(f'# continued after {resume["epoch"]} epochs{steps}, with changed settings:')
        lines.append(shlex.join(['python', 'recipes/unsup_reid.py', '--output', folder, '--resume',
                                 *changed]))
    return '\n'.join(lines)


def settings_without_flag(config: dict) -> dict:
    """Settings of ``config`` that differ from TrainConfig's defaults and have no recipe flag."""
    defaults = asdict(TrainConfig())
    return {k: config[k] for k in FIELDS_WITHOUT_FLAG
            if k not in _CONFIG_NOT_AFFECTING_WEIGHTS and k in config and config[k] != defaults[k]}


def _format_hours(seconds: float) -> str:
    return f'{seconds / 3600:.2f} h' if seconds >= 360 else f'{seconds / 60:.1f} min'


def _data_name(root: str | None) -> str:
    """What a reader of the card can look up: the data set's name, never a path on the training machine."""
    if root is None:
        return 'the synthetic data set'
    folder = Path(root).name
    title = next((title for key, title in RESEARCH_ONLY_DATASETS.items() if key in folder.lower()), None)
    return f'{title} (data folder `{folder}`)' if title else f'the data folder `{folder}`'


def _data_description(config: dict, num_train_images: int) -> tuple[str, str]:
    """(what the model was trained on, the licence paragraph) for the card."""
    root = config['data_root']
    if root is None:
        return ('the synthetic person data set drawn in code by `timm_gam.reid.make_synthetic_reid` '
                f'(arguments {config["synthetic"] or "default"})',
                'The training images are synthetic and carry no third-party terms; the code is Apache-2.0.')
    name = next((title for key, title in RESEARCH_ONLY_DATASETS.items() if key in Path(root).name.lower()),
                None)
    if name is None:
        return (f'{num_train_images:,} images of {_data_name(root)}, identity labels never used',
                'These weights are derived from those images: their terms apply to the weights too. '
                'Check them before any use beyond research. The code is Apache-2.0.')
    return (f'the {num_train_images:,} training images of {_data_name(root)}: person crops of its '
            '`bounding_box_train` split, identity labels never used',
            f'{name} may be used for non-commercial research only and must not be redistributed. These '
            f'weights are derived from {name} images, so they are released for research use only under the '
            f'same terms (licence "other"); the timm-gam code is Apache-2.0.')


def _research_only(data_folder: str | None) -> bool:
    return data_folder is not None and any(key in data_folder.lower() for key in RESEARCH_ONLY_DATASETS)


def _data_folder(root: str | None) -> str | None:
    return None if root is None else Path(root).name


def _stage_of(stage: int, stages: int) -> str:
    """Where a stopped run was: stages are numbered from 0, ``stages`` merge stages after stage 0."""
    return f'in stage {stage} (stages 0 to {stages})'


def _metrics_section(metrics: dict | None, measured_by_publish: bool, dtype: torch.dtype) -> str:
    if metrics is None:
        return ('Not measured for these weights: the checkpoint was saved in the middle of a stage, after '
                'its last evaluation. Run `recipes/publish.py --data-root DIR` to measure them.')
    table = ('| rank-1 | rank-5 | rank-10 | mAP |\n|---|---|---|---|\n'
             f'| {metrics["rank1"]:.1f} | {metrics["rank5"]:.1f} | {metrics["rank10"]:.1f} '
             f'| {metrics["mAP"]:.1f} |')
    if measured_by_publish:
        source = (f'Measured by `recipes/publish.py` on the published {dtype_name(dtype)} weights, '
                  f'the query/gallery split of {_data_name(metrics["data_root"])}: {metrics["num_query"]:,} '
                  f'query and {metrics["num_gallery"]:,} gallery images of {metrics["num_identities"]:,} '
                  'people absent from the training split. Market-1501 protocol (same identity in the same '
                  'camera ignored), Euclidean distance of the L2-normalised embeddings, percent.')
    else:
        source = ('Copied from the training checkpoint\'s own evaluation after its last stage (stage '
                  f'{metrics["stage"]}) on the query/gallery split of {_data_name(metrics["data_root"])}, '
                  'fp32 weights, Market-1501 protocol, percent. Not re-measured by the publish command.')
    return f'{source}\n\n{table}\n{split_note(_data_folder(metrics["data_root"]))}'


def _card_output(config: dict) -> str:
    """The run folder as the card's command names it: ``runs/`` and the folder's own name."""
    return f'runs/{Path(config["output"]).name}'


def _objective(config: dict) -> str:
    """The loss; where ACL is in it, how the clusters were formed and what M holds; and whether the
    released weights are a mean teacher's."""
    loss = f"loss `{config['loss']}`"
    teacher = (f"the released weights a mean teacher's (the moving average of the trained weights, decay "
               f"{config['mean_teacher_decay']} per step; Tarvainen & Valpola 2017), whose features were "
               'also the ones clustered' if config.get('mean_teacher_decay') else None)
    if 'acl' not in config['loss']:
        return ', '.join(filter(None, [loss, teacher]))
    clustering = {'bottom-up': 'clusters merged bottom-up (Eq. 9-10)',
                  'dbscan': 'clusters formed afresh by DBSCAN at every stage (docs/recipe.md)'}
    memory = ("ACL's memory holding one proxy per cluster and camera (camera-aware proxies, Wang et al. "
              'AAAI 2021)' if config.get('camera_proxies') else None)
    reliable = (f"only the clusters that DBSCAN at eps +- {config['reliability_gap']} neither merges nor "
                "splits kept (SpCL's reliability criterion, Ge et al. NeurIPS 2020)"
                if config.get('clustering') == 'dbscan' and config.get('reliability_gap') else None)
    return ', '.join(filter(None, [loss, clustering[config.get('clustering', 'bottom-up')], reliable, memory,
                                   teacher]))


def _warm_start_source(config: dict) -> str | None:
    """Where ``--pretrained`` took the starting weights from (the model's default pretrained weights, for
    the GAM models this project's own Hub release), or None for a run from scratch."""
    if not config['pretrained']:
        return None
    cfg = timm.models.get_pretrained_cfg(config['model'])
    return (cfg and (cfg.hf_hub_id or cfg.url)) or "timm's default weights"


def _retrieval_features(config: dict) -> str:
    return 'pooled features' if config.get('retrieval_features') == 'pooled' else "embedding head's output"


def _initial_weights(config: dict) -> str:
    """Where training started: from scratch, or warm from the weights ``pretrained=True`` loaded."""
    source = _warm_start_source(config)
    if source is None:
        return 'from scratch (no ImageNet weights)'
    return (f"warm-started from the weights `timm.create_model('{config['model']}', pretrained=True)` loaded "
            f'when training began (`{source}` as it stood then), so the epochs and minutes below are this '
            "run's alone")


def _unchanged_weights_paragraph(config: dict, source_training: str | None) -> str:
    """The Training section of a release that took no training step: which weights it re-releases, and how
    those were trained, quoted from the card of their own release where the folder held it."""
    source = _warm_start_source(config)
    how = ('(the first row of "Earlier releases" above is the same weights as they were compared before). '
           'How they were trained, as the card of that release gave it (its figures are of the features '
           'that release compared):\n\n'
           + '\n'.join(f'> {line}'.rstrip() for line in source_training.splitlines()) + '\n'
           if source_training else '. How they were trained is not recorded here: see that release.\n')
    return (f"**Not trained further**: these are the weights `timm.create_model('{config['model']}', "
            f'pretrained=True)` loaded (`{source}` as it stood then), unchanged, released again to be '
            f'compared by their {_retrieval_features(config)} {how}')


def training_section(card: str) -> str | None:
    """The body of a model card's ``## Training`` section, or None when it has none."""
    match = re.search(r'^## Training\n(.*?)(?=^## )', card, re.MULTILINE | re.DOTALL)
    return match.group(1).strip() if match else None


def _epochs(state) -> str:
    """Epochs trained, with the steps of the epoch a time budget stopped in."""
    if not state.step_in_epoch:
        return f'{state.epoch} epochs'
    return f'{state.epoch} epochs and {state.step_in_epoch} steps'


def _curve_section(state) -> str:
    """The run's evaluations against training minutes: those after its stages and the timed ones
    (``--eval-every-min``), when there are two or more, so a reader sees whether it was still rising."""
    records = sorted(state.history['stages'] + state.history.get('timed', []),
                     key=lambda r: r.get('train_minutes', 0))
    records = [r for r in records if 'mAP' in r and 'train_minutes' in r and 'epoch' in r]
    if len(records) < 2:
        return ''
    rows = '\n'.join(f'| {r["train_minutes"]:.1f} | {r["epoch"]:.1f} | {r["stage"]} | {r["num_clusters"]:,} '
                     f'| {r["rank1"]:.1f} | {r["mAP"]:.1f} |' for r in records)
    return ('\nThe training run\'s own evaluations on the same query/gallery split, by training minutes '
            '(evaluations not counted):\n\n| minutes | epoch | stage | clusters | rank-1 | mAP |\n'
            f'|---|---|---|---|---|---|\n{rows}\n')


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}[dtype]


def _embedding_description(model_name: str, embed_dim: int, head_dim: int, pooled: bool) -> str:
    if not pooled:
        return f"timm's `{model_name}` whose classifier outputs a {embed_dim}-d embedding"
    return (f"the {embed_dim}-d pooled features of timm's `{model_name}` (`num_classes=0`: the {head_dim}-d "
            'embedding head that the losses trained is left out, and retrieval compares the features it '
            'reads, as self-supervised learning keeps the representation before its projection head)')


def _parameters_row(params: int, head_params: int, pooled: bool) -> str:
    if pooled:
        return f'{params:,} (the training head left out)'
    return f'{params:,} ({params - head_params:,} without the embedding layer)'


def model_card(loaded: LoadedEmbedder, repo_id: str, *, metrics: dict | None, measured_by_publish: bool,
               dtype: torch.dtype = torch.float32, hardware: str | None = None,
               baseline: dict | None = None, earlier: list[dict] = (),
               source_training: str | None = None) -> str:
    """The ``README.md`` of a Hub folder: what the model is, how to use it, data and licence, the recipe
    command, what was measured (beside the colour histogram ``baseline`` on the same split, when given;
    the ``earlier`` releases of the same folder below, as :func:`earlier_releases` reads them), size and
    cost, how it was trained (for weights released again without a training step, ``source_training``:
    the Training section of their own release's card), its limitations and the paper to cite."""
    checkpoint = loaded.checkpoint
    config, state = checkpoint.config, checkpoint.state
    model_name, embed_dim = checkpoint.model_name, loaded.embed_dim
    pooled = loaded.retrieval_features == 'pooled'  # released without the head the losses trained
    what = _embedding_description(model_name, embed_dim, checkpoint.embed_dim, pooled)
    num_train_images = len(state.cluster_labels)
    height, width = loaded.image_size
    backbone = loaded.backbone
    params = sum(p.numel() for p in backbone.parameters())
    embedding_params = sum(p.numel() for p in backbone.get_classifier().parameters())
    gmacs = count_gmacs(backbone, loaded.image_size)
    stages = state.history['stages']
    clusters = int(state.cluster_labels.max()) + 1  # where training stopped, maybe after its last stage
    outliers = int((state.cluster_labels < 0).sum())
    outlier_note = f' ({outliers:,} images in none: DBSCAN\'s outliers)' if outliers else ''
    last = checkpoint.last_evaluation() or (stages[-1] if stages else {})
    finished = state.stage > config['stages']
    trained_on, licence = _data_description(config, num_train_images)
    extra_settings = settings_without_flag(config)
    extra = f'\nSettings without a command-line flag, not at their default: `{extra_settings}`.\n' \
        if extra_settings else ''
    # a merge after the last evaluation changes the clusters: that evaluation's purity is then of others
    purity = last.get('cluster_purity') if last.get('num_clusters') == clusters else None
    purity_line = (f' Their purity against the file-name identities (a diagnostic the training never sees) '
                   f'is {purity:.3f}.') if purity is not None else ''
    budget = config.get('time_budget_min')
    if finished:
        progress = 'the full schedule'
    elif budget is not None and state.train_seconds >= budget * 60:
        progress = (f'stopped by its time budget of {budget:g} training minutes, '
                    f'{_stage_of(state.stage, config["stages"])}')
    else:
        progress = f'an unfinished run: {len(stages)} of {config["stages"] + 1} stages completed'
    hardware_line = hardware or f'device setting `{config["device"]}` (the checkpoint does not record more)'
    small_input = (f'- Trained at {height}x{width}, far below the paper\'s 256x128: expect much lower '
                   'accuracy than the paper reports, and feed images at this size (timm\'s data config '
                   'does).\n'
                   if height * width < 256 * 128 else '')
    if config['pretrained'] and state.steps == 0:
        training = _unchanged_weights_paragraph(config, source_training)
    else:
        training = f"""Trained on {trained_on}, {_initial_weights(config)},
with {_objective(config)}. {progress.capitalize()}: {_epochs(state)} in all, ending
with {clusters:,} clusters of {num_train_images:,} training images{outlier_note}.{purity_line} Training took
{_format_hours(state.elapsed_s)} of wall time (evaluations included; {state.train_seconds / 60:.0f} minutes
without them) on {hardware_line}.
{_curve_section(state)}"""
    tag = repo_id.split('/')[-1]
    data_folder = _data_folder(config['data_root'])
    research_only = _research_only(data_folder)
    metadata = card_data(tag, metrics, data_folder, research_only)
    return with_metadata(metadata, f"""# {tag}

A person re-identification embedding: {what},
trained **without identity labels** by the IDL + ACL recipe of Nikhal & Riggan, "Unsupervised
Attention Based Instance Discriminative Learning for Person Re-Identification" (WACV 2021), as implemented
in timm-gam. Compare people by the Euclidean distance of the L2-normalised embeddings.

## Usage

{INSTALL}
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
These weights: {release_summary(checkpoint)}.
{baseline_paragraph(baseline)}{_earlier_section(earlier)}
Reproduce with `python recipes/unsup_reid.py --eval-only --pretrained --model {model_name} --data-root DATA`
(DATA: the data set's folder; the embedding and input sizes come from the weights).

## Model

| | |
|---|---|
| architecture | `{model_name}`, {embed_dim}-d embedding (`num_classes={loaded.backbone.num_classes}`) |
| input | 3x{height}x{width}, ImageNet mean/std, bilinear resize of the whole crop |
| parameters | {_parameters_row(params, embedding_params, pooled)} |
| GMACs | {gmacs:.2f} at {height}x{width} (convolutions and matrix products, FlopCounterMode) |
| weights | `model.safetensors`, {dtype_name(dtype)} |

## Training

{training}
The exact command (a run interrupted and continued adds `--resume`; DATA is the data set's folder):

```bash
{recipe_commands(config, state, data_root='DATA', output=_card_output(config))}
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

## Citation

{CITATION}""")


def release_summary(checkpoint: TrainingCheckpoint) -> str:
    """One line naming a release among its predecessors: how long it trained, at what size, on what loss."""
    config, state = checkpoint.config, checkpoint.state
    height, width = config['image_size']
    size = f'{height}x{width}'
    if checkpoint.image_size != (height, width):  # a resolution schedule switched the size at the end
        final_height, final_width = checkpoint.image_size
        epochs = config['final_size_epochs']
        size += f' then {final_height}x{final_width} for the last {epochs} epoch{"s" if epochs > 1 else ""}'
    source = _warm_start_source(config)
    if source and state.steps == 0:
        features = _retrieval_features(config)
        return f'`{source}` unchanged (no training step), {size}, compared by their {features}'
    warm = f', warm-started from `{source}`' if source else ''
    return (f'{_epochs(state)}, {state.train_seconds / 60:.0f} training minutes, {size}, `{config["loss"]}`'
            f'{warm}')


def earlier_releases(card: str) -> list[dict]:
    """The releases a new card of the same Hub folder keeps as rows, newest first: the old ``card``'s own
    figures (labelled by its "These weights:" line, or for cards written before it, by the epochs and
    minutes of its Training section) and the rows of its own earlier-releases table."""
    try:
        own = _table_row(card)
    except AttributeError:  # no results table: nothing measured to keep
        return []
    label = re.search(r'^These weights: (.+)\.$', card, re.MULTILINE)
    if label:
        own['release'] = label.group(1)
    else:
        epochs = re.search(r'(\d+ epochs(?: and \d+ steps)?) in all', card)
        minutes = re.search(r'(\d+) minutes\s+without them', card)
        own['release'] = ', '.join(filter(None, [epochs and epochs.group(1),
                                                 minutes and f'{minutes.group(1)} training minutes']))
    rows = [own]
    if EARLIER_HEADING in card:
        table = card.split(EARLIER_HEADING, 1)[1].split('\n## ', 1)[0]
        for line in re.findall(r'^\| (?!release \||---)(.+) \|$', table, re.MULTILINE):
            release, *figures = line.split(' | ')
            rows.append({'release': release, **dict(zip(METRIC_KEYS, map(float, figures), strict=True))})
    return rows


def _earlier_section(earlier: list[dict]) -> str:
    if not earlier:
        return ''
    rows = '\n'.join(f'| {r["release"]} | ' + ' | '.join(f'{r[k]:.1f}' for k in METRIC_KEYS) + ' |'
                     for r in earlier)
    return (f'\n{EARLIER_HEADING}\n\nThe weights this folder held before, newest first, as their own cards '
            'gave them (measured when they were published, on the same split):\n\n'
            f'| release | rank-1 | rank-5 | rank-10 | mAP |\n|---|---|---|---|---|\n{rows}\n')


def _table_row(text: str) -> dict:
    """The rank-1/5/10 and mAP row of the first results table in ``text``."""
    row = re.search(r'\| rank-1 \| rank-5 \| rank-10 \| mAP \|\n\|[-|]+\|\n\|([^\n]+)\|', text)
    return dict(zip(METRIC_KEYS, map(float, row.group(1).split('|')), strict=True))


def refresh_release_card(folder: str | os.PathLike, baseline: dict | None) -> str:
    """A committed release's card brought to the current template without its checkpoint: the metadata
    rebuilt from the card's own results table and data folder, the shared sections added.
    The figures are the card's; nothing is measured again."""
    folder = Path(folder)
    text = (folder / 'README.md').read_text()
    body = text.split('---\n', 2)[2] if text.startswith('---\n') else text
    found = re.search(r'data folder `([^`]+)`', body)
    data_folder = found.group(1) if found else None
    research_only = _research_only(data_folder)
    metrics = _table_row(body)
    if '## Citation' not in body:
        body = re.sub(r'in stage (\d+) of (\d+)', lambda m: _stage_of(int(m[1]), int(m[2]) - 1), body)
        table_end = body.index('\n', body.index('| rank-1 | rank-5 |') + 1)
        table_end = body.index('\n', body.index('\n', table_end + 1) + 1)
        body = (body[:table_end + 1] + split_note(data_folder) + baseline_paragraph(baseline)
                + body[table_end + 1:])
        body = body.replace('## Usage\n\n', f'## Usage\n\n{INSTALL}\n', 1)
        body = body.rstrip('\n') + f'\n\n## Citation\n\n{CITATION}'
    card = with_metadata(card_data(folder.name, metrics, data_folder, research_only), body)
    (folder / 'README.md').write_text(card)
    return card
