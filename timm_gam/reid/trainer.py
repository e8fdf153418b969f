"""Label-free training of a re-ID embedding: the staged schedule of the paper (Sec. 4, 5.2).

Stage 0 trains with every image its own cluster (|M| = n). Each later stage first embeds the whole
training set once, merges the closest clusters bottom-up (or, an option, clusters it afresh with DBSCAN)
and rebuilds the memory bank from the new clusters (:mod:`~timm_gam.reid.stages`, Eq. 9-10), then trains
again: :meth:`Trainer.train_step` is one
step of the total loss of Eq. 11, ``J = J_idl + J_acl``, on the batches of
:func:`~timm_gam.reid.batches.train_batches`. After every stage the query/gallery split (when labelled)
is evaluated with the Market-1501 protocol and a checkpoint is written; a run resumes from its last
checkpoint. With a time budget (``time_budget_min``) training stops part-way through an epoch once the
budget is spent, evaluates and saves there; ``eval_every_min`` adds evaluations at fixed training
minutes. The training clock (:class:`TrainingClock`) stops while the run evaluates. What a run depends
on is :class:`~timm_gam.reid.config.TrainConfig`.

Identity labels are read from file names for evaluation and for the cluster-purity diagnostic only:
training, clustering and the memory never see them, except in ``clustering='identities'``, a supervised
upper bound that takes them as the clusters and cannot be released. Neither the order of the file list
nor the file names matter: the training list is put in content order
(:func:`~timm_gam.reid.datasets.in_content_order`) before the seeded shuffle draws batches from it,
centroids come from embeddings, merging depends on distances.

With ``mean_teacher_decay`` (beyond the paper) a moving average of the weights, updated after every
step, is the :attr:`Trainer.inference_model`: its embeddings are clustered and evaluated, and it is what
the checkpoint's inference weights hold, while the optimiser trains :attr:`Trainer.model`.

Everything random in an epoch depends on (seed, epoch) alone and everything else is restored from the
checkpoint as saved, so a run killed at any moment and resumed ends exactly where an uninterrupted
one does.
"""
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from .batches import DecodedBatches, SeededPerImage, seed_for, steps_per_epoch, train_batches
from .camera_proxies import CameraProxies, camera_proxy_loss
from .checkpoint import CheckpointError, RunState, TrainingCheckpoint, keep_epoch_copy
from .clustering import cluster_purity
from .config import (
    DATA_PATHS,
    IDL_NEGATIVES,
    LOSSES,
    TrainConfig,
    config_changes,
    learning_rate,
    merges_for_stage,
    stage_epochs,
    training_image_size,
    weights_image_size,
)
from .datasets import ReidSplits, prepare_data
from .decoded_images import decode_images
from .distributed import all_gather_keeping_grad, all_gather_rows, broadcast_tensor, init_process_group
from .embedding import (
    ReidEmbedder,
    autocast_dtype,
    create_embedder,
    extract_embeddings,
    load_checkpoint_weights,
    resolve_device,
)
from .evaluation import evaluate_split, format_metrics, has_labels
from .fast_path import compile_for_training, describe_training_path, nesterov_sgd, training_autocast_dtype
from .losses import acl_loss, idl_loss, instance_memory_loss
from .run_log import RunLog
from .stages import begin_stage, build_missing_memories, memories_missing, stage_needs_embeddings
from .synthetic import data_root_or_synthetic
from .transforms import build_eval_transform

# the names below TrainConfig moved to reid/config.py and reid/batches.py; they stay importable from here
__all__ = ['TrainConfig', 'Trainer', 'TrainingClock', 'train', 'DATA_PATHS', 'IDL_NEGATIVES', 'LOSSES',
           'DecodedBatches', 'SeededPerImage', 'learning_rate', 'merges_for_stage', 'seed_for',
           'stage_epochs']


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
        # the mean teacher starts as the weights are now; a resume loads its saved state over it
        self.mean_teacher = (ModelEmaV3(self.model, decay=config.mean_teacher_decay)
                             if config.mean_teacher_decay else None)
        self.optimizer = nesterov_sgd(self.model.parameters(), self.device, lr=config.base_lr,
                                      momentum=config.momentum, weight_decay=config.weight_decay)
        self.train_model = self.model
        if self.group.is_distributed:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        compiled = 'eager'
        if config.compile:  # evaluation and clustering embed with the eager self.model: no recompiles
            self.train_model, compiled = compile_for_training(self.train_model, self.device)
        self.autocast = training_autocast_dtype(config.amp, self.device)
        self.training_path = describe_training_path(self.device, self.autocast, compiled,
                                                    config.channels_last, self.optimizer)
        self.log = RunLog(self.output) if self.group.is_main else None
        self.started = time.time()
        self.clock = TrainingClock()
        self.decoded_train = None  # the decoded data path's training set, at the size of decoded_size
        self.decoded_size = None
        self.train_cameras = torch.tensor([im.camid for im in self.splits.train])
        self.proxies, self.proxies_of = None, None  # camera_proxies: the proxies of the labels proxies_of

    def _prepare_data_once(self) -> ReidSplits:
        # rank 0 generates the synthetic set (if any) before the other ranks read it
        if not self.group.is_main:
            self.group.barrier()
        config = self.config
        root = data_root_or_synthetic(config.data_root, self.output / 'data' / 'synthetic', seed=config.seed,
                                      **config.synthetic)
        splits = prepare_data(root, config.layout)
        if self.group.is_main:
            self.group.barrier()
        if not splits.train:
            raise ValueError(f'no readable training images under {splits.root}')
        if config.clustering == 'identities' and any(im.pid < 0 for im in splits.train):
            raise ValueError(f"--clustering identities needs every training image's identity, and the file "
                             f'names under {splits.root} do not give it: use a Market-1501 or DukeMTMC-reID '
                             'layout')
        needs_cameras = config.camera_centred_merge or config.camera_proxies
        if needs_cameras and any(im.camid < 0 for im in splits.train):
            flag = '--camera-centred-merge' if config.camera_centred_merge else '--camera-proxies'
            raise ValueError(f'{flag} needs the camera of every training image, and the '
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
            elif memories_missing(self.config, state):
                embeddings = self.embed(self.splits.train, self._weights_size(state))
                build_missing_memories(self.config, state, embeddings, self.train_cameras, self.group)
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
            state.history['untrained'] = before = self.evaluate(self.config.image_size)
            start = 'pretrained, before training' if self.config.pretrained else 'untrained'
            self._report('eval', f'{start}: {format_metrics(before)}', stage=-1, **before)
        return state

    def _resume(self) -> RunState:
        saved = TrainingCheckpoint.load(self.checkpoint_path, device=self.device)
        if saved.state is None or saved.optimizer is None:
            raise CheckpointError(f'{self.checkpoint_path} holds weights only, no training state to resume: '
                                  'start afresh in a new --output')
        path, name = self.checkpoint_path, self.config.model
        load_checkpoint_weights(self.model, saved, path, name, weights=saved.model)
        if self.mean_teacher is not None:  # a run that kept none starts its teacher from its weights now
            load_checkpoint_weights(self.mean_teacher.module, saved, path, name,
                                    weights=saved.mean_teacher or saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        for group in self.optimizer.param_groups:  # the saved group carries the saving code's SGD form
            group['fused'] = self.optimizer.defaults['fused']
        state = saved.state
        if saved.train_images != self._train_images_fingerprint():
            # cluster labels and memory slots are keyed by position: another list would scramble them
            raise CheckpointError(f'{self.checkpoint_path} was trained on another list of images '
                                  f'({len(state.cluster_labels)} of them, the data has '
                                  f'{len(self.splits.train)}, or in another order): resume with the same '
                                  '--data-root and code version, or start afresh in a new --output')
        self._report('resume', f'{self.checkpoint_path}: stage {state.stage}, epoch {state.epoch}',
                     stage=state.stage, epoch=state.epoch)
        if changes := config_changes(saved.config, self.config):
            # the run's provenance: what a card must say to reproduce it (model_card.recipe_commands)
            state.history.setdefault('resumed_with', []).append(
                {'epoch': state.epoch, 'step_in_epoch': state.step_in_epoch, 'steps': state.steps,
                 'changes': changes})
        if 'camera_proxies' in changes:
            state.memory = None  # M's rows were clusters and are now proxies, or the reverse: built anew
        return state

    def _begin_stage(self, state: RunState):
        """Embed the training set and re-cluster it (reid/stages.py), where the stage needs that."""
        if not stage_needs_embeddings(self.config, state):
            return
        # only the supervised upper bound is given the file-name identities
        identities = [im.pid for im in self.splits.train] if self.config.clustering == 'identities' else None
        merged = begin_stage(self.config, state, self.embed(self.splits.train, self._weights_size(state)),
                             self.train_cameras, self.group, identities)
        if merged:
            self._report('merge', None, **merged)

    def _train_epoch(self, state: RunState):
        """Train the rest of the epoch (all of it, unless a time budget stopped it part-way before)."""
        for group in self.optimizer.param_groups:
            group['lr'] = learning_rate(self.config, state.epoch)
        # whatever draws from torch's generator in this process (the loader's worker seeds, dropout in a
        # model that has it) then depends on (seed, epoch) only, as in an uninterrupted run
        torch.manual_seed(seed_for(self.config.seed, state.epoch))
        desc = f'stage {state.stage} epoch {state.epoch_in_stage + 1}'
        config, group = self.config, self.group
        image_size = training_image_size(config, state.epoch)
        if image_size != weights_image_size(config, state.epoch, state.step_in_epoch):
            height, width = image_size
            self._report('image_size', f'epoch {state.epoch + 1}: training at {height}x{width} from here '
                         '(the resolution schedule)', epoch=state.epoch, image_size=list(image_size))
        batches = train_batches(self.splits.train, image_size=image_size, batch_size=config.batch_size,
                                seed=config.seed, epoch=state.epoch, skip_steps=state.step_in_epoch,
                                rank=group.rank, world_size=group.world_size,
                                decoded=self._decoded_training_set(image_size),
                                workers=config.workers, pin_memory=self.device.type == 'cuda',
                                augmentation=config.augmentation)
        try:
            stats = self._train_batches(batches, state, desc)
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
        # the label-free stop of merging; DBSCAN's count rises and falls with the features, it ends nothing
        reached_target = self.config.clustering == 'bottom-up' and num_clusters <= self.config.target_clusters
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
        labels = state.cluster_labels.numpy()
        clustered = labels >= 0  # all but DBSCAN's outliers
        if self.config.clustering == 'dbscan':
            record['outliers'] = int((~clustered).sum())
        if (train_pids >= 0).all() and clustered.any():  # a diagnostic: file-name labels never reach training
            record['cluster_purity'] = cluster_purity(labels[clustered], train_pids[clustered])
        if self.can_evaluate:
            with self.clock.paused():
                record.update(self.evaluate(self._weights_size(state)))
        return record

    def _timed_evaluation(self, state: RunState, mark_min: float | None = None):
        """An evaluation at ``mark_min``, a multiple of ``eval_every_min`` training minutes, or (None)
        where the time budget ended training."""
        record = self._evaluation_record(state)
        if mark_min is not None:
            record['mark_min'] = mark_min
            state.marks_evaluated += 1
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
        return steps_per_epoch(len(self.splits.train), self.config.batch_size, self.group.world_size)

    def _train_batches(self, batches, state: RunState, desc: str) -> dict:
        """:meth:`train_step` on each batch, with the meters, the timed evaluations and the time budget
        around it; the epoch's mean losses and images per second."""
        config = self.config
        self.train_model.train()
        meter = EpochMeter()
        bar = tqdm(batches, desc=desc, unit='batch', dynamic_ncols=True, leave=False,
                   disable=not (self.group.is_main and _progress_enabled()))
        for batch in bar:
            losses = self.train_step(batch, state)
            state.steps += 1
            state.step_in_epoch += 1
            meter.add(losses)
            bar.set_postfix(loss=f'{losses["loss"].item():.3f}', img_s=f'{meter.images_per_s():.1f}')
            if meter.steps % config.log_every == 0:
                self._log_step(meter, losses, state, desc, len(batches), show=bar.disable)
            next_mark = config.eval_every_min and config.eval_every_min * (1 + state.marks_evaluated)
            if next_mark and self._decided_by_main(self.clock.minutes() >= next_mark):
                self._timed_evaluation(state, next_mark)
            if self._out_of_time():
                break
        # a finite loss can still have overflowing gradients: the next step's loss would catch that,
        # but after the epoch's last step the weights go to evaluation and the checkpoint instead
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise FloatingPointError("the weights became non-finite in the epoch's last step")
        return {**meter.summary(), 'steps_in_epoch': self._steps_per_epoch()}

    def train_step(self, batch, state: RunState) -> dict:
        """One optimiser step of Eq. 11, ``J = J_idl + J_acl``, on ``((anchor_views, augmented_views),
        image_indices)``; then the optimised features update the memory (Sec. 4.3). Returns the losses
        and the global batch size."""
        config, group = self.config, self.group
        (anchor_view, augmented_view), index = batch
        views = torch.cat([anchor_view, augmented_view]).to(self.device, non_blocking=True,
                                                             memory_format=_memory_format(config))
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            embeddings = self.train_model(views)
        embeddings = embeddings.float()  # the losses' similarities / tau need fp32's precision
        # the losses are over the global batch, identical on every rank (see all_gather_keeping_grad)
        anchor = all_gather_keeping_grad(embeddings[:len(anchor_view)], group)
        augmented = all_gather_keeping_grad(embeddings[len(anchor_view):], group)
        images = all_gather_rows(index.to(self.device), group)
        labels = all_gather_rows(state.cluster_labels[index].to(self.device), group)
        tau, use_acl = config.temperature, config.acl_in_stage(state.stage)
        both_views, no_loss = torch.cat([anchor, augmented]), anchor.new_zeros(())
        idl = idl_loss(anchor, augmented, tau) if config.uses_batch_negatives else no_loss  # Eq. 4-6
        if config.uses_instance_memory:  # beyond the paper: every training image is a negative
            memory = state.instance_memory.centroids
            idl = idl + instance_memory_loss(both_views, images.repeat(2), memory, tau)
        if use_acl and config.camera_proxies:  # beyond the paper: M holds one proxy per cluster and camera
            proxies = self._camera_proxies(state)
            labels = all_gather_rows(proxies.labels[index.to(self.device)], group)
            cameras = all_gather_rows(self.train_cameras[index].to(self.device), group)
            acl = camera_proxy_loss(both_views, labels.repeat(2), cameras.repeat(2), proxies,
                                    state.memory.centroids, tau)
        else:
            acl = acl_loss(both_views, labels.repeat(2), state.memory.centroids, tau) if use_acl else no_loss
        loss = idl + acl  # Eq. 11, with ACL of Eq. 7-8
        if not torch.isfinite(loss):
            raise FloatingPointError(f'the loss became {loss.item()} (idl {idl.item()}, acl {acl.item()})')
        self.optimizer.zero_grad(set_to_none=True)
        (loss * group.world_size).backward()  # DDP averages gradients over ranks: the global batch's sum
        self.optimizer.step()
        if self.mean_teacher is not None:
            self.mean_teacher.update(self.model)
        if use_acl:
            state.memory.update(anchor.detach(), labels)
        if config.uses_instance_memory:
            state.instance_memory.update(anchor.detach(), images)
        return {'loss': loss, 'idl': idl, 'acl': acl, 'images': len(anchor)}

    def _camera_proxies(self, state: RunState) -> CameraProxies:
        """The proxies of the stage's clusters, made again whenever the cluster labels are new ones."""
        if self.proxies_of is not state.cluster_labels:
            proxies = CameraProxies.from_clusters(state.cluster_labels, self.train_cameras)
            self.proxies = proxies.to(self.device)
            self.proxies_of = state.cluster_labels
        return self.proxies

    def _log_step(self, meter: 'EpochMeter', losses: dict, state: RunState, desc: str, num_steps: int,
                  show: bool):
        # the rate of the last log_every steps: the epoch's mean would hide a first step that compiled
        images_per_s = meter.recent_images_per_s()
        eta_min = (num_steps - meter.steps) * losses['images'] / max(images_per_s, 1e-9) / 60
        loss = losses['loss'].item()
        # a progress bar already shows this; without one (logs, CI), print it
        message = (f'{desc}: step {meter.steps}/{num_steps} loss {loss:.4f} {images_per_s:.1f} img/s, '
                   f'{eta_min:.1f} min left in the epoch') if show else None
        self._report('step', message, stage=state.stage, epoch=state.epoch, step=meter.steps, loss=loss,
                     images_per_s=images_per_s)

    # -- embeddings, evaluation, bookkeeping ----------------------------------------------------

    def _weights_size(self, state: RunState) -> tuple[int, int]:
        return weights_image_size(self.config, state.epoch, state.step_in_epoch)

    def _decoded_training_set(self, image_size: tuple[int, int]) -> torch.Tensor | None:
        """The decoded data path's training set at ``image_size``, decoded again where the resolution
        schedule changes the size (None on the ``files`` path)."""
        if self.config.data_path != 'decoded':
            return None
        if self.decoded_size != image_size:
            self.decoded_train = None  # let the old size go before the new one is made
            self.decoded_train = decode_images(self.splits.train, image_size).to(self.device)
            self.decoded_size = image_size
        return self.decoded_train

    @property
    def inference_model(self) -> torch.nn.Module:
        """What clustering and evaluation embed with, and what the checkpoint's inference weights hold:
        the mean teacher where the run keeps one, else the trained model itself."""
        return self.model if self.mean_teacher is None else self.mean_teacher.module

    def embed(self, images, image_size: tuple[int, int], features: str = 'head') -> torch.Tensor:
        """Embeddings of ``images`` at ``image_size`` by :attr:`inference_model` (its head's output, or with
        ``features='pooled'`` the pooled features before it), in order; under torchrun each rank embeds a
        contiguous share."""
        share = np.array_split(np.arange(len(images)), self.group.world_size)[self.group.rank]
        config = self.config
        model = self.inference_model
        if features != 'head':
            model = ReidEmbedder(model.backbone, features)  # a view: the same weights, another output
        mine = extract_embeddings(model, [images[i] for i in share],
                                  build_eval_transform(image_size), batch_size=config.eval_batch_size,
                                  num_workers=config.workers,
                                  device=self.device, amp_dtype=autocast_dtype(config.amp, self.device))
        return all_gather_rows(mine.to(self.device), self.group).cpu()

    def evaluate(self, image_size: tuple[int, int]) -> dict:
        """Query/gallery retrieval with the features the run compares (``config.retrieval_features``);
        clustering always embeds with the head, whose output the losses train."""
        query, gallery = self.splits.query, self.splits.gallery
        features = self.config.retrieval_features
        return evaluate_split(self.embed(query, image_size, features),
                              self.embed(gallery, image_size, features), query, gallery)

    def _save(self, state: RunState):
        if not self.group.is_main:
            return
        state.elapsed_s, self.started = state.elapsed_s + time.time() - self.started, time.time()
        state.train_seconds = self.clock.seconds()
        TrainingCheckpoint(config=asdict(self.config), model_name=self.config.model,
                           embed_dim=self.config.embed_dim, model=self.model.backbone.state_dict(),
                           optimizer=self.optimizer.state_dict(), state=state,
                           train_images=self._train_images_fingerprint(),
                           trained_image_size=self._weights_size(state),
                           mean_teacher=self.mean_teacher and self.mean_teacher.module.backbone.state_dict()
                           ).save(self.checkpoint_path)
        if state.step_in_epoch == 0 and state.epoch in self.config.keep_checkpoints:
            kept = keep_epoch_copy(self.checkpoint_path, state.epoch)
            self._report('kept_checkpoint', f'epoch {state.epoch}: a copy of the checkpoint kept as {kept}',
                         epoch=state.epoch, path=str(kept))

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


class EpochMeter:
    """The sums of an epoch's steps: mean losses, images per second overall and since the last reading."""

    def __init__(self):
        self.totals = {'loss': 0.0, 'idl': 0.0, 'acl': 0.0}
        self.steps = self.seen = self.recent_seen = 0
        self.start = self.recent_start = time.perf_counter()

    def add(self, losses: dict):
        self.seen += losses['images']
        self.recent_seen += losses['images']
        self.steps += 1
        for name in self.totals:
            self.totals[name] += losses[name].item()

    def images_per_s(self) -> float:
        return self.seen / (time.perf_counter() - self.start)

    def recent_images_per_s(self) -> float:
        """Images per second since the previous call (or the epoch's start), and start a new window."""
        now = time.perf_counter()
        rate = self.recent_seen / (now - self.recent_start)
        self.recent_seen, self.recent_start = 0, now
        return rate

    def summary(self) -> dict:
        elapsed = time.perf_counter() - self.start
        return {**{k: v / max(self.steps, 1) for k, v in self.totals.items()},
                'images_per_s': self.seen / max(elapsed, 1e-9), 'seconds': elapsed}


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
