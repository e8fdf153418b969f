"""The training step of the GAM ResNets against timm's ResNet-50 on this machine: images/s, FLOP/s, the
share of the CPU's peak, and the oneDNN kernel behind each convolution.

    python benchmarks/bench_training.py                     # docs/performance.md's table (long: compiles)
    python benchmarks/bench_training.py --models resnet50 gam_resnet50_g4 --sizes 64x32 \
        --paths eager-fp32 fast
    python benchmarks/bench_training.py --models resnet50 --paths eager-fp32 \\
        --recipe-data-root ../shared/data/market1501-dev    # + the cpu preset's own images/s, from its log

One step is the trainer's: a forward and backward of ``--views`` images (the trainer's batch of 32
images is 64 views, both IDL views), a loss of the 1024-d embeddings' similarities, an SGD step with
Nesterov momentum and weight decay. Images/s counts images of two views each, as the recipe's log does.
The paths:

* ``eager-fp32``: timm and torch as they come (NCHW, fp32, eager, torch's default SGD). resnet50 on this
  path is the baseline of every ratio.
* ``fast-eager``: channels_last, bf16 autocast where the CPU computes bf16, the trainer's fused SGD
  (reid/fast_path.py).
* ``fast``: ``fast-eager`` compiled (torch.compile), the path the ``cpu`` presets train on. Its first
  step, reported, is the compile time.

Each repeat times every contender once, interleaved, so a change in load hits them alike. FLOPs are
counted once per model and size by ``torch.utils.flop_counter`` (forward and backward, 2 per
multiply-add of the convolutions and matrix products). The peak is ``cores x clock x FP32 FLOP per
cycle`` (:func:`cpu_peak_flops`), from ``lscpu``. ``--kernels`` runs one fast-eager step of each model under
``ONEDNN_VERBOSE=1`` and tallies which oneDNN implementation ran each convolution pass and its time.
``--recipe-data-root`` also trains the ``cpu`` preset for ``--recipe-minutes``, exactly as a user runs it,
and reads its images/s from its own log's step lines (each over 50 steps). Since this VM's speed drifts
by tens of percent over minutes, resnet50's eager-fp32 step is timed between those lines, the recipe
stopped meanwhile (:class:`Interleaving`), and each kept line is divided by the resnet50 timings around it;
the median of those ratios is reported, with their range and every pair.
"""
import argparse
import collections
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm_gam  # noqa: F401  registers the models
from timm_gam.reid import create_embedder
from timm_gam.reid.fast_path import (
    compile_for_training,
    cpu_model_name,
    nesterov_sgd,
    training_autocast_dtype,
)

BASELINE = ('resnet50', 'eager-fp32')
MODELS = ['resnet50', 'gam_resnet50_g2', 'gam_resnet50_g4', 'gam_resnet50_g8', 'gam_resnet50_g16',
          'cbam_resnet50']
PATHS = ('eager-fp32', 'fast-eager', 'fast')
RECIPE = Path(__file__).resolve().parents[1] / 'recipes' / 'unsup_reid.py'


def lscpu() -> dict:
    """``lscpu``'s fields by name ('Model name', 'CPU(s)', 'Flags', ...); empty where it is missing."""
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(':') for line in out.splitlines())}


def cpu_peak_flops(info: dict, threads: int) -> tuple[float, str]:
    """FP32 peak of ``threads`` cores, and how it was worked out.

    FLOP per cycle and core: two FMA pipes of 8 floats (AVX2) = 32; AVX-512 doubles it on Intel cores
    with two 512-bit FMA pipes, while AMD's Zen 4 runs AVX-512 on its 256-bit pipes (still 32). The clock
    is lscpu's 'CPU max MHz' where the machine reports it, else half the BogoMIPS (a VM's TSC rate).
    """
    flags = set(info.get('Flags', '').split())
    amd = info.get('Vendor ID') == 'AuthenticAMD'
    per_cycle = 64 if 'avx512f' in flags and not amd else 32 if 'fma' in flags else 16
    if info.get('CPU max MHz'):
        ghz, clock = float(info['CPU max MHz']) / 1000, 'CPU max MHz'
    else:
        ghz, clock = float(info.get('BogoMIPS', 0)) / 2000, 'BogoMIPS / 2'
    peak = threads * ghz * 1e9 * per_cycle
    how = (f'{threads} cores x {ghz:.2f} GHz ({clock}) x {per_cycle} FP32 FLOP/cycle '
           f'({"AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"}'
           f'{", AMD: 256-bit FMA pipes" if amd else ""}) = {peak / 1e9:.0f} GFLOP/s')
    return peak, how


def make_step(model_name: str, path: str, views: int, image_size, embed_dim: int = 1024):
    """A function running one training step of ``model_name`` on ``path``, and its input."""
    torch.manual_seed(0)
    fmt = torch.contiguous_format if path == 'eager-fp32' else torch.channels_last
    model = create_embedder(model_name, embed_dim).to(memory_format=fmt).train()
    hyper = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
    if path == 'eager-fp32':  # torch as it comes
        optimizer = torch.optim.SGD(model.parameters(), nesterov=True, **hyper)
    else:  # the trainer's
        optimizer = nesterov_sgd(model.parameters(), torch.device('cpu'), **hyper)
    autocast = None if path == 'eager-fp32' else training_autocast_dtype(True, torch.device('cpu'))
    forward = compile_for_training(model, torch.device('cpu'))[0] if path == 'fast' else model
    images = torch.randn(views, 3, *image_size).contiguous(memory_format=fmt)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=autocast, enabled=autocast is not None):
            embeddings = forward(images)
        embeddings = embeddings.float()
        # any scalar of the similarities costs the backward that the IDL/ACL losses' few products cost
        (embeddings @ embeddings.t() / 0.1).logsumexp(1).mean().backward()
        optimizer.step()
    return step, model, images


def step_flops(model_name: str, views: int, image_size) -> int:
    step, _, _ = make_step(model_name, 'eager-fp32', views, image_size)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


class Contender:
    def __init__(self, model_name: str, path: str, views: int, image_size):
        self.model_name, self.path, self.image_size = model_name, path, tuple(image_size)
        self.views = views
        self.step, _, _ = make_step(model_name, path, views, image_size)
        self.times = []
        start = time.perf_counter()
        self.step()  # oneDNN primitive creation, allocator; compilation on the fast path
        self.first_step_s = time.perf_counter() - start

    def timed_step(self):
        start = time.perf_counter()
        self.step()
        self.times.append(time.perf_counter() - start)

    def rate_of_more_steps(self, steps: int) -> float:
        """Images/s of ``steps`` more timed steps, taken now: the baseline between the recipe's step lines."""
        for _ in range(steps):
            self.timed_step()
        return self.views / 2 / statistics.median(self.times[-steps:])


def onednn_kernels(model_name: str, views: int, image_size) -> list[tuple]:
    """(pass, implementation, shape, calls, ms) of the convolutions of one fast-eager step, as oneDNN names
    them; the shape is oneDNN's problem descriptor (``g4ic64oc64_ih16oh16kh3...``) without the batch."""
    code = ('import sys; sys.path.insert(0, sys.argv[1]); import bench_training as b; '
            'size = (int(sys.argv[4]), int(sys.argv[5])); '
            'step = b.make_step(sys.argv[2], "fast-eager", int(sys.argv[3]), size)[0]; '
            'step(); print("=== timed step", flush=True); step()')
    out = subprocess.run([sys.executable, '-c', code, str(Path(__file__).parent), model_name, str(views),
                          *map(str, image_size)], capture_output=True, text=True, check=True,
                         env={**os.environ, 'ONEDNN_VERBOSE': '1'}).stdout
    tally = collections.defaultdict(lambda: [0, 0.0])
    for line in out.split('=== timed step', 1)[-1].splitlines():
        fields = line.split(',')
        if len(fields) > 8 and fields[0] == 'onednn_verbose' and 'exec' in fields and 'convolution' in fields:
            at = fields.index('convolution')
            shape = re.sub(r'mb\d+_?', '', fields[-2])
            entry = tally[(fields[at + 2], fields[at + 1], shape)]
            entry[0] += 1
            entry[1] += float(fields[-1])
    return sorted(((*key, calls, ms) for key, (calls, ms) in tally.items()), key=lambda row: -row[-1])


def recipe_arguments(data_root: str, run: str, minutes: float) -> list[str]:
    """The command line of the recipe's run: the ``cpu`` preset exactly as a user types it."""
    return ['--preset', 'cpu', '--data-root', data_root, '--output', run, '--time-budget-min', str(minutes)]


class Interleaving:
    """Which of the recipe's step lines count, and when to time the baseline between them.

    The recipe runs in its own process; after a step line is logged it may be stopped (SIGSTOP) while the
    baseline's steps are timed alone, then continued. The line whose window held that stop (or the
    compile: the first line) is left out. Every line kept is therefore the recipe alone, with baseline
    timings just before the line before it and just after it: a VM whose speed drifts over minutes
    drifts little within those seconds.
    """

    def __init__(self):
        self.window_disturbed = True  # the first line's window holds the compile
        self.last_baseline = None
        self.kept_line = None
        self.pairs = []  # (recipe images/s, baseline images/s before, after)

    def step_line(self, images_per_s: float) -> bool:
        """Take the recipe's next step line; True when the baseline is to be timed now."""
        clean = not self.window_disturbed
        self.window_disturbed = False
        if clean:
            self.kept_line = images_per_s
        return clean or self.last_baseline is None

    def baseline_timed(self, images_per_s: float) -> None:
        if self.kept_line is not None:
            self.pairs.append((self.kept_line, self.last_baseline, images_per_s))
            self.kept_line = None
        self.last_baseline = images_per_s
        self.window_disturbed = True


def recipe_against_baseline(data_root: str, minutes: float, baseline: Contender, steps: int,
                            poll_s: float = 0.2) -> tuple[list[tuple[float, float, float]], dict]:
    """Train the cpu preset on ``data_root`` and time ``steps`` baseline steps between its step lines
    (:class:`Interleaving`): the kept (recipe, baseline before, baseline after) images/s, and the
    recipe's ``training_path`` record."""
    with tempfile.TemporaryDirectory() as run:
        log = Path(run) / 'log.jsonl'
        recipe = subprocess.Popen([sys.executable, str(RECIPE), *recipe_arguments(data_root, run, minutes)],
                                  stdout=subprocess.DEVNULL, env={**os.environ, 'TIMM_GAM_PROGRESS': '0'})
        interleaving, lines_read = Interleaving(), 0
        while True:
            finished = recipe.poll() is not None  # read once more after the end: its last lines
            rates = [e['images_per_s'] for e in complete_events(log) if e['event'] == 'step']
            for rate in rates[lines_read:]:
                lines_read += 1
                if interleaving.step_line(rate) and not finished:
                    recipe.send_signal(signal.SIGSTOP)
                    try:
                        interleaving.baseline_timed(baseline.rate_of_more_steps(steps))
                    finally:
                        recipe.send_signal(signal.SIGCONT)
            if finished:
                break
            time.sleep(poll_s)
        if recipe.returncode:
            raise SystemExit(f'the cpu preset failed (exit {recipe.returncode}); run it alone to see why: '
                             f'python {RECIPE} {" ".join(recipe_arguments(data_root, "RUN", minutes))}')
        path = next(e for e in complete_events(log) if e['event'] == 'training_path')
    if not interleaving.pairs:
        raise SystemExit(f'the cpu preset logged too few steps in {minutes} minutes: raise --recipe-minutes')
    return interleaving.pairs, path


def complete_events(log: Path) -> list[dict]:
    """The complete lines of a log the recipe may be writing to."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines(keepends=True) if line.endswith('\n')]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=MODELS)
    p.add_argument('--sizes', nargs='+', default=['64x32', '128x64'], help='HEIGHTxWIDTH inputs')
    p.add_argument('--paths', nargs='+', choices=PATHS, default=list(PATHS))
    p.add_argument('--views', type=int, default=64, help='images per forward (the trainer: 2 x batch size)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=os.cpu_count())
    p.add_argument('--kernels', type=int, default=0, metavar='TOP',
                   help="tally the oneDNN kernels of each model and size, and list the TOP dearest shapes")
    p.add_argument('--recipe-data-root', help='also train the cpu preset here and read its images/s')
    p.add_argument('--recipe-minutes', type=float, default=4.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in size.split('x')) for size in args.sizes]
    info = lscpu()
    peak, how = cpu_peak_flops(info, args.threads)
    print(f'# {info.get("Model name", cpu_model_name())}, {args.threads} threads, torch {torch.__version__}, '
          f'CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 autocast on the fast paths: '
          f'{training_autocast_dtype(True, torch.device("cpu")) is not None}')
    vector_flags = [f for f in info.get('Flags', '').split() if f.startswith(('avx', 'amx', 'fma'))]
    print(f'# flags: {" ".join(vector_flags)}')
    print(f'# peak: {how}')

    for size in sizes:
        contenders = [Contender(m, path, args.views, size) for m in args.models for path in args.paths]
        flops = {m: step_flops(m, args.views, size) for m in args.models}
        for _ in range(args.repeats):
            for contender in contenders:
                contender.timed_step()
        rates = {(c.model_name, c.path): args.views / 2 / statistics.median(c.times) for c in contenders}
        base = rates.get(BASELINE)
        print(f'\n## {size[0]}x{size[1]}, {args.views} views per step, median of {args.repeats} interleaved '
              'repeats')
        print('| model | path | train img/s | / resnet50 eager-fp32 | GFLOP per step | GFLOP/s '
              '| share of FP32 peak | first step s |')
        print('|---|---|---|---|---|---|---|---|')
        for c in contenders:
            rate = rates[(c.model_name, c.path)]
            flop_rate = flops[c.model_name] * rate * 2 / args.views
            ratio = f'{rate / base:.2f}x' if base else '-'
            print(f'| {c.model_name} | {c.path} | {rate:.1f} | {ratio} | {flops[c.model_name] / 1e9:.1f} '
                  f'| {flop_rate / 1e9:.1f} | {100 * flop_rate / peak:.0f}% | {c.first_step_s:.1f} |')
        if args.recipe_data_root and size == (64, 32):
            baseline = next((c for c in contenders if (c.model_name, c.path) == BASELINE), None) or \
                Contender(*BASELINE, args.views, size)
            pairs, path = recipe_against_baseline(args.recipe_data_root, args.recipe_minutes, baseline,
                                                  args.repeats)
            ratios = [rate / statistics.mean(around) for rate, *around in pairs]
            recipe_rate = statistics.median(rate for rate, *_ in pairs)
            print(f'| cpu preset (its log: {path["autocast"]}, {path["compile"].split(" (")[0]}) | recipe '
                  f'| {recipe_rate:.1f} | **{statistics.median(ratios):.2f}x** (median of {len(ratios)} step '
                  f'lines, each against resnet50 timed around it: {min(ratios):.2f}-{max(ratios):.2f}x) '
                  '| | | | |')
            print("\nThe cpu preset's step lines kept, and resnet50 eager-fp32 timed around each (images/s):")
            print('| recipe | resnet50 before | resnet50 after | ratio |')
            print('|---|---|---|---|')
            for (rate, before, after), ratio in zip(pairs, ratios, strict=True):
                print(f'| {rate:.1f} | {before:.1f} | {after:.1f} | {ratio:.2f}x |')
        if args.kernels:
            for m in args.models:
                rows = onednn_kernels(m, args.views, size)
                total = sum(row[-1] for row in rows)
                print(f'\n{m}, {size[0]}x{size[1]}, fast-eager: oneDNN convolutions of one step, '
                      f'{total:.0f} ms; by pass and implementation, then the dearest shapes')
                print('| pass | implementation | calls | ms | share |')
                print('|---|---|---|---|---|')
                by_kernel = collections.defaultdict(lambda: [0, 0.0])
                for prop, impl, _, calls, ms in rows:
                    by_kernel[(prop, impl)][0] += calls
                    by_kernel[(prop, impl)][1] += ms
                for (prop, impl), (calls, ms) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1]):
                    print(f'| {prop} | {impl} | {calls} | {ms:.1f} | {100 * ms / total:.0f}% |')
                print('| pass | implementation | shape | calls | ms |')
                print('|---|---|---|---|---|')
                for prop, impl, shape, calls, ms in rows[:args.kernels]:
                    print(f'| {prop} | {impl} | {shape} | {calls} | {ms:.1f} |')


if __name__ == '__main__':
    main()
