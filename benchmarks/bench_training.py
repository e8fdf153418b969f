"""Training-step and embedding-extraction throughput of GAM ResNets against timm's ResNet-50, side by side.

    python benchmarks/bench_training.py [--models resnet50 gam_resnet50_g4 ...] [--formats nchw channels_last]
                                        [--batch 32] [--infer-batch 32] [--repeats 3] [--threads 2]
                                        [--image-size 256 128] [--compile] [--profile TOP]

One training step is what the re-ID trainer does per batch, minus data loading: forward, a loss,
backward and an SGD step with momentum and weight decay, on ``--batch`` images of 3x256x128 (the trainer
forwards both IDL views together, so its ``batch_size=32`` is a forward of 64 images; pass ``--batch 64``
for that). Inference is ``ReidEmbedder`` (model + L2 normalisation) under ``torch.no_grad`` in eval mode,
as ``extract_embeddings`` runs it. Every repeat times each (model, memory format) once, interleaved, so a
change in machine load hits all of them alike; the table gives medians and ratios to the resnet50 of the
same memory format and to resnet50 in the default (nchw) format. ``--profile`` then shows where one
training step's time goes: the operators taking the most CPU time (torch.profiler, self time, the
share of the step), for each model and format. ``--compile`` adds each model and format under
``torch.compile``; the table's last column, the first step's seconds, is then the compile time to set
against what the faster steps save over a run.
"""
import argparse
import platform
import statistics
import time

import torch

import timm_gam  # noqa: F401  registers the models
from timm_gam.reid import create_embedder

MEMORY_FORMATS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}
BASELINE = 'resnet50'
GAM_MODELS = ['gam_resnet50_g2', 'gam_resnet50_g4', 'gam_resnet50_g8', 'gam_resnet50_g16']


class Contender:
    """One model in one memory format, with its own optimizer and inputs, timed one step at a time."""

    def __init__(self, model_name: str, memory_format: str, batch: int, infer_batch: int, image_size,
                 compiled: bool = False):
        self.model_name, self.memory_format = model_name, memory_format
        if compiled:
            self.memory_format += ', compiled'
        fmt = MEMORY_FORMATS[memory_format]
        self.model = create_embedder(model_name).to(memory_format=fmt)
        if compiled:
            self.model.compile()  # torch.compile in place: the training step's forward and backward
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.train_images = torch.randn(batch, 3, *image_size).contiguous(memory_format=fmt)
        self.infer_images = torch.randn(infer_batch, 3, *image_size).contiguous(memory_format=fmt)
        self.train_times, self.infer_times = [], []

    def train_step(self) -> float:
        self.model.train()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        embeddings = self.model(self.train_images)
        # any scalar of the embeddings costs the same backward as the IDL/ACL losses' few matrix products
        (embeddings @ embeddings.t()).logsumexp(1).mean().backward()
        self.optimizer.step()
        return time.perf_counter() - start

    @torch.no_grad()
    def infer_step(self) -> float:
        self.model.eval()
        start = time.perf_counter()
        self.model(self.infer_images)
        return time.perf_counter() - start


def run(contenders: list[Contender], repeats: int) -> None:
    for contender in contenders:  # warm-up: oneDNN primitive creation, allocator, compilation
        contender.first_step_s = contender.train_step()
        contender.infer_step()
    for _ in range(repeats):
        for contender in contenders:
            contender.train_times.append(contender.train_step())
            contender.infer_times.append(contender.infer_step())


def print_table(contenders: list[Contender], batch: int, infer_batch: int) -> None:
    def rate(times, images):
        return images / statistics.median(times)

    rates = {(c.model_name, c.memory_format): (rate(c.train_times, batch), rate(c.infer_times, infer_batch))
             for c in contenders}

    def ratio(key, base_key, index):
        return f'{rates[key][index] / rates[base_key][index]:.2f}x' if base_key in rates else '-'

    print('| model | memory format | train img/s | infer img/s | train / resnet50 same format '
          '| infer / resnet50 same format | train / resnet50 nchw | infer / resnet50 nchw | first step s |')
    print('|---|---|---|---|---|---|---|---|---|')
    for c in contenders:
        key = (c.model_name, c.memory_format)
        same, nchw = (BASELINE, c.memory_format), (BASELINE, 'nchw')
        ratios = ' | '.join(ratio(key, base, index) for base in (same, nchw) for index in (0, 1))
        train, infer = rates[key]
        # the first step includes compilation for compiled contenders: its cost against what a run saves
        print(f'| {c.model_name} | {c.memory_format} | {train:.2f} | {infer:.2f} | {ratios} '
              f'| {c.first_step_s:.1f} |')


def print_profile(contender: Contender, top: int) -> None:
    from torch.profiler import profile
    with profile() as prof:
        contender.train_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f'\n{contender.model_name}, {contender.memory_format}: one training step, '
          f'{total / 1e6:.2f} s of operator time')
    print('| operator | share of the step | calls |')
    print('|---|---|---|')
    for event in events[:top]:
        print(f'| {event.key} | {100 * event.self_cpu_time_total / total:.1f}% | {event.count} |')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=[BASELINE, *GAM_MODELS, 'cbam_resnet50'])
    p.add_argument('--formats', nargs='+', choices=list(MEMORY_FORMATS), default=['nchw', 'channels_last'])
    p.add_argument('--batch', type=int, default=32, help='images per training step')
    p.add_argument('--infer-batch', type=int, default=32, help='images per inference forward')
    p.add_argument('--image-size', type=int, nargs=2, default=(256, 128), metavar=('HEIGHT', 'WIDTH'))
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--compile', action='store_true',
                   help='also time each model and format under torch.compile (first step: the compile time)')
    p.add_argument('--profile', type=int, default=0, metavar='TOP',
                   help='also list the TOP operators of one training step of each contender')
    args = p.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    contenders = [Contender(name, fmt, args.batch, args.infer_batch, args.image_size, compiled)
                  for name in args.models for fmt in args.formats
                  for compiled in ((False, True) if args.compile else (False,))]
    run(contenders, args.repeats)
    print(f'# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch '
          f'{torch.__version__}; train batch {args.batch}, infer batch {args.infer_batch}, '
          f'{args.image_size[0]}x{args.image_size[1]}, median of {args.repeats} interleaved repeats')
    print_table(contenders, args.batch, args.infer_batch)
    for contender in [c for c in contenders if 'compiled' not in c.memory_format] if args.profile else ():
        print_profile(contender, args.profile)


if __name__ == '__main__':
    main()
