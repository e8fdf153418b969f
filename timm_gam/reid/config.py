"""What a training run depends on: :class:`TrainConfig`, checked when made, and the schedule it implies.

Every field is plain data, saved into each checkpoint and the run folder; a field with ``flag(...)``
metadata is also a command-line flag of ``recipes/unsup_reid.py`` (:func:`add_config_flags`), so the
help text and the choices live beside the field they describe.
"""
import argparse
import inspect
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from .clustering import DISTANCES, SIZE_UPDATES
from .datasets import LAYOUTS
from .embedding import RETRIEVAL_FEATURES
from .synthetic import make_synthetic_reid
from .transforms import AUGMENTATION, AugmentationSpec

__all__ = ['CLUSTERINGS', 'DATA_PATHS', 'FIELDS_WITHOUT_FLAG', 'IDL_NEGATIVES', 'LOSSES', 'TrainConfig',
           'add_config_flags', 'config_changes', 'learning_rate', 'merges_for_stage', 'stage_epochs',
           'total_epochs', 'training_image_size', 'weights_image_size']

LOSSES = ('idl', 'acl', 'idl+acl')
# 'files': decode and augment each image in DataLoader workers (torchvision); 'decoded': decode the
# training set once onto the training device and augment it there in batches (reid/decoded_images.py)
DATA_PATHS = ('files', 'decoded')
# how each stage after the warm-up forms its clusters: 'bottom-up', the paper's merging (Eq. 9-10,
# reid/clustering.py); 'dbscan', DBSCAN on k-reciprocal Jaccard distances from scratch at every stage,
# its outliers left out of ACL (reid/density_clustering.py); 'identities', the file-name identities as the
# clusters: a supervised upper bound that says how much better clusters could do, never label-free
CLUSTERINGS = ('bottom-up', 'dbscan', 'identities')
# the negatives of the instance loss: 'batch', Eq. 4-6's other views of the batch; 'memory', a memory of
# every training image instead (losses.instance_memory_loss, Wu et al. 2018); 'batch+memory', both terms
IDL_NEGATIVES = ('batch', 'memory', 'batch+memory')


def flag(help: str | None = None, **argparse_options) -> dict:
    """Field metadata that makes the field a command-line flag (``--field-name``) with this help."""
    return {'flag': {'help': help, **argparse_options}}


def _option(default, help=None, **argparse_options):
    return field(default=default, metadata=flag(help, **argparse_options))


@dataclass
class TrainConfig:
    """Everything a run depends on; saved into each checkpoint and the run folder.

    Every field is checked when the config is made, so a bad value stops the run before the warm-up,
    not at the first merge an hour later.
    """
    output: str = _option('runs/unsup_reid', 'run folder: checkpoint.pt, log.jsonl, metrics.json '
                                             '(with --eval-only: log.jsonl and metrics.json)')
    data_root: str | None = _option(None, 'Market-1501 / DukeMTMC-reID layout or a plain folder of images; '
                                          'omitted: the embedded synthetic set, generated into OUTPUT/data')
    layout: str = _option('auto', choices=LAYOUTS)
    model: str = _option('gam_resnet50_g4', 'any timm model name (default gam_resnet50_g4; on the synthetic '
                                            'set test_gam_resnet)')
    pretrained: bool = _option(False, 'start from (or, with --eval-only, evaluate) the pretrained weights '
                                      'of --model')
    embed_dim: int = _option(2048)
    image_size: tuple[int, int] = _option((256, 128), '(height, width) of the network input, paper 5.2',
                                          metavar=('H', 'W'))
    # a resolution schedule (beyond the paper): most epochs at the cheap image_size, the schedule's last
    # final_size_epochs at final_image_size; clustering, evaluation and the saved weights follow the size
    # the weights were last trained at (training_image_size, weights_image_size)
    final_image_size: tuple[int, int] | None = _option(None, '(height, width) of the last --final-size-'
                                                             'epochs epochs (a resolution schedule, beyond '
                                                             'the paper; docs/recipe.md)', metavar=('H', 'W'))
    final_size_epochs: int = _option(0, "epochs at the schedule's end trained at --final-image-size")
    loss: str = _option('idl+acl', choices=LOSSES)
    # the first stage whose training uses ACL: 0 is the paper (ACL of singletons from the first step), 1
    # an IDL-only warm-up, so that the first merge clusters features IDL alone has shaped (beyond the paper)
    acl_from_stage: int = _option(0, 'first stage trained with ACL: 0 the paper (from the first step), 1 an '
                                     'IDL-only warm-up (beyond the paper)')
    temperature: float = _option(0.1, 'tau of Eq. 4, 5 and 7')
    idl_negatives: str = _option('batch', "'batch': Eq. 4-6 (the batch's other views); 'memory': a memory "
                                          "of every training image instead (Wu et al. 2018); 'batch+memory': "
                                          'Eq. 4-6 plus the memory term; both beyond the paper',
                                 choices=IDL_NEGATIVES)
    memory_momentum: float = 0.5
    greyscale_view: float = _option(0.0, "probability that IDL's augmented view is made greyscale (the "
                                    'anchor keeps its colour), so features cannot rest on colour alone; not '
                                    'in the paper (docs/recipe.md)')
    # beyond the paper: a mean teacher (Tarvainen & Valpola 2017; MMT, Ge et al. ICLR 2020), the weights'
    # moving average, gives the features that are clustered, evaluated and released (docs/recipe.md)
    mean_teacher_decay: float = _option(0.0, 'decay of a moving average of the weights (a mean teacher, '
                                             'e.g. 0.999 per step) whose features are clustered, evaluated '
                                             'and released; 0 (default, the paper): no mean teacher')
    # beyond the paper: retrieval with the pooled features the head reads, as self-supervised learning keeps
    # the representation before its projection head (SimCLR, Chen et al. 2020, Sec. 4.2; docs/recipe.md)
    retrieval_features: str = _option('head', "what evaluation and the released model compare: 'head', the "
                                              "embedding phi the losses train (the paper); 'pooled', the "
                                              'pooled features before it (released without the head)',
                                      choices=RETRIEVAL_FEATURES)
    batch_size: int = _option(32)
    lr: float | None = _option(None, 'default 0.1 from scratch, 0.01 with --pretrained (paper 5.2)')
    momentum: float = 0.9
    weight_decay: float = _option(5e-4)
    lr_decay_epochs: int = _option(25, 'the learning rate drops by lr_decay every this many epochs')
    lr_decay: float = 0.1
    # beyond the paper: the rate's drops at chosen epochs (torch's MultiStepLR), e.g. one early in the
    # clustering stage as SpCL and Cluster Contrast drop it after 40% of theirs (docs/recipe.md)
    lr_milestones: tuple[int, ...] = _option((), 'epochs after which the rate drops by lr_decay, in place of '
                                                 'the drop every --lr-decay-epochs (beyond the paper)',
                                             metavar='EPOCH')
    warmup_epochs: int = _option(20, 'epochs of stage 0, before the first merge')
    epochs_per_stage: int = _option(2)
    stages: int = _option(16, 'merge stages after stage 0')
    clustering: str = _option('bottom-up', "'bottom-up': the paper's merging (Eq. 9-10); 'dbscan': DBSCAN "
                                           'on k-reciprocal Jaccard distances, from scratch at each stage, '
                                           'outliers left out of ACL (beyond the paper; docs/recipe.md); '
                                           "'identities': the file-name identities, a supervised upper bound "
                                           'for diagnosis that cannot be released',
                              choices=CLUSTERINGS)
    dbscan_eps: float = _option(0.6, 'with --clustering dbscan: the largest Jaccard distance of two '
                                     'neighbours')
    dbscan_min_samples: int = _option(4, 'with --clustering dbscan: the neighbours that make an image a '
                                         'core')
    reliability_gap: float = _option(0.0, "with --clustering dbscan: SpCL's self-paced criterion, which "
                                          'keeps only the clusters that DBSCAN at eps +- this gap neither '
                                          'merges nor splits (beyond the paper; SpCL: 0.02; docs/recipe.md); '
                                          '0: every cluster')
    camera_proxies: bool = _option(False, "ACL against one proxy per cluster and camera, with CAP's "
                                          'intra- and inter-camera losses in place of Eq. 7-8 (Wang et al. '
                                          'AAAI 2021; beyond the paper, docs/recipe.md)')
    merge_percent: float = _option(0.04, 'fraction of the training images merged per stage (paper: 0.04)')
    size_penalty: float = _option(0.005, 'lambda of Eq. 10 (default 0.005)')
    cluster_distance: str = _option('euclidean', "Eq. 9; 'sqeuclidean' as BUC's code", choices=DISTANCES)
    size_update: str = _option('step', "'step' (BUC) or 'refresh' after each union", choices=SIZE_UPDATES)
    max_cluster_size: int | None = _option(None)
    camera_centred_merge: bool = _option(False, "merge clusters on embeddings with each camera's mean "
                                                'removed (reid/cameras.py, beyond the paper)')
    target_clusters: int = _option(1, 'label-free stop: end training once merging reaches this many clusters')
    seed: int = _option(0)
    workers: int = _option(2)
    data_path: str = _option('files', "'files': DataLoader workers decode and augment each image "
                                      "(torchvision); 'decoded': the training set decoded once onto the "
                                      'device, augmented there in batches', choices=DATA_PATHS)
    device: str = _option('auto', 'auto, cpu, cuda, cuda:1, ...')
    amp: bool = _option(True, 'bf16 autocast of the training step where the device computes bf16 '
                              '(reid/fast_path.py)')
    channels_last: bool = _option(False)
    compile: bool = _option(False, 'torch.compile the training step (the cpu preset does): minutes to '
                                   'compile once, then faster steps; needs a C++ compiler on a CPU')
    eval_batch_size: int = 128
    keep_checkpoints: tuple[int, ...] = _option((), 'epochs whose checkpoint is also kept as '
                                                    'checkpoint-epochNNN.pt, a point to branch other runs '
                                                    'from (docs/recipe.md)', metavar='EPOCH')
    log_every: int = 50  # steps between 'step' lines in log.jsonl (and on stdout without a progress bar)
    # the time-to-accuracy protocol (docs/results.md): minutes of training, evaluations not counted
    time_budget_min: float | None = _option(None, 'stop after this many minutes of training (evaluations '
                                                  'not counted), evaluate and save; --resume with a larger '
                                                  'budget continues the run')
    eval_every_min: float | None = _option(None, 'evaluate query/gallery every this many training minutes '
                                                 '(the time-to-accuracy curve, "timed_eval" lines of '
                                                 'log.jsonl)')
    synthetic: dict = field(default_factory=dict)  # arguments of make_synthetic_reid

    def __post_init__(self):
        self.image_size = tuple(self.image_size)
        self.lr_milestones, self.keep_checkpoints = tuple(self.lr_milestones), tuple(self.keep_checkpoints)
        for name, allowed in (('layout', LAYOUTS), ('loss', LOSSES), ('cluster_distance', DISTANCES),
                              ('size_update', SIZE_UPDATES), ('data_path', DATA_PATHS),
                              ('idl_negatives', IDL_NEGATIVES), ('clustering', CLUSTERINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {getattr(self, name)!r}')
        for name, low, high, what in _RANGES:
            value = getattr(self, name)
            if value is not None and not (low <= value <= high):
                raise ValueError(f'{name} must be {what}, got {value!r}')
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f'image_size must be (height, width) in pixels, got {self.image_size}')
        if self.final_image_size is not None:
            self.final_image_size = tuple(self.final_image_size)
            if len(self.final_image_size) != 2 or min(self.final_image_size) < 1:
                raise ValueError('final_image_size must be (height, width) in pixels, got '
                                 f'{self.final_image_size}')
        if self.camera_proxies and not self.uses_acl:
            raise ValueError(f'--camera-proxies changes ACL, and --loss {self.loss} has none: use --loss '
                             'idl+acl (or acl), or drop --camera-proxies')
        if (self.final_image_size is None) != (self.final_size_epochs == 0):
            raise ValueError('a resolution schedule needs both --final-image-size H W and '
                             f'--final-size-epochs N (N > 0), got {self.final_image_size} and '
                             f'{self.final_size_epochs}: give both, or neither')
        if self.final_size_epochs > total_epochs(self):
            raise ValueError(f'final_size_epochs is {self.final_size_epochs}, but the schedule has only '
                             f'{total_epochs(self)} epochs (warm-up + stages x epochs per stage): give at '
                             'most that many')
        for name in ('lr_milestones', 'keep_checkpoints'):
            epochs = getattr(self, name)
            if any(type(e) is not int or e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
                raise ValueError(f'{name} must be epochs counted from 1, rising, each once (e.g. 25 44), '
                                 f'got {list(epochs)}')
        if not self.model or not self.output:
            raise ValueError('model and output must be named')
        if self.device != 'auto':
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:1', ..., "
                                 f'got {self.device!r}') from e
        known = set(inspect.signature(make_synthetic_reid).parameters) - {'root', 'seed'}
        if unknown := sorted(set(self.synthetic) - known):
            raise ValueError(f'synthetic takes {sorted(known)}, not {unknown}')

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.01 if self.pretrained else 0.1

    @property
    def uses_acl(self) -> bool:
        return 'acl' in self.loss

    @property
    def uses_instance_memory(self) -> bool:
        """Whether the instance term meets a memory of every training image."""
        return 'idl' in self.loss and 'memory' in self.idl_negatives

    @property
    def uses_batch_negatives(self) -> bool:
        """Whether the instance term includes Eq. 4-6, the batch's other views as negatives."""
        return 'idl' in self.loss and 'batch' in self.idl_negatives

    @property
    def augmentation(self) -> AugmentationSpec:
        """Section 5.2's augmentations of IDL's augmented view, with this run's options beyond them."""
        return replace(AUGMENTATION, greyscale_prob=self.greyscale_view)

    def acl_in_stage(self, stage: int) -> bool:
        return self.uses_acl and stage >= self.acl_from_stage


_INF = float('inf')
# (field, lowest, highest, how the error says it); None passes where the field allows it
_RANGES = (
    ('embed_dim', 1, _INF, 'a positive integer'), ('temperature', 1e-8, _INF, 'positive'),
    ('acl_from_stage', 0, _INF, 'zero or more'), ('final_size_epochs', 0, _INF, 'zero or more'),
    ('memory_momentum', 0, 1 - 1e-12, 'in [0, 1)'), ('mean_teacher_decay', 0, 1 - 1e-12, 'in [0, 1)'),
    ('greyscale_view', 0, 1, 'a probability in [0, 1]'),
    ('batch_size', 1, _INF, 'a positive integer'),
    ('lr', 1e-12, _INF, 'positive'), ('momentum', 0, 1 - 1e-12, 'in [0, 1)'),
    ('weight_decay', 0, _INF, 'zero or positive'), ('lr_decay_epochs', 1, _INF, 'a positive integer'),
    ('lr_decay', 1e-12, 1, 'in (0, 1]'), ('warmup_epochs', 0, _INF, 'zero or more'),
    ('epochs_per_stage', 1, _INF, 'a positive integer'), ('stages', 0, _INF, 'zero or more'),
    ('merge_percent', 1e-12, 1, 'a fraction in (0, 1]'), ('dbscan_eps', 1e-9, 1, 'a distance in (0, 1]'),
    ('dbscan_min_samples', 1, _INF, 'a positive integer'), ('reliability_gap', 0, 1, 'a distance in [0, 1]'),
    ('size_penalty', 0, _INF, 'zero or positive'),
    ('max_cluster_size', 1, _INF, 'a positive integer'), ('target_clusters', 1, _INF, 'a positive integer'),
    ('workers', 0, _INF, 'zero or more'), ('eval_batch_size', 1, _INF, 'a positive integer'),
    ('log_every', 1, _INF, 'a positive integer'), ('time_budget_min', 1e-9, _INF, 'positive minutes'),
    ('eval_every_min', 1e-9, _INF, 'positive minutes'),
)


# the fields a run can set only in code or a preset, not on the recipe's command line
FIELDS_WITHOUT_FLAG = tuple(f.name for f in fields(TrainConfig) if 'flag' not in f.metadata)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A ``--field-name`` flag for every field with ``flag`` metadata, default ``None`` (not given).

    The type comes from the annotation: a bool is ``--x`` / ``--no-x``, a ``tuple[int, int]`` takes two
    numbers, a ``tuple[int, ...]`` one or more, ``X | None`` takes an ``X``.
    """
    for config_field in fields(TrainConfig):
        if 'flag' not in config_field.metadata:
            continue
        options = dict(config_field.metadata['flag'])
        kind = _without_none(config_field.type)
        if kind is bool:
            options['action'] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            item_types = typing.get_args(kind)
            options.update(type=item_types[0], nargs='+' if item_types[-1] is Ellipsis else len(item_types))
        elif 'choices' not in options:
            options['type'] = kind
        parser.add_argument('--' + config_field.name.replace('_', '-'), default=None, **options)


def _without_none(annotation):
    if isinstance(annotation, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def config_changes(saved: dict, config: TrainConfig) -> dict:
    """``{field: [saved value, new value]}`` for each field a resume changes, the run's folders aside (the
    data's fingerprint checks those). A field the saved config lacks (written before the field existed)
    counts as its default, what that run used."""
    defaults, new = asdict(TrainConfig()), asdict(config)
    changes = {}
    for name, value in new.items():
        before = saved.get(name, defaults[name])
        if name not in ('output', 'data_root') and _plain(before) != _plain(value):
            changes[name] = [_plain(before), _plain(value)]
    return changes


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The rate of epoch ``epoch`` (from 0). Step decay of paper 5.2: the base rate divided by 10 every
    ``lr_decay_epochs`` epochs; with ``lr_milestones``, divided once after each of those epochs instead."""
    if config.lr_milestones:
        drops = sum(epoch >= milestone for milestone in config.lr_milestones)
    else:
        drops = epoch // config.lr_decay_epochs
    return config.base_lr * config.lr_decay ** drops


def stage_epochs(config: TrainConfig, stage: int) -> int:
    return config.warmup_epochs if stage == 0 else config.epochs_per_stage


def total_epochs(config: TrainConfig) -> int:
    """The schedule's length: the warm-up, then every stage (a label-free stop may end it earlier)."""
    return config.warmup_epochs + config.stages * config.epochs_per_stage


def training_image_size(config: TrainConfig, epoch: int) -> tuple[int, int]:
    """The input size epoch ``epoch`` (from 0) trains at: ``image_size``, or ``final_image_size`` for the
    schedule's last ``final_size_epochs`` epochs."""
    if config.final_size_epochs and epoch >= total_epochs(config) - config.final_size_epochs:
        return config.final_image_size
    return config.image_size


def weights_image_size(config: TrainConfig, epochs_done: int, steps_into_epoch: int = 0) -> tuple[int, int]:
    """The size the weights were last trained at, after ``epochs_done`` epochs and ``steps_into_epoch``
    steps of the next: the size everything that embeds with them uses (clustering, evaluation, the saved
    checkpoint). Untrained weights count as ``image_size``'s."""
    return training_image_size(config, epochs_done if steps_into_epoch else epochs_done - 1)


def merges_for_stage(config: TrainConfig, num_images: int, num_clusters: int) -> int:
    """Paper 5.2: 4% of the images merged per stage, never below ``target_clusters`` clusters."""
    wanted = max(1, int(round(config.merge_percent * num_images)))
    return max(0, min(wanted, num_clusters - config.target_clusters))
