"""The ``--eval-only`` job: a trained model, from its own weights, evaluated on a labelled split.

The model comes from :func:`~timm_gam.reid.embedding.load_embedder`, so its embedding size and input
size are those it was trained with; only the test split is read (``query`` and
``bounding_box_test``: no training images needed); the figures are printed and written to the run
folder as a training run writes them (``metrics.json``, an ``eval`` line in ``log.jsonl``).
"""
from pathlib import Path
from typing import TYPE_CHECKING

from .datasets import EVALUATION_SPLITS, prepare_data
from .embedding import autocast_dtype, load_embedder, resolve_device
from .evaluation import evaluate_model, format_metrics
from .run_log import RunLog

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ['evaluate_run']


def evaluate_run(config: 'TrainConfig', checkpoint: str | None = None, *, model_name: str | None = None,
                 embed_dim: int | None = None, image_size: tuple[int, int] | None = None,
                 retrieval_features: str | None = None) -> dict:
    """Evaluate a training checkpoint, or (without one) the pretrained weights of ``config.model``, on the
    query/gallery split of ``config.data_root``; write the figures into ``config.output``.

    ``model_name``, ``embed_dim`` and ``image_size`` are what the caller expects of the weights (the
    command line's explicit flags): a model that differs is an error. ``retrieval_features``, where given,
    picks the features compared (:func:`~timm_gam.reid.load_embedder`). The config's own sizes play no
    part. A run folder that holds a training checkpoint is refused as the output: its ``metrics.json``
    would be replaced.
    """
    output = Path(config.output)
    if (output / 'checkpoint.pt').exists():
        raise ValueError(f'{output} holds a training run (checkpoint.pt); --eval-only would replace its '
                         'metrics.json: pass another --output')
    if config.data_root is None:
        raise ValueError('--eval-only needs the data to evaluate on: pass --data-root with a Market-1501 or '
                         'DukeMTMC-reID layout (query/ and bounding_box_test/ suffice)')
    splits = prepare_data(config.data_root, config.layout, splits=EVALUATION_SPLITS)
    if checkpoint:
        loaded = load_embedder(checkpoint=checkpoint, model_name=model_name, embed_dim=embed_dim,
                               image_size=image_size, retrieval_features=retrieval_features)
    else:
        loaded = load_embedder(pretrained=model_name or config.model, embed_dim=embed_dim,
                               image_size=image_size, retrieval_features=retrieval_features)
    device = resolve_device(config.device)
    metrics = evaluate_model(loaded.embedder.to(device), splits.query, splits.gallery, loaded.image_size,
                             batch_size=config.eval_batch_size, workers=config.workers, device=device,
                             amp_dtype=autocast_dtype(config.amp, device))
    metrics.update(model=loaded.label, checkpoint=checkpoint and str(checkpoint),
                   pretrained=None if checkpoint else model_name or config.model,
                   embed_dim=loaded.embed_dim, image_size=loaded.image_size, data_root=str(splits.root))
    log = RunLog(output)
    log.write('eval', **metrics)
    log.write_metrics(metrics)
    print(f'[eval] {loaded.label}: {format_metrics(metrics)}')
    return metrics
