"""Label-free training of a re-ID embedding: the staged schedule of the paper (Sec. 4, 5.2).

Stage 0 trains with every image its own cluster (|M| = n). Each later stage first embeds the whole
training set once, merges the closest clusters bottom-up (Eq. 9-10, :func:`merge_clusters`), rebuilds
the memory bank from the new clusters, then trains again with the total loss of Eq. 11,
``J = J_idl + J_acl``. After every stage the query/gallery split (when labelled) is evaluated with
the Market-1501 protocol and a checkpoint is written; a run resumes from its last checkpoint. With a
time budget (``time_budget_min``) training stops part-way through an epoch once the budget is spent,
evaluates and saves there; ``eval_every_min`` adds evaluations at fixed training minutes. The training
clock (:class:`TrainingClock`) stops while the run evaluates.

Identity labels are read from file names for evaluation and for the cluster-purity diagnostic only:
training, clustering and the memory never see them. Neither the order of the file list nor the file
names matter: the training list is put in content order (:func:`~timm_gam.reid.datasets.in_content_order`)
before the seeded shuffle draws batches from it, centroids come from embeddings, merging depends on
distances.

Everything random in an epoch depends on (seed, epoch) alone and everything else is restored from the
checkpoint as saved, so a run killed at any moment and resumed ends exactly where an uninterrupted
one does.
"""
import hashlib
import inspect
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .cameras import camera_centred
from .checkpoint import CheckpointError, RunState, TrainingCheckpoint
from .clustering import DISTANCES, SIZE_UPDATES, cluster_purity, merge_clusters
from .datasets import LAYOUTS, ReidImageDataset, ReidSplits, prepare_data
from .decoded_images import augment_batch, decode_images, draw_augmentations, normalise
from .distributed import all_gather_keeping_grad, all_gather_rows, broadcast_tensor, init_process_group
from .embedding import (
    autocast_dtype,
    create_embedder,
    extract_embeddings,
    load_checkpoint_weights,
    resolve_device,
)
from .evaluation import evaluate_split, format_metrics, has_labels
from .fast_path import compile_for_training, describe_training_path, training_autocast_dtype
from .losses import acl_loss, idl_loss, instance_memory_loss
from .memory import ClusterMemory
from .run_log import RunLog
from .synthetic import make_synthetic_reid
from .transforms import TwoViews, build_eval_transform, build_train_transform

__all__ = ['TrainConfig', 'Trainer', 'train', 'DATA_PATHS', 'IDL_NEGATIVES', 'LOSSES']

LOSSES = ('idl', 'acl', 'idl+acl')
# 'files': decode and augment each image in DataLoader workers (torchvision); 'decoded': decode the
# training set once onto the training device and augment it there in batches (reid/decoded_images.py)
DATA_PATHS = ('files', 'decoded')
# the negatives of the instance loss: 'batch', Eq. 4-6's other views of the batch; 'memory', a memory of
# every training image (losses.instance_memory_loss, Wu et al. 2018)
IDL_NEGATIVES = ('batch', 'memory')


@dataclass
class TrainConfig:
    """Everything a run depends on; saved into each checkpoint and the run folder.

    Every field is checked when the config is made, so a bad value stops the run before the warm-up,
    not at the first merge an hour later.
    """
    output: str = 'runs/unsup_reid'
    data_root: str | None = None  # None: generate the embedded synthetic set into output/data
    layout: str = 'auto'  # one of datasets.LAYOUTS
    model: str = 'gam_resnet50_g4'  # any timm model name
    pretrained: bool = False
    embed_dim: int = 2048
    image_size: tuple[int, int] = (256, 128)  # (height, width), paper 5.2
    loss: str = 'idl+acl'  # one of LOSSES
    # the first stage whose training uses ACL: 0 is the paper (ACL of singletons from the first step), 1
    # an IDL-only warm-up, so that the first merge clusters features IDL alone has shaped (beyond the paper)
    acl_from_stage: int = 0
    temperature: float = 0.1  # tau of Eq. 4, 5 and 7
    idl_negatives: str = 'batch'  # one of IDL_NEGATIVES; 'memory' is beyond the paper
    memory_momentum: float = 0.5
    batch_size: int = 32
    lr: float | None = None  # None: 0.1 from scratch, 0.01 from pretrained weights (paper 5.2)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epochs: int = 25  # the learning rate drops by lr_decay every this many epochs
    lr_decay: float = 0.1
    warmup_epochs: int = 20  # stage 0: singletons, before the first merge
    epochs_per_stage: int = 2
    stages: int = 16  # merge stages after stage 0
    merge_percent: float = 0.04  # of the training images, merged per stage (paper: 4%)
    size_penalty: float = 0.005  # lambda of Eq. 10
    cluster_distance: str = 'euclidean'  # Eq. 9; 'sqeuclidean' as BUC's code (clustering.DISTANCES)
    size_update: str = 'step'  # 'step' (BUC) or 'refresh' after each union (clustering.SIZE_UPDATES)
    max_cluster_size: int | None = None
    camera_centred_merge: bool = False  # merge on per-camera-centred embeddings (reid/cameras.py)
    target_clusters: int = 1  # label-free stop: merging ends at this many clusters
    seed: int = 0
    workers: int = 2
    data_path: str = 'files'  # one of DATA_PATHS
    device: str = 'auto'
    amp: bool = True  # bf16 autocast of the training step where the device computes bf16 (reid/fast_path.py)
    channels_last: bool = False
    compile: bool = False  # torch.compile the training step where a compiler is (reid/fast_path.py)
    eval_batch_size: int = 128
    log_every: int = 50  # steps between 'step' lines in log.jsonl (and on stdout without a progress bar)
    # the time-to-accuracy protocol (docs/results.md): minutes of training, evaluations not counted
    time_budget_min: float | None = None  # stop (evaluate, save) once training has run this long
    eval_every_min: float | None = None  # evaluate query/gallery each time training passes a multiple
    synthetic: dict = field(default_factory=dict)  # arguments of make_synthetic_reid

    def __post_init__(self):
        self.image_size = tuple(self.image_size)
        for name, allowed in (('layout', LAYOUTS), ('loss', LOSSES), ('cluster_distance', DISTANCES),
                              ('size_update', SIZE_UPDATES), ('data_path', DATA_PATHS),
                              ('idl_negatives', IDL_NEGATIVES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {getattr(self, name)!r}')
        for name, low, high, what in _RANGES:
            value = getattr(self, name)
            if value is not None and not (low <= value <= high):
                raise ValueError(f'{name} must be {what}, got {value!r}')
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f'image_size must be (height, width) in pixels, got {self.image_size}')
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


_INF = float('inf')
# (field, lowest, highest, how the error says it); None passes where the field allows it
_RANGES = (
    ('embed_dim', 1, _INF, 'a positive integer'), ('temperature', 1e-8, _INF, 'positive'),
    ('acl_from_stage', 0, _INF, 'zero or more'),
    ('memory_momentum', 0, 1 - 1e-12, 'in [0, 1)'), ('batch_size', 1, _INF, 'a positive integer'),
    ('lr', 1e-12, _INF, 'positive'), ('momentum', 0, 1 - 1e-12, 'in [0, 1)'),
    ('weight_decay', 0, _INF, 'zero or positive'), ('lr_decay_epochs', 1, _INF, 'a positive integer'),
    ('lr_decay', 1e-12, 1, 'in (0, 1]'), ('warmup_epochs', 0, _INF, 'zero or more'),
    ('epochs_per_stage', 1, _INF, 'a positive integer'), ('stages', 0, _INF, 'zero or more'),
    ('merge_percent', 1e-12, 1, 'a fraction in (0, 1]'), ('size_penalty', 0, _INF, 'zero or positive'),
    ('max_cluster_size', 1, _INF, 'a positive integer'), ('target_clusters', 1, _INF, 'a positive integer'),
    ('workers', 0, _INF, 'zero or more'), ('eval_batch_size', 1, _INF, 'a positive integer'),
    ('log_every', 1, _INF, 'a positive integer'), ('time_budget_min', 1e-9, _INF, 'positive minutes'),
    ('eval_every_min', 1e-9, _INF, 'positive minutes'),
)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Step decay of paper 5.2: the base rate, divided by 10 every ``lr_decay_epochs`` epochs."""
    return config.base_lr * config.lr_decay ** (epoch // config.lr_decay_epochs)


def stage_epochs(config: TrainConfig, stage: int) -> int:
    return config.warmup_epochs if stage == 0 else config.epochs_per_stage


def merges_for_stage(config: TrainConfig, num_images: int, num_clusters: int) -> int:
    """Paper 5.2: 4% of the images merged per stage, never below ``target_clusters`` clusters."""
    wanted = max(1, int(round(config.merge_percent * num_images)))
    return max(0, min(wanted, num_clusters - config.target_clusters))


def seed_for(*keys: int) -> int:
    """A 32-bit seed that depends on ``keys`` alone (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


class SeededPerImage(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's generator seeded by (seed, epoch, index) first.

    The random augmentations of an image then depend on the image and the epoch alone, not on the
    process (torchrun rank) or DataLoader worker that loads it nor on what it loaded before: a
    two-process run augments its global batch as one process does, whatever ``--workers`` is.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        torch.manual_seed(seed_for(self.seed, self.epoch, index))
        return self.dataset[index]


class DecodedBatches:
    """The batches of an epoch on the ``decoded`` data path: views made on the training device.

    Yields what a DataLoader of :class:`SeededPerImage` yields, ``((anchor_views, augmented_views),
    indices)``; each image's augmentation is drawn from (seed, epoch, image) as there.
    """

    def __init__(self, decoded: torch.Tensor, indices: list[int], batch_size: int, seed: int, epoch: int):
        self.decoded, self.indices, self.batch_size = decoded, indices, batch_size
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = torch.tensor(self.indices[start:start + self.batch_size])
            images = self.decoded[index.to(self.decoded.device)]
            uniforms = draw_augmentations([seed_for(self.seed, self.epoch, i) for i in index.tolist()])
            yield (normalise(images), augment_batch(images, uniforms)), index


class TrainingClock:
    """Seconds of training, paused while the run evaluates: the clock of a time budget.

    DAWNBench's protocol counts the time to reach an accuracy without the time spent measuring it, so
    evaluations of query/gallery stop the clock; embedding and merging the training set are part of
    the method and count.
    """

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before, self.started = seconds_before, time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def minutes(self) -> float:
        return self.seconds() / 60

    @contextmanager
    def paused(self):
        stopped_at = self.seconds()
        try:
            yield
        finally:
            self.seconds_before, self.started = stopped_at, time.perf_counter()


class Trainer:
    """The staged schedule for one process; under torchrun, one such object per rank."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.output = Path(config.output)
        self.checkpoint_path = self.output / 'checkpoint.pt'
        self.group = init_process_group(resolve_device(config.device))
        self.device = self.group.device
        if self.group.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        self.splits = self._prepare_data_once()
        self.can_evaluate = has_labels(self.splits.query) and has_labels(self.splits.gallery)

        torch.manual_seed(config.seed)
        self.model = create_embedder(config.model, config.embed_dim, pretrained=config.pretrained)
        self.model.to(self.device, memory_format=_memory_format(config))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.base_lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, nesterov=True)
        self.train_model = self.model
        if self.group.is_distributed:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        compiled = 'eager'
        if config.compile:  # evaluation and clustering embed with the eager self.model: no recompiles
            self.train_model, compiled = compile_for_training(self.train_model, self.device)
        self.autocast = training_autocast_dtype(config.amp, self.device)
        self.training_path = describe_training_path(self.device, self.autocast, compiled,
                                                    config.channels_last)
        self.log = RunLog(self.output) if self.group.is_main else None
        self.started = time.time()
        self.clock = TrainingClock()
        self.decoded_train = None
        if config.data_path == 'decoded':
            self.decoded_train = decode_images(self.splits.train, config.image_size).to(self.device)

    def _prepare_data_once(self) -> ReidSplits:
        # rank 0 generates the synthetic set (if any) before the other ranks read it
        if not self.group.is_main:
            self.group.barrier()
        config = self.config
        root = config.data_root
        if root is None:
            root = make_synthetic_reid(self.output / 'data' / 'synthetic', seed=config.seed,
                                       **config.synthetic)
        splits = prepare_data(root, config.layout)
        if self.group.is_main:
            self.group.barrier()
        if not splits.train:
            raise ValueError(f'no readable training images under {splits.root}')
        if config.camera_centred_merge and any(im.camid < 0 for im in splits.train):
            raise ValueError(f'--camera-centred-merge needs the camera of every training image, and the '
                             f'file names under {splits.root} do not give it: use a Market-1501 or '
                             'DukeMTMC-reID layout, or train without the option')
        return splits

    # -- the schedule ---------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict:
        self._report('training_path', ', '.join(f'{k} {v}' for k, v in self.training_path.items()),
                     **self.training_path)
        state = self._resume() if resume and self.checkpoint_path.exists() else self._fresh_state()
        self.clock = TrainingClock(state.train_seconds)
        while state.stage <= self.config.stages and not self._out_of_time():
            if state.epoch_in_stage == 0 and state.step_in_epoch == 0:
                self._begin_stage(state)
            while state.epoch_in_stage < stage_epochs(self.config, state.stage) and not self._out_of_time():
                self._train_epoch(state)
                if state.epoch_in_stage < stage_epochs(self.config, state.stage):
                    self._save(state)
            if state.epoch_in_stage == stage_epochs(self.config, state.stage):
                self._end_stage(state)
                self._save(state)
        if self._out_of_time():
            self._stop_at_budget(state)
        return self._finish(state)

    def _out_of_time(self) -> bool:
        budget = self.config.time_budget_min
        return budget is not None and self._decided_by_main(self.clock.minutes() >= budget)

    def _decided_by_main(self, decision: bool) -> bool:
        """Rank 0's answer on every rank: clocks differ between processes, collectives must not."""
        if not self.group.is_distributed:
            return decision
        return bool(broadcast_tensor(torch.tensor([decision], device=self.device), self.group).item())

    def _fresh_state(self) -> RunState:
        state = RunState(cluster_labels=torch.arange(len(self.splits.train)))  # |M| = n: singletons
        if self.group.is_main:
            (self.output / 'config.json').write_text(json.dumps(asdict(self.config), indent=2) + '\n')
        if self.can_evaluate:
            state.history['untrained'] = before = self.evaluate()
            self._report('eval', f'untrained: {format_metrics(before)}', stage=-1, **before)
        return state

    def _resume(self) -> RunState:
        saved = TrainingCheckpoint.load(self.checkpoint_path, device=self.device)
        if saved.state is None or saved.optimizer is None:
            raise CheckpointError(f'{self.checkpoint_path} holds weights only, no training state to resume: '
                                  'start afresh in a new --output')
        load_checkpoint_weights(self.model, saved, self.checkpoint_path, self.config.model)
        self.optimizer.load_state_dict(saved.optimizer)
        state = saved.state
        if saved.train_images != self._train_images_fingerprint():
            # cluster labels and memory slots are keyed by position: another list would scramble them
            raise CheckpointError(f'{self.checkpoint_path} was trained on another list of images '
                                  f'({len(state.cluster_labels)} of them, the data has '
                                  f'{len(self.splits.train)}, or in another order): resume with the same '
                                  '--data-root and code version, or start afresh in a new --output')
        self._report('resume', f'{self.checkpoint_path}: stage {state.stage}, epoch {state.epoch}',
                     stage=state.stage, epoch=state.epoch)
        return state

    def _begin_stage(self, state: RunState):
        """Embed the training set; from stage 1 on, merge clusters first (Eq. 9-10); rebuild M."""
        uses_instance_memory = 'idl' in self.config.loss and self.config.idl_negatives == 'memory'
        uses_acl = 'acl' in self.config.loss and state.stage >= self.config.acl_from_stage
        if not uses_acl and not (uses_instance_memory and state.instance_memory is None):
            return  # in-batch IDL alone needs neither clusters nor memory
        embeddings = self.embed(self.splits.train)
        if uses_instance_memory and state.instance_memory is None:  # built once, then kept up to date
            state.instance_memory = ClusterMemory.from_embeddings(
                embeddings, torch.arange(len(embeddings)), self.config.memory_momentum).to(self.device)
        if not uses_acl:
            return
        if state.stage > 0:
            num_clusters = int(state.cluster_labels.max()) + 1
            num_merges = merges_for_stage(self.config, len(self.splits.train), num_clusters)
            start = time.perf_counter()
            features = embeddings
            if self.config.camera_centred_merge:
                features = camera_centred(embeddings, [im.camid for im in self.splits.train])
            labels = torch.as_tensor(merge_clusters(
                features, state.cluster_labels.numpy(), num_merges, self.config.size_penalty,
                distance=self.config.cluster_distance, size_update=self.config.size_update,
                max_cluster_size=self.config.max_cluster_size), dtype=torch.long)
            state.cluster_labels = broadcast_tensor(labels, self.group)  # rank 0's clustering rules
            self._report('merge', None, stage=state.stage, merges=num_merges,
                         num_clusters=int(state.cluster_labels.max()) + 1,
                         seconds=time.perf_counter() - start)
        state.memory = ClusterMemory.from_embeddings(embeddings, state.cluster_labels,
                                                     self.config.memory_momentum).to(self.device)

    def _train_epoch(self, state: RunState):
        """Train the rest of the epoch (all of it, unless a time budget stopped it part-way before)."""
        for group in self.optimizer.param_groups:
            group['lr'] = learning_rate(self.config, state.epoch)
        # whatever draws from torch's generator in this process (the loader's worker seeds, dropout in a
        # model that has it) then depends on (seed, epoch) only, as in an uninterrupted run
        torch.manual_seed(seed_for(self.config.seed, state.epoch))
        desc = f'stage {state.stage} epoch {state.epoch_in_stage + 1}'
        try:
            stats = self._train_one_epoch(self._train_loader(state.epoch, state.step_in_epoch), state, desc)
        except FloatingPointError as e:
            kept = (f'the last good checkpoint {self.checkpoint_path} is kept'
                    if self.checkpoint_path.exists() else 'no checkpoint was written yet')
            raise FloatingPointError(f'{desc}: {e}. Training stopped; {kept} '
                                     '(lower --lr, then --resume).') from e
        if state.step_in_epoch < stats['steps_in_epoch']:
            return  # the time budget ran out: the epoch continues when a resume gives it more
        state.epoch += 1
        state.epoch_in_stage += 1
        state.step_in_epoch = 0
        losses = f'loss {stats["loss"]:.4f} (idl {stats["idl"]:.4f} acl {stats["acl"]:.4f})'
        self._report('epoch', f'{desc}: {losses} {stats["images_per_s"]:.1f} img/s', stage=state.stage,
                     epoch=state.epoch, lr=learning_rate(self.config, state.epoch - 1), **stats)

    def _end_stage(self, state: RunState):
        record = self._evaluation_record(state)
        num_clusters = record['num_clusters']
        state.history['stages'].append(record)
        self._report('stage', f'stage {state.stage}: {num_clusters} clusters, {format_metrics(record)}',
                     **record)
        reached_target = num_clusters <= self.config.target_clusters
        state.stage = self.config.stages + 1 if reached_target else state.stage + 1
        state.epoch_in_stage = 0

    def _evaluation_record(self, state: RunState) -> dict:
        """Where the run stands (training minutes, steps, clusters, purity) and, when labelled, its
        query/gallery metrics, measured with the training clock stopped."""
        num_clusters = int(state.cluster_labels.max()) + 1
        record = {'stage': state.stage, 'epoch': state.epoch + state.step_in_epoch / self._steps_per_epoch(),
                  'steps': state.steps, 'num_clusters': num_clusters, 'train_minutes': self.clock.minutes(),
                  'wall_time_s': state.elapsed_s + time.time() - self.started}
        train_pids = np.array([im.pid for im in self.splits.train])
        if (train_pids >= 0).all():  # a diagnostic: file-name labels never reach training
            record['cluster_purity'] = cluster_purity(state.cluster_labels.numpy(), train_pids)
        if self.can_evaluate:
            with self.clock.paused():
                record.update(self.evaluate())
        return record

    def _timed_evaluation(self, state: RunState, mark_min: float | None = None):
        """An evaluation at ``mark_min``, a multiple of ``eval_every_min`` training minutes, or (None)
        where the time budget ended training."""
        record = self._evaluation_record(state)
        if mark_min is not None:
            record['mark_min'] = mark_min
        state.history['timed'].append(record)
        self._report('timed_eval', f'{record["train_minutes"]:.1f} training min, stage {state.stage}: '
                     f'{record["num_clusters"]} clusters, {format_metrics(record)}', **record)

    def _stop_at_budget(self, state: RunState):
        """The budget is spent: evaluate the weights as they are (unless that was just done), save."""
        evaluated = state.history['stages'] + state.history['timed']
        if not evaluated or evaluated[-1].get('steps') != state.steps:
            self._timed_evaluation(state)
        self._report('budget', f'time budget of {self.config.time_budget_min} training minutes reached '
                     f'at stage {state.stage}, epoch {state.epoch} + {state.step_in_epoch} steps; a --resume '
                     'with a larger --time-budget-min continues from here',
                     train_minutes=self.clock.minutes(), steps=state.steps)
        self._save(state)

    def _finish(self, state: RunState) -> dict:
        evaluated = state.history['stages'] + state.history['timed']
        final = dict(max(evaluated, key=lambda r: r.get('steps', -1))) if evaluated else {}
        final.update(model=self.config.model, loss=self.config.loss, num_train_images=len(self.splits.train),
                     wall_time_s=state.elapsed_s + time.time() - self.started,
                     untrained=state.history.get('untrained'), history=state.history['stages'],
                     timed=state.history['timed'])
        if self.log:
            self.log.write_metrics(final)
        return final

    # -- one epoch ------------------------------------------------------------------------------

    def _steps_per_epoch(self) -> int:
        """Batches per epoch, as the loader's sampler (drop_last, one share per rank) makes them."""
        n, world = len(self.splits.train), self.group.world_size
        return (n // world) // max(1, min(self.config.batch_size, n) // world)

    def _train_loader(self, epoch: int, skip_steps: int = 0):
        """This rank's batches of the epoch: ``((anchor_views, augmented_views), image_indices)``."""
        config, group = self.config, self.group
        # the shuffle and the augmentations depend on (seed, epoch) only, so a resumed run draws the
        # batches an uninterrupted one would; rank r takes every world_size-th image of one global
        # permutation, so the ranks' shares of a step make up the single-process batch
        sampler = DistributedSampler(range(len(self.splits.train)), num_replicas=group.world_size,
                                     rank=group.rank, shuffle=True, seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
        share = max(1, min(config.batch_size, len(self.splits.train)) // group.world_size)
        # an epoch a time budget stopped part-way goes on with the batches it had not reached yet
        indices = list(sampler)[skip_steps * share:]
        if self.decoded_train is not None:
            return DecodedBatches(self.decoded_train, indices, share, config.seed, epoch)
        transform = TwoViews(build_eval_transform(config.image_size),
                             build_train_transform(config.image_size))
        dataset = SeededPerImage(ReidImageDataset(self.splits.train, transform), config.seed, epoch)
        return DataLoader(dataset, batch_size=share, sampler=indices, drop_last=True,
                          num_workers=config.workers, pin_memory=self.device.type == 'cuda')

    def _train_one_epoch(self, loader: DataLoader, state: RunState, desc: str) -> dict:
        """One pass over the shuffled training set; mean losses and images per second."""
        config, device, group = self.config, self.device, self.group
        use_idl = 'idl' in config.loss
        use_acl = 'acl' in config.loss and state.stage >= config.acl_from_stage
        instance_memory = use_idl and config.idl_negatives == 'memory'
        amp_dtype = self.autocast
        self.train_model.train()
        totals = {'loss': 0.0, 'idl': 0.0, 'acl': 0.0}
        seen, steps, start = 0, 0, time.perf_counter()
        window_seen, window_start = 0, start  # the step lines' rate: the last log_every steps only
        eval_every = config.eval_every_min
        bar = tqdm(loader, desc=desc, unit='batch', dynamic_ncols=True, leave=False,
                   disable=not (group.is_main and _progress_enabled()))
        for (anchor_view, augmented_view), index in bar:
            views = torch.cat([anchor_view, augmented_view]).to(device, non_blocking=True,
                                                                 memory_format=_memory_format(config))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                embeddings = self.train_model(views)
            embeddings = embeddings.float()  # the losses' similarities / tau need fp32's precision
            local_batch = len(anchor_view)
            # losses over the global batch, identical on every rank (see all_gather_keeping_grad)
            anchor = all_gather_keeping_grad(embeddings[:local_batch], group)
            augmented = all_gather_keeping_grad(embeddings[local_batch:], group)
            images = all_gather_rows(index.to(device), group)
            labels = all_gather_rows(state.cluster_labels[index].to(device), group)
            if instance_memory:
                idl = instance_memory_loss(torch.cat([anchor, augmented]), images.repeat(2),
                                           state.instance_memory.centroids, config.temperature)
            else:
                idl = idl_loss(anchor, augmented, config.temperature) if use_idl else anchor.new_zeros(())
            acl = (acl_loss(torch.cat([anchor, augmented]), labels.repeat(2), state.memory.centroids,
                            config.temperature) if use_acl else anchor.new_zeros(()))
            loss = idl + acl  # Eq. 11
            if not torch.isfinite(loss):
                raise FloatingPointError(f'the loss became {loss.item()} '
                                         f'(idl {idl.item()}, acl {acl.item()})')
            self.optimizer.zero_grad(set_to_none=True)
            (loss * group.world_size).backward()
            self.optimizer.step()
            if use_acl:
                state.memory.update(anchor.detach(), labels)  # the optimised features update M (Sec. 4.3)
            if instance_memory:
                state.instance_memory.update(anchor.detach(), images)

            seen += len(anchor)
            window_seen += len(anchor)
            steps += 1
            state.steps += 1
            state.step_in_epoch += 1
            for name, value in (('loss', loss), ('idl', idl), ('acl', acl)):
                totals[name] += value.item()
            images_per_s = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f'{loss.item():.3f}', img_s=f'{images_per_s:.1f}')
            if steps % config.log_every == 0:
                now = time.perf_counter()
                # the rate of the last log_every steps: the epoch's mean would hide a first step that compiled
                images_per_s, window_seen, window_start = window_seen / (now - window_start), 0, now
                eta_min = (len(loader) - steps) * len(anchor) / max(images_per_s, 1e-9) / 60
                # the progress bar already shows this; without one (logs, CI), print it
                message = None if not bar.disable else (
                    f'{desc}: step {steps}/{len(loader)} loss {loss.item():.4f} {images_per_s:.1f} img/s, '
                    f'{eta_min:.1f} min left in the epoch')
                self._report('step', message, stage=state.stage, epoch=state.epoch, step=steps,
                             loss=loss.item(), images_per_s=images_per_s)
            next_mark = eval_every and eval_every * (1 + sum('mark_min' in r for r in state.history['timed']))
            if next_mark and self._decided_by_main(self.clock.minutes() >= next_mark):
                self._timed_evaluation(state, next_mark)
            if self._out_of_time():
                break
        # a finite loss can still have overflowing gradients: the next step's loss would catch that,
        # but after the epoch's last step the weights go to evaluation and the checkpoint instead
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise FloatingPointError("the weights became non-finite in the epoch's last step")
        elapsed = time.perf_counter() - start
        return {**{k: v / max(steps, 1) for k, v in totals.items()},
                'images_per_s': seen / max(elapsed, 1e-9), 'seconds': elapsed,
                'steps_in_epoch': self._steps_per_epoch()}

    # -- embeddings, evaluation, bookkeeping ----------------------------------------------------

    def embed(self, images) -> torch.Tensor:
        """Embeddings of ``images`` in order; under torchrun each rank embeds a contiguous share."""
        share = np.array_split(np.arange(len(images)), self.group.world_size)[self.group.rank]
        config = self.config
        mine = extract_embeddings(self.model, [images[i] for i in share],
                                  build_eval_transform(config.image_size), batch_size=config.eval_batch_size,
                                  num_workers=config.workers,
                                  device=self.device, amp_dtype=autocast_dtype(config.amp, self.device))
        return all_gather_rows(mine.to(self.device), self.group).cpu()

    def evaluate(self) -> dict:
        return evaluate_split(self.embed(self.splits.query), self.embed(self.splits.gallery),
                              self.splits.query, self.splits.gallery)

    def _save(self, state: RunState):
        if not self.group.is_main:
            return
        state.elapsed_s, self.started = state.elapsed_s + time.time() - self.started, time.time()
        state.train_seconds = self.clock.seconds()
        TrainingCheckpoint(config=asdict(self.config), model_name=self.config.model,
                           embed_dim=self.config.embed_dim, model=self.model.backbone.state_dict(),
                           optimizer=self.optimizer.state_dict(), state=state,
                           train_images=self._train_images_fingerprint()).save(self.checkpoint_path)

    def _train_images_fingerprint(self) -> str:
        """Which training images, in which order, the saved cluster labels refer to."""
        names = '\n'.join(os.path.relpath(im.path, self.splits.root) for im in self.splits.train)
        return hashlib.sha1(names.encode()).hexdigest()

    def _report(self, event: str, message: str | None, **fields):
        if not self.group.is_main:
            return
        self.log.write(event, **fields)
        if message:
            print(f'[{event}] {message}', flush=True)


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Run (or resume) the whole staged schedule; returns the final metrics."""
    return Trainer(config).run(resume=resume)


def _memory_format(config: TrainConfig):
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _progress_enabled() -> bool:
    """Progress bars on a terminal only: redirected to a file or captured they are just carriage-return noise.

    ``TIMM_GAM_PROGRESS=1`` or ``=0`` overrides the guess either way.
    """
    setting = os.environ.get('TIMM_GAM_PROGRESS')
    if setting is not None:
        return setting != '0'
    return sys.stderr.isatty()
