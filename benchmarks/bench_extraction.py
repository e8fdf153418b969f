"""Feature-extraction throughput, as deployed re-ID runs it: images/s of gam_resnet50_g4 and timm's resnet50.

    python benchmarks/bench_extraction.py [--sizes 64x32 256x128] [--batches 1 32] [--repeats 5]
                                          [--threads 2] [--json FILE]

Four ways to run the L2-normalised embedding model on a preprocessed batch, for each model, input size
and batch size: eager PyTorch (eval mode, no grad), eager with batch norm folded into the convolutions
(:func:`timm_gam.reid.feature_extractor.fold_batch_norm`), the same in channels_last memory format, and
onnxruntime's CPU provider on the model exported by :mod:`timm_gam.onnx_export` (its own graph
optimisations on). Each path's features are
checked against eager's on the same batch; the table gives images/s (median over ``--repeats``
interleaved rounds, each round timing every cell once, so a change of machine load hits all alike),
the ratio to resnet50 eager at the same size and batch, and the largest absolute feature difference.
Both models embed in 1024 dimensions, the released g4's size; weights are random (speed does not
depend on them).
"""
import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import timm_gam  # noqa: F401  registers the models
from timm_gam.onnx_export import export_onnx
from timm_gam.reid.embedding import LoadedEmbedder, create_embedder
from timm_gam.reid.feature_extractor import fold_batch_norm

MODELS = ('resnet50', 'gam_resnet50_g4')
PATHS = ('eager', 'eager, BN folded', 'BN folded, channels_last', 'onnxruntime')
BASELINE = ('resnet50', 'eager')


class Cell:
    """One (model, path, input size, batch): a callable on a fixed batch, timed once per round."""

    def __init__(self, run, images: torch.Tensor, reference: np.ndarray):
        self.run, self.images = run, images
        self.max_abs_diff = float(np.abs(self.features() - reference).max())
        self.images_per_s = []

    def features(self) -> np.ndarray:
        return np.asarray(self.run(self.images))

    def time_once(self, min_seconds: float):
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < min_seconds:
            self.run(self.images)
            calls += 1
        self.images_per_s.append(calls * len(self.images) / (time.perf_counter() - start))


def build_cells(model_name: str, size: tuple[int, int], batches, threads: int, folder: Path) -> dict:
    torch.manual_seed(0)
    model = create_embedder(model_name, 1024).eval()
    folded = fold_batch_norm(model)
    onnx_file = folder / f'{model_name}-{size[0]}x{size[1]}.onnx'
    path = export_onnx(LoadedEmbedder(model, size, model_name), onnx_file)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])

    def torch_runner(module, memory_format=torch.contiguous_format):
        module = module.to(memory_format=memory_format)

        def run(images):
            with torch.no_grad():
                return module(images.contiguous(memory_format=memory_format)).numpy()
        return run

    runners = {'eager': torch_runner(model), 'eager, BN folded': torch_runner(folded),
               'BN folded, channels_last': torch_runner(fold_batch_norm(model), torch.channels_last),
               'onnxruntime': lambda images: session.run(['embeddings'], {'images': images.numpy()})[0]}
    assert tuple(runners) == PATHS
    cells = {}
    for batch in batches:
        images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        reference = runners['eager'](images)
        for name, run in runners.items():
            cells[(model_name, name, size, batch)] = Cell(run, images, reference)
    return cells


def cpu_model() -> str:
    """lscpu's model name (from /proc/cpuinfo), and whether the CPU has AVX-512 and AMX."""
    try:
        info = Path('/proc/cpuinfo').read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(':', 1) for line in info.splitlines() if ':' in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name, flags = fields.get('model name', platform.machine()), set(fields.get('flags', '').split())
    return f'{name} ({"AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"}' \
           f'{", AMX" if "amx_tile" in flags else ""})'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', nargs='+', default=['64x32', '256x128'], help='HxW input sizes')
    p.add_argument('--batches', nargs='+', type=int, default=[1, 32])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--min-seconds', type=float, default=1.0, help='per cell and round')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--json', help='also write the cells to this file')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes]

    with tempfile.TemporaryDirectory() as folder:
        cells = {}
        for model_name in MODELS:
            for size in sizes:
                cells.update(build_cells(model_name, size, args.batches, args.threads, Path(folder)))
        for cell in cells.values():  # warm-up: oneDNN primitives, onnxruntime's arena
            cell.time_once(0.0)
            cell.images_per_s.clear()
        for _ in range(args.repeats):
            for cell in cells.values():
                cell.time_once(args.min_seconds)

    print(f'{cpu_model()}, torch {torch.__version__}, onnxruntime '
          f'{onnxruntime.__version__}, {args.threads} threads; images/s, median of {args.repeats} rounds\n')
    print('| model | path | input | batch | images/s | vs resnet50 eager | max abs diff vs eager |')
    print('|---|---|---|---|---|---|---|')
    rows = []
    for (model_name, path, size, batch), cell in cells.items():
        speed = statistics.median(cell.images_per_s)
        baseline = statistics.median(cells[(*BASELINE, size, batch)].images_per_s)
        rows.append(dict(model=model_name, path=path, input=f'{size[0]}x{size[1]}', batch=batch,
                         images_per_s=speed, ratio=speed / baseline, max_abs_diff=cell.max_abs_diff,
                         rounds=cell.images_per_s))
        print(f'| {model_name} | {path} | {size[0]}x{size[1]} | {batch} | {speed:.1f} '
              f'| {speed / baseline:.2f}x | {cell.max_abs_diff:.1e} |')
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + '\n')
    return rows


if __name__ == '__main__':
    main()
