"""The paper's Tables 2 and 6 at CPU scale: every row on one fixed schedule, measured beside the paper's.

    python experiments/paper_tables.py --data-root ../shared/data/market1501-dev \\
        --runs ~/.cache/timm-gam/runs/paper-tables [--rows idl-acl-gam buc ...] [--seeds 0 1] [--parallel 2]
    python experiments/paper_tables.py --data-root ... --runs ... --report-only   # table + figure only

Every row is one ``recipes/unsup_reid.py`` command: the paper's method at the ``cpu-hour`` schedule (64x32
input, 1024-d embedding, two warm-up epochs, four stages of one epoch merging 22% of the images each: six
epochs), made faster only (channels_last, the decoded data path), with the row's model and loss. The
budget is this fixed schedule, not training minutes: the rows then compare the methods whatever the
machine, rows run on different machines or sessions stay comparable, and ``--parallel 2`` may run two
rows at once, one core each (1.2x the throughput of one two-thread run on a 2-core EPYC), which would
corrupt a budget of minutes.

The sweep is resumable: a finished run (``RUNS/ROW-seedS``) is skipped, a killed one continues with
``--resume``. The report (stdout, ``RUNS/paper_tables.md``, ``RUNS/paper_tables.png``) gives each run's
dev-test rank-1 and mAP after the schedule, the mean over seeds, the best stage's mAP (the last
merges can cost accuracy), the parameters and GMACs of the model
(as docs/models.md counts them), the training minutes, and the paper's rank-1 / mAP (Market-1501 at
256x128 after about 60 epochs on a GPU: for comparing orderings, not values). Extra rows: the HSV colour
histogram, computed from ``--data-root`` by each report, and the recommended ``cpu`` recipe
(training-minute budget, experiments/time_to_accuracy.py) when its run exists. Below the table, each
ordering the paper reports is checked pair by pair: holds, reversed, or within the run-to-run spread.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timm_gam.reid.fast_path import cpu_description
from timm_gam.reid.run_log import read_events

RECIPE = Path(__file__).resolve().parent.parent / 'recipes' / 'unsup_reid.py'

# the paper's method at CPU scale, made faster only (channels_last, the decoded data path)
SCHEDULE = ['--preset', 'cpu-hour', '--channels-last', '--data-path', 'decoded', '--workers', '0']


def row(table: str, label: str, model: str, loss: str, paper: tuple[float, float]) -> dict:
    return dict(table=table, label=label, model=model, loss=loss, paper=paper)


# the paper's rows (Table 2 without pretrained weights, Table 6): its Market-1501 rank-1, mAP
ROWS = {
    'buc': row('2', 'BUC* (ACL only)', 'resnet50', 'acl', (10.7, 3.1)),
    'idl-r50': row('2', 'IDL*', 'resnet50', 'idl', (25.5, 9.1)),
    'idl-acl-r50': row('2', 'IDL+ACL*', 'resnet50', 'idl+acl', (48.2, 24.3)),
    'idl-acl-cbam': row('2', 'IDL+ACL+CBAM*', 'cbam_resnet50', 'idl+acl', (48.5, 25.6)),
    'idl-acl-acbam': row('2', 'IDL+ACL+A-CBAM*', 'acbam_resnet50', 'idl+acl', (45.2, 21.7)),
    'acl-gam': row('2', 'ACL+GAM*', 'gam_resnet50_g4', 'acl', (44.6, 20.3)),
    'idl-acl-gam': row('2, 6', 'IDL+ACL+GAM* (4 groups)', 'gam_resnet50_g4', 'idl+acl', (53.6, 29.5)),
    'idl-acl-gam-g2': row('6', 'IDL+ACL+GAM, 2 groups', 'gam_resnet50_g2', 'idl+acl', (51.1, 26.3)),
    'idl-acl-gam-g8': row('6', 'IDL+ACL+GAM, 8 groups', 'gam_resnet50_g8', 'idl+acl', (55.0, 30.0)),
    'idl-acl-gam-g16': row('6', 'IDL+ACL+GAM, 16 groups', 'gam_resnet50_g16', 'idl+acl', (54.4, 28.6)),
}
# the order of the sweep: Table 6 first (its runs give the released g2/g8/g16 weights), then Table 2
ORDER = ['idl-acl-gam', 'idl-acl-gam-g16', 'idl-acl-gam-g8', 'idl-acl-gam-g2', 'buc', 'idl-acl-cbam',
         'idl-acl-r50', 'acl-gam', 'idl-r50', 'idl-acl-acbam']


def chain(*rows_and_relations: str) -> list[tuple[str, str, str]]:
    """``chain('a', '>', 'b', '>=', 'c')``: the pairs (a > b), (b >= c) of an ordering."""
    rows, relations = rows_and_relations[::2], rows_and_relations[1::2]
    return list(zip(rows[:-1], relations, rows[1:], strict=True))


# the paper's orderings of its rows by mAP, as pairs (row, relation, row)
CLAIMS = {
    'Table 2, attention: GAM > CBAM >= plain ResNet-50 > A-CBAM':
        chain('idl-acl-gam', '>', 'idl-acl-cbam', '>=', 'idl-acl-r50', '>', 'idl-acl-acbam'),
    'Table 2, losses: IDL+ACL > ACL+GAM > IDL > BUC':
        chain('idl-acl-r50', '>', 'acl-gam', '>', 'idl-r50', '>', 'buc'),
    'Table 2, IDL and ACL help each other (same backbone)':
        [('idl-acl-gam', '>', 'acl-gam'), ('idl-acl-r50', '>', 'buc'), ('idl-acl-r50', '>', 'idl-r50')],
    'Table 6, filter groups: 8 >= 4 > 16 > 2':
        chain('idl-acl-gam-g8', '>=', 'idl-acl-gam', '>', 'idl-acl-gam-g16', '>', 'idl-acl-gam-g2'),
}
# mAP by which two runs of one configuration differ at this scale (docs/results.md: the g4 cpu-hour rerun)
RUN_TO_RUN_SPREAD = 1.5
# the recommended CPU recipe's run of experiments/time_to_accuracy.py, an extra row when present
CPU_RECIPE_RUN = Path('~/.cache/timm-gam/runs/tta/cpu')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', required=True)
    p.add_argument('--runs', required=True, help='folder of the run folders (outside the checkout)')
    p.add_argument('--rows', nargs='+', choices=ORDER, default=ORDER, help='these rows (default: all)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0])
    p.add_argument('--parallel', type=int, default=1, help='rows trained at once, the cores shared out')
    p.add_argument('--cpu-recipe-run', default=str(CPU_RECIPE_RUN),
                   help='run folder of the cpu preset for the extra row (time_to_accuracy.py --variants cpu)')
    p.add_argument('--report-only', action='store_true', help='tabulate and plot the runs as they are')
    return p.parse_args(argv)


def run_folder(runs: Path, name: str, seed: int) -> Path:
    return runs / f'{name}-seed{seed}'


def finished(output: Path) -> bool:
    """Whether the run trained every stage of its schedule: the metrics.json a run writes when it stops
    (schedule done or time budget spent) name the stage of its last evaluation."""
    metrics, config = output / 'metrics.json', output / 'config.json'
    if not (metrics.exists() and config.exists()):
        return False
    return json.loads(metrics.read_text()).get('stage', -1) >= json.loads(config.read_text())['stages']


def _say(message: str) -> None:
    # one write per line: print's separate write of the newline lets two sweep threads' lines run together
    print(f'[sweep] {message}\n', end='', flush=True)


def train_row(name: str, seed: int, args, threads: int) -> None:
    output = run_folder(Path(args.runs).expanduser(), name, seed)
    if finished(output):
        _say(f'{output.name}: done')
        return
    spec = ROWS[name]
    command = [sys.executable, str(RECIPE), *SCHEDULE, '--model', spec['model'], '--loss', spec['loss'],
               '--data-root', args.data_root, '--output', str(output), '--seed', str(seed)]
    if (output / 'config.json').exists():
        command.append('--resume')
    _say(f'{output.name}: {" ".join(command)} ({threads} thread(s))')
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    with open(output.parent / f'{output.name}.out', 'a') as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, env=env)


def sweep(args) -> None:
    jobs = [(name, seed) for seed in args.seeds for name in args.rows]
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(train_row, name, seed, args, threads) for name, seed in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            # a failed row or a Ctrl-C stops the sweep: the rows not yet started would train for hours
            pool.shutdown(cancel_futures=True)
            raise


def stage_curve(output: Path) -> list[dict]:
    """The evaluation after the untrained start and after every stage, in order."""
    return [{**e, 'epoch': 0.0} if e['event'] == 'eval' else e for e in read_events(output, 'eval', 'stage')
            if (e['event'] == 'eval' and e.get('stage') == -1) or (e['event'] == 'stage' and 'mAP' in e)]


def model_size(model_name: str) -> tuple[float, float]:
    """Millions of parameters and GMACs at 256x128 of the backbone (``num_classes=0``), as docs/models.md
    counts them."""
    import timm

    import timm_gam  # noqa: F401  registers the models
    from timm_gam.model_card import count_gmacs
    model = timm.create_model(model_name, num_classes=0)
    return sum(p.numel() for p in model.parameters()) / 1e6, count_gmacs(model, (256, 128))


def _half_range(values: list[float]) -> float:
    """The spread of one row's seeds, as the table and the orderings state it."""
    return (max(values) - min(values)) / 2


def _cell(values: list[float]) -> str:
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} ± {_half_range(values):.1f}'


def report(args) -> str:
    from timm_gam.release import measure_colour_histogram
    runs = Path(args.runs).expanduser()
    histogram = measure_colour_histogram(args.data_root)
    lines = [f'Dev-test rank-1 / mAP after the cpu-hour schedule (6 epochs at 64x32, 1024-d), '
             f'{cpu_description()}; several seeds: mean ± half the range.', '',
             '| table | row | model | params (M) | GMACs 256x128 | seeds | rank-1 | mAP '
             '| per seed (rank-1 / mAP) | best stage mAP (epoch) | train min | paper rank-1 / mAP |',
             '|---|' + '---|' * 11]
    curves, measured = {}, {}
    for name in ORDER:
        outputs = [run_folder(runs, name, s) for s in args.seeds]
        done = [o for o in outputs if finished(o)]
        if not done:
            continue
        spec = ROWS[name]
        results = [json.loads((o / 'metrics.json').read_text()) for o in done]
        curves[name] = [stage_curve(o) for o in done]
        params, gmacs = model_size(spec['model'])
        seeds = ', '.join(o.name.rsplit('seed', 1)[1] for o in done)
        per_seed = '; '.join(f'{r["rank1"]:.1f} / {r["mAP"]:.1f}' for r in results)
        best_stages = [max((p for p in c if p['epoch'] > 0), key=lambda p: p['mAP']) for c in curves[name]]
        best = '; '.join(f'{p["mAP"]:.1f} ({p["epoch"]:g})' for p in best_stages)
        minutes = statistics.mean(r['train_minutes'] for r in results)
        rank1, mean_ap = _cell([r['rank1'] for r in results]), _cell([r['mAP'] for r in results])
        measured[name] = [r['mAP'] for r in results]
        lines.append(f'| {spec["table"]} | {spec["label"]} | {spec["model"]} | {params:.1f} | {gmacs:.2f} | '
                     f'{seeds} | {rank1} | {mean_ap} | {per_seed} | {best} | {minutes:.0f} | '
                     f'{spec["paper"][0]} / {spec["paper"][1]} |')
    lines.append(f'| - | HSV colour histogram | - | - | - | - | {histogram["rank1"]:.1f} | '
                 f'{histogram["mAP"]:.1f} | - | - | - | - |')
    cpu_recipe = _cpu_recipe_row(Path(args.cpu_recipe_run).expanduser())
    if cpu_recipe:
        lines.append(cpu_recipe)
    lines += ['', *ordering_table(measured)]
    text = '\n'.join(lines) + '\n'
    (runs / 'paper_tables.md').write_text(text)
    if curves:
        _plot(curves, histogram, runs / 'paper_tables.png')
    return text


def ordering_verdict(relation: str, difference: float, spread: float) -> str:
    """Whether ``a relation b`` holds where mAP(a) - mAP(b) = ``difference``, runs varying by ``spread``."""
    if difference > spread:
        return 'holds'
    if difference < -spread:
        return 'reversed'
    return 'within the spread' + (' (consistent with >=)' if relation == '>=' else '')


def ordering_table(measured: dict[str, list[float]]) -> list[str]:
    """The paper's orderings (``CLAIMS``), pair by pair: the measured mAP (mean over seeds), the difference
    and its verdict against the larger of ``RUN_TO_RUN_SPREAD`` and the pair's half-range over seeds."""
    lines = [f'Orderings (mAP; spread: {RUN_TO_RUN_SPREAD} or the half-range over seeds if larger):', '',
             "| paper's claim | pair | paper mAP | measured mAP | difference | verdict |",
             '|---|' + '---|' * 5]
    for claim, pairs in CLAIMS.items():
        for a, relation, b in pairs:
            paper = f'{ROWS[a]["paper"][1]} {relation} {ROWS[b]["paper"][1]}'
            if a not in measured or b not in measured:
                lines.append(f'| {claim} | {a} {relation} {b} | {paper} | - | - | not measured |')
                continue
            spread = max(RUN_TO_RUN_SPREAD, _half_range(measured[a]), _half_range(measured[b]))
            mean_a, mean_b = statistics.mean(measured[a]), statistics.mean(measured[b])
            verdict = ordering_verdict(relation, mean_a - mean_b, spread)
            lines.append(f'| {claim} | {a} {relation} {b} | {paper} | {mean_a:.1f} vs {mean_b:.1f} | '
                         f'{mean_a - mean_b:+.1f} | {verdict} |')
    return lines


def _cpu_recipe_row(output: Path) -> str | None:
    """The ``cpu`` preset's run: its evaluation nearest six epochs (the schedule of the rows) and its last."""
    if not (output / 'log.jsonl').exists():
        return None
    points = [e for e in read_events(output, 'timed_eval', 'stage') if 'mAP' in e]
    if not points:
        return None
    seed = json.loads((output / 'config.json').read_text())['seed']
    near_six = min(points, key=lambda p: abs(p['epoch'] - 6))
    last = points[-1]
    return (f'| - | recommended `cpu` recipe (beyond the paper) | gam_resnet50_g4 | - | - | {seed} | '
            f'{near_six["rank1"]:.1f} | {near_six["mAP"]:.1f} | at epoch {near_six["epoch"]:.1f}; at epoch '
            f'{last["epoch"]:.1f}: {last["rank1"]:.1f} / {last["mAP"]:.1f} | - | '
            f'{near_six["train_minutes"]:.0f} | - |')


def _plot(curves: dict, histogram: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ('mAP', 'rank1'), strict=True):
        for index, (name, runs) in enumerate(curves.items()):
            for seed_index, points in enumerate(runs):
                ax.plot([p['epoch'] for p in points], [p[metric] for p in points], marker='o', ms=3,
                        color=f'C{index}', ls='-' if seed_index == 0 else ':',
                        label=name if seed_index == 0 else None)
        ax.axhline(histogram[metric], color='grey', ls='--', label='HSV histogram')
        ax.set_xlabel('epoch (stage ends)')
        ax.set_ylabel(f'market1501-dev test {metric}')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle('the paper\'s rows on the cpu-hour schedule (dotted: a second seed)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    Path(args.runs).expanduser().mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        sweep(args)
    print(report(args))


if __name__ == '__main__':
    main()
