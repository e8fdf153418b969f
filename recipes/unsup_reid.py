"""Label-free person re-ID training and evaluation (Nikhal & Riggan, WACV 2021).

    python recipes/unsup_reid.py                                  # synthetic set, tiny GAM net, 2 CPU-min
    python recipes/unsup_reid.py --preset cpu --data-root ../shared/data/market1501-dev \\
        --output runs/g4-cpu                                      # real data, under an hour on 2 cores
    python recipes/unsup_reid.py --preset paper --data-root DATA --output runs/g4   # full size (GPU)
    python recipes/unsup_reid.py --output runs/g4 --resume        # continue a killed run as it was started
    python recipes/unsup_reid.py --eval-only --checkpoint runs/g4/checkpoint.pt --data-root DATA
    python recipes/unsup_reid.py --eval-only --pretrained --data-root DATA --output runs/eval-g4  # the Hub's
    python recipes/unsup_reid.py --preset smoke --model test_convnext   # the whole pipeline in a minute
    torchrun --standalone --nproc_per_node=2 recipes/unsup_reid.py ...  # DDP: nccl on GPUs, gloo on CPUs

`--eval-only` takes the embedding and input size from the weights (a flag that disagrees is an
error), reads only `query/` and `bounding_box_test/` of DATA, and writes `metrics.json` and
`log.jsonl` into `--output` (default runs/unsup_reid-eval).

Bad input (a missing data root, misnamed folders, a checkpoint of another model, a loss gone NaN)
ends with one `error: ...` line naming the path and the fix, and exit status 2.

The paper's ablation rows are one flag apart: `--loss acl --model resnet50` (BUC-style),
`--loss idl`, `--loss idl+acl`, `--model cbam_resnet50` (+CBAM), `--model acbam_resnet50`
(+A-CBAM), `--model gam_resnet50_g4` (+GAM, the default with --data-root). Any timm model name works.
"""
import argparse
import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

import timm_gam  # noqa: F401  (registers the GAM and CBAM models with timm)
from timm_gam.hub import MissingWeightsError
from timm_gam.reid.checkpoint import TrainingCheckpoint
from timm_gam.reid.config import TrainConfig, add_config_flags, config_changes
from timm_gam.reid.eval_only import evaluate_run
from timm_gam.reid.trainer import train

# Presets: plain data, applied first; any command-line flag overrides them.
PRESETS = {
    # the embedded synthetic set, end to end on a laptop CPU in about two minutes; the tiny GAM network
    # because gam_resnet50_g4 from scratch needs more steps than that to learn (docs/results.md)
    'synthetic': dict(model='test_gam_resnet', image_size=(64, 32), embed_dim=256, batch_size=32,
                      warmup_epochs=8, epochs_per_stage=1, stages=6, merge_percent=0.12, lr_decay_epochs=12,
                      workers=1),
    # market1501-dev (6,970 training images) on a 2-core CPU in about an hour: 64x32 input, two warm-up
    # epochs, then four stages each merging 22% of the images (docs/results.md has the measured runs)
    'cpu-hour': dict(image_size=(64, 32), embed_dim=1024, batch_size=32, warmup_epochs=2,
                     epochs_per_stage=1, stages=4, merge_percent=0.22, lr_decay_epochs=5, workers=1),
    # the recommended recipe for a CPU within an hour (docs/results.md, time to accuracy): cpu-hour's
    # input and warm-up, made faster (channels_last, the training set decoded once and augmented in the
    # training process: no worker competes for the cores) and with purer, cross-camera clusters (refreshed
    # sizes, a size cap, merging on camera-centred embeddings: options beyond the paper, docs/recipe.md)
    'cpu': dict(image_size=(64, 32), embed_dim=1024, batch_size=32, warmup_epochs=2, epochs_per_stage=1,
                stages=12, merge_percent=0.08, size_update='refresh', max_cluster_size=40,
                camera_centred_merge=True, lr_decay_epochs=10, channels_last=True, data_path='decoded',
                workers=0, compile=True),
    # the cpu recipe for the paper's length (20 warm-up epochs, then 20 stages of 2 epochs merging 4%, the
    # rate dropping after 25 and 50 epochs), its warm-up trained with IDL alone (acl_from_stage=1): the
    # recipe of an earlier g4 release, the long run of docs/results.md
    'cpu-full': dict(image_size=(64, 32), embed_dim=1024, batch_size=32, warmup_epochs=20, epochs_per_stage=2,
                     stages=20, merge_percent=0.04, size_update='refresh', max_cluster_size=40,
                     camera_centred_merge=True, lr_decay_epochs=25, channels_last=True, data_path='decoded',
                     workers=0, compile=True, acl_from_stage=1),
    # cpu-full's speed settings and IDL-only warm-up, lengthened to 32 epochs, then 28 stages of one epoch,
    # each clustering the training set afresh with DBSCAN on k-reciprocal Jaccard distances (eps 0.3:
    # docs/recipe.md), its outliers left out of ACL; at the images' size on disk: the recipe of the
    # released g4 (docs/results.md, the 128x64 run), which retrieves with the pooled features before the
    # embedding head (docs/results.md, "Retrieval with the pooled features")
    'cpu-dbscan': dict(image_size=(128, 64), embed_dim=1024, batch_size=32, warmup_epochs=32,
                       epochs_per_stage=1, stages=28, clustering='dbscan', dbscan_eps=0.3,
                       camera_centred_merge=True, lr_decay_epochs=25, channels_last=True, data_path='decoded',
                       workers=0, compile=True, acl_from_stage=1, retrieval_features='pooled'),
    # a whole schedule on 62 tiny synthetic training images in a minute: for tests, and for checking a
    # change end to end (kill/resume, torchrun) before a long run; --model test_convnext is fastest
    'smoke': dict(image_size=(64, 32), embed_dim=64, batch_size=16, warmup_epochs=2, epochs_per_stage=1,
                  stages=2, merge_percent=0.2, lr_decay_epochs=10, workers=0, eval_batch_size=64,
                  synthetic=dict(num_train_identities=12, num_test_identities=8, num_cameras=3,
                                 images_per_identity_per_camera=2, image_size=(64, 32))),
    # paper 5.2: 256x128, batch 32, SGD lr 0.1 from scratch, /10 after 25 epochs, 4% merged per stage
    'paper': dict(image_size=(256, 128), embed_dim=2048, batch_size=32, warmup_epochs=20,
                  epochs_per_stage=2, stages=20, merge_percent=0.04, lr_decay_epochs=25, workers=8),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default=None,
                   help='starting configuration (default: synthetic without --data-root, paper with it)')
    add_config_flags(p)  # one flag per TrainConfig field that has flag metadata (reid/config.py)
    p.add_argument('--resume', action='store_true', help='continue from OUTPUT/checkpoint.pt')
    p.add_argument('--eval-only', action='store_true',
                   help='evaluate --checkpoint or --pretrained weights on the query/gallery of --data-root')
    p.add_argument('--checkpoint', help='with --eval-only: a checkpoint.pt of a training run')
    return p.parse_args(argv)


def build_config(args) -> TrainConfig:
    """The preset's values, then every flag given.

    With ``--resume`` the saved run's configuration (its checkpoint's, or its config.json before the first
    checkpoint) takes the preset's place, so ``--output RUN --resume`` alone continues a run as it was
    started; a flag given with it (``--stages 8`` to go on longer) changes the saved value, and is printed.
    """
    preset = args.preset or ('paper' if args.data_root else 'synthetic')
    values = dict(PRESETS[preset])
    # a preset's loader processes, at most one per core: more only compete (the paper preset's 8 are a
    # GPU machine's); the seeded augmentations make the results independent of the number
    values['workers'] = min(values.get('workers', TrainConfig.workers), os.cpu_count() or 1)
    values['output'] = 'runs/unsup_reid-eval' if args.eval_only else f'runs/unsup_reid-{preset}'
    flags = {f.name for f in fields(TrainConfig)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
             if k in flags and v is not None}
    output = Path(given.get('output', values['output']))
    if args.resume and (output / 'checkpoint.pt').exists():
        values = {**TrainingCheckpoint.load(output / 'checkpoint.pt').config, 'output': values['output']}
    elif args.resume and (output / 'config.json').exists():  # killed before its first checkpoint
        values = {**json.loads((output / 'config.json').read_text()), 'output': values['output']}
    config = TrainConfig(**{**values, **given})
    if args.resume and (changed := config_changes(values, config)):
        # the same comparison the trainer records in the checkpoint: a field the saved run predates counts
        # as its default, which that run used
        print('[resume] changing the saved configuration: '
              + ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in changed.items()))
    return config


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.eval_only and bool(args.checkpoint) == bool(args.pretrained):
        raise ValueError('--eval-only evaluates one model: pass --checkpoint RUN/checkpoint.pt or '
                         '--pretrained (the Hub weights of --model)')
    if args.checkpoint and not args.eval_only:
        raise ValueError('--checkpoint goes with --eval-only; to continue a training run, pass --output RUN '
                         '--resume')
    config = build_config(args)
    if args.eval_only:
        # only the flags given on the command line are expectations of the weights; presets are not
        metrics = evaluate_run(config, checkpoint=args.checkpoint, model_name=args.model,
                               embed_dim=args.embed_dim, image_size=args.image_size,
                               retrieval_features=args.retrieval_features)
    else:
        print('[config] ' + json.dumps(asdict(config)))
        metrics = train(config, resume=args.resume)
    print(json.dumps(metrics, indent=2))
    return metrics


# Problems with the input or the run, raised with a message that names the path and the fix; a
# traceback would only bury it. ImageLoadError and CheckpointError are ValueErrors; a non-finite
# loss is a FloatingPointError; pretrained weights neither the Hub nor its cache can give (or that don't
# fit) are a MissingWeightsError.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, MissingWeightsError)


def run_cli(argv=None) -> int:
    """:func:`main` for the command line: exit status 2 and one ``error: ...`` line for bad input."""
    try:
        main(argv)
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(run_cli())
