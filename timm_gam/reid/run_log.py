"""A run folder's record: ``log.jsonl`` (one JSON object per event) and ``metrics.json``.

Training and ``--eval-only`` write the same two files, so scripts read the figures of either the
same way. ``metrics.json`` is replaced atomically; ``log.jsonl`` only grows, and a line cut short by
a kill is dropped when the log is opened again, so every line parses. :class:`RunLog` is the one
writer, :func:`read_events` the one reader.
"""
import json
import os
import time
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_text

__all__ = ['RunLog', 'evaluation_curve', 'read_events']

# the records that measure a point of training; a resumed run logs again those after its last checkpoint
MEASUREMENTS = ('eval', 'epoch', 'merge', 'stage', 'timed_eval')


class RunLog:
    """``log.jsonl`` and ``metrics.json`` in the folder ``output`` (created if needed)."""

    def __init__(self, output: str | Path):
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        self.path = output / 'log.jsonl'
        self.metrics_path = output / 'metrics.json'
        self._drop_partial_last_line()

    def _drop_partial_last_line(self):
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b'\n'):
            self.path.write_bytes(data[:data.rfind(b'\n') + 1])

    def write(self, event: str, **fields):
        line = json.dumps({'event': event, 'time': time.time(), **fields}, default=_jsonable) + '\n'
        with open(self.path, 'a') as f:
            f.write(line)

    def write_metrics(self, metrics: dict):
        atomic_write_text(self.metrics_path, json.dumps(metrics, indent=2, default=_jsonable) + '\n')


def read_events(run: str | os.PathLike, *events: str) -> list[dict]:
    """The records of the run folder ``run``'s ``log.jsonl`` in order, only those of ``events`` if named.

    A run killed between logging a measurement and saving its checkpoint logs it again when resumed, the
    same point of training (event, stage, epoch, steps) measured again: each point appears once, with
    its latest record, where it was first logged.
    """
    path = Path(run) / 'log.jsonl'
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist: pass the --output folder of a '
                                'recipes/unsup_reid.py run')
    unique = {}
    for number, line in enumerate(path.read_text().splitlines()):
        record = json.loads(line)
        if events and record['event'] not in events:
            continue
        point = (record['event'], *(record.get(k) for k in ('stage', 'epoch', 'steps')))
        unique[point if record['event'] in MEASUREMENTS else number] = record
    return list(unique.values())


def evaluation_curve(run: str | os.PathLike) -> list[dict]:
    """Every query/gallery evaluation of the run folder ``run`` in training order: the untrained one at 0
    training minutes, then the timed marks and the stage ends.

    A stage's end can be a mark's too (or the time budget's): the same weights evaluated twice at the
    same training minute count once.
    """
    points = [{**e, 'train_minutes': 0.0} if e['event'] == 'eval' else e
              for e in read_events(run, 'eval', 'timed_eval', 'stage')
              if 'mAP' in e and (e['event'] != 'eval' or e.get('stage') == -1)]
    unique = {round(p['train_minutes'], 6): p for p in points}
    return sorted(unique.values(), key=lambda p: p['train_minutes'])


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')
