"""Run a recipe script that stops itself (SIGSTOP) the Nth time it reaches a named point of its work.

    python tests/stop_at.py POINT N SCRIPT [ARGS...]

A test then SIGKILLs the stopped process: the kill lands exactly at that point, however fast or slow
the machine is, and a run cannot outrun it. Points (counted from the start of this process):

* ``step``: before an optimiser step, mid-epoch (the DataLoader workers hold prefetched batches);
* ``embed``: before a forward pass in eval mode, mid-way through embedding a split;
* ``merge``: before a stage merges its clusters (Eq. 9-10);
* ``checkpoint``: while a checkpoint is being written, its bytes half out, before the rename.

With N = 0 the script runs to its end untouched.
"""
import io
import os
import runpy
import signal
import sys

import torch

from timm_gam.reid import stages
from timm_gam.reid.embedding import ReidEmbedder


def stop_on_call(count: int):
    """A function that stops this process on its ``count``-th call."""
    calls = 0

    def reached():
        nonlocal calls
        calls += 1
        if calls == count:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGSTOP)
    return reached


def install(point: str, reached) -> None:
    if point == 'step':
        step = torch.optim.SGD.step
        torch.optim.SGD.step = lambda self, *a, **k: (reached(), step(self, *a, **k))[1]
    elif point == 'embed':
        forward = ReidEmbedder.forward
        ReidEmbedder.forward = lambda self, x: (None if self.training else reached(), forward(self, x))[1]
    elif point == 'merge':
        merge = stages.merge_clusters
        stages.merge_clusters = lambda *a, **k: (reached(), merge(*a, **k))[1]
    elif point == 'checkpoint':
        save = torch.save

        def save_halfway(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            reached()
            f.write(data[len(data) // 2:])
        torch.save = save_halfway  # the recipe calls torch.save for checkpoints only
    else:
        raise SystemExit(f'unknown point {point!r}')


if __name__ == '__main__':
    point, count, script, *args = sys.argv[1:]
    if int(count) > 0:
        install(point, stop_on_call(int(count)))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name='__main__')
