"""Time to accuracy: train recipe variants against one budget of training minutes, tabulate and plot.

    python experiments/time_to_accuracy.py --data-root ../shared/data/market1501-dev \\
        --runs ~/.cache/timm-gam/runs/tta --budget-min 20 --eval-every-min 5 [--variants cpu-hour cpu ...]
    python experiments/time_to_accuracy.py --data-root ... --runs ... --report-only   # table + figure only

Each variant is one ``recipes/unsup_reid.py`` command with ``--time-budget-min`` and ``--eval-every-min``
(the trainer stops its clock while it evaluates: the minutes are training minutes, DAWNBench's
protocol), run one after the other in ``RUNS/NAME``. The sweep is resumable: a variant whose run
finished its budget is skipped, a killed one continues with ``--resume``, and a larger ``--budget-min``
later extends every run from where it stopped.

The report (stdout, ``RUNS/time_to_accuracy.md``, ``RUNS/time_to_accuracy.png``) gives dev-test mAP and
rank-1 at fixed training minutes, the best of each run, the minutes until the run first passed the
HSV colour histogram's mAP (measured on the same split here). The paper's own rows run on a fixed
schedule instead: experiments/paper_tables.py.
Run variants alone on the machine: another job on the cores changes every minute on the clock.
``lscpu``'s model is printed with the table.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

from timm_gam.reid.fast_path import cpu_description
from timm_gam.reid.run_log import evaluation_curve, read_events

RECIPE = Path(__file__).resolve().parent.parent / 'recipes' / 'unsup_reid.py'

# name -> (what it measures, recipe flags); each lever is the recommended 'cpu' preset with one change
VARIANTS = {
    'cpu-hour': ('the previous CPU recipe (the first released weights)', ['--preset', 'cpu-hour']),
    'cpu': ('recommended: cpu-hour + speed (channels_last, decoded data path) + refreshed sizes, size cap '
            '40, 8% merged per stage, camera-centred merging', ['--preset', 'cpu']),
    'cpu-no-camera': ('cpu without camera-centred merging', ['--preset', 'cpu', '--no-camera-centred-merge']),
    'cpu-instance-memory': ('cpu + IDL against a memory of every image',
                            ['--preset', 'cpu', '--idl-negatives', 'memory']),
    'cpu-grey': ('cpu + a greyscale augmented view one time in five (CACL; SimCLR\'s p=0.2)',
                 ['--preset', 'cpu', '--greyscale-view', '0.2']),
    'cpu-files': ('cpu on the files data path (DataLoader worker, torchvision transforms)',
                  ['--preset', 'cpu', '--data-path', 'files', '--workers', '1']),
    # IDL* was the best row of the paper tables (docs/results.md): does it hold per minute?
    'cpu-idl': ('cpu with IDL alone (Eq. 4-6; no ACL, no merging)', ['--preset', 'cpu', '--loss', 'idl']),
}
# the variants run by default: the recipe's levers (the paper's rows: experiments/paper_tables.py)
LEVERS = ['cpu-hour', 'cpu', 'cpu-no-camera', 'cpu-instance-memory']
MARKS_MIN = (20, 60)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', required=True)
    p.add_argument('--runs', required=True, help='folder of the run folders (outside the checkout)')
    p.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=LEVERS,
                   help='these variants (default: the levers)')
    p.add_argument('--budget-min', type=float, default=20.0, help='training minutes per variant')
    p.add_argument('--eval-every-min', type=float, default=5.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--report-only', action='store_true', help='tabulate and plot the runs as they are')
    return p.parse_args(argv)


def run_variant(name: str, args) -> None:
    output = Path(args.runs).expanduser() / name
    metrics = output / 'metrics.json'
    if metrics.exists() and _budget_of(output) >= args.budget_min:
        print(f'[sweep] {name}: done ({output})', flush=True)
        return
    command = [sys.executable, str(RECIPE), *VARIANTS[name][1], '--data-root', args.data_root,
               '--output', str(output), '--seed', str(args.seed), '--time-budget-min', str(args.budget_min),
               '--eval-every-min', str(args.eval_every_min)]
    if (output / 'config.json').exists():
        command.append('--resume')
    print(f'[sweep] {name}: {" ".join(command)}', flush=True)
    with open(output.parent / f'{name}.out', 'a') as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)


def _budget_of(output: Path) -> float:
    """The budget a finished run was trained to: what a resume would have to extend."""
    config = json.loads((output / 'config.json').read_text())
    finished = json.loads((output / 'metrics.json').read_text())
    stages_done = finished.get('stage', -1) >= config['stages']
    return float('inf') if stages_done else (config.get('time_budget_min') or float('inf'))


def at_minutes(points: list[dict], minutes: float) -> dict | None:
    """The last evaluation made by ``minutes`` of training, if the run got that far; a mark's evaluation
    starts after the step that passed it, so up to 0.1 minute past the mark counts."""
    reached = [p for p in points if p['train_minutes'] <= minutes + 0.1]
    if not points or points[-1]['train_minutes'] < minutes - 0.5:
        return None
    return reached[-1] if reached else None


def report(args) -> str:
    runs = Path(args.runs).expanduser()
    from timm_gam.release import measure_colour_histogram
    histogram = measure_colour_histogram(args.data_root)
    cpu = cpu_description()
    lines = [f'Training minutes alone on {cpu}, {args.eval_every_min:g}-minute evaluation marks; '
             f'HSV histogram: rank-1 {histogram["rank1"]:.1f}, mAP {histogram["mAP"]:.1f}.', '',
             '| variant | ' + ' | '.join(f'{m} min rank-1 / mAP' for m in MARKS_MIN)
             + ' | best rank-1 / mAP (at min) | min to pass the histogram mAP | img/s | trained |',
             '|---|' + '---|' * (len(MARKS_MIN) + 4)]
    curves = {}
    for name in args.variants:
        output = runs / name
        if not (output / 'log.jsonl').exists():
            continue
        points = curves[name] = evaluation_curve(output)
        cells = []
        for mark in MARKS_MIN:
            p = at_minutes(points, mark)
            cells.append(f'{p["rank1"]:.1f} / {p["mAP"]:.1f}' if p else '-')
        best = max(points, key=lambda p: p['mAP'])
        passed = next((p['train_minutes'] for p in points if p['mAP'] > histogram['mAP']), None)
        speeds = [e['images_per_s'] for e in read_events(output, 'epoch')]
        speed = f'{sorted(speeds)[len(speeds) // 2]:.1f}' if speeds else '-'
        lines.append(f'| {name} | ' + ' | '.join(cells)
                     + f' | {best["rank1"]:.1f} / {best["mAP"]:.1f} ({best["train_minutes"]:.0f}) | '
                     + (f'{passed:.0f}' if passed is not None else 'not passed')
                     + f' | {speed} | {points[-1]["train_minutes"]:.0f} min, '
                     f'epoch {points[-1].get("epoch", 0):.1f} |')
    text = '\n'.join(lines) + '\n'
    (runs / 'time_to_accuracy.md').write_text(text)
    if curves:
        _plot(curves, histogram, runs / 'time_to_accuracy.png', cpu)
    return text


def _plot(curves: dict, histogram: dict, path: Path, cpu: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ('mAP', 'rank1'), strict=True):
        for name, points in curves.items():
            ax.plot([p['train_minutes'] for p in points], [p[metric] for p in points], marker='o', ms=3,
                    label=name)
        ax.axhline(histogram[metric], color='grey', ls='--', label='HSV histogram')
        ax.set_xlabel('training minutes (evaluations not counted)')
        ax.set_ylabel(f'market1501-dev test {metric}')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f'time to accuracy, gam_resnet50_g4, {cpu}', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    Path(args.runs).expanduser().mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.variants:
            run_variant(name, args)
    print(report(args))


if __name__ == '__main__':
    main()
