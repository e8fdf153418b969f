"""The dev-test curve of one training run, as a markdown table: every evaluation in its log, in order.

    python experiments/training_curve.py ~/.cache/timm-gam/runs/g4-full

One row per evaluation (the untrained one, the ``--eval-every-min`` marks, each stage's end): the epoch
reached, training minutes (the trainer's clock: evaluations not counted, a run stopped with SIGSTOP
counted), the learning rate of the last finished epoch, the clusters and their purity (against the
training images' file-name identities, which training never reads), and rank-1/5/10 and mAP on
query/gallery. Read through ``run_log.evaluation_curve``, so a resumed run's repeated records count once.
"""
import argparse
from pathlib import Path

from timm_gam.reid.run_log import evaluation_curve, read_events

COLUMNS = {'epoch': '{:.1f}', 'train_minutes': '{:.1f}', 'lr': '{:g}', 'num_clusters': '{:,}',
           'cluster_purity': '{:.3f}', 'rank1': '{:.1f}', 'rank5': '{:.1f}', 'rank10': '{:.1f}',
           'mAP': '{:.1f}'}
HEADER = ['epoch', 'train min', 'lr', 'clusters', 'purity', 'rank-1', 'rank-5', 'rank-10', 'mAP']


def rows(run: Path) -> list[dict]:
    """Each evaluation of ``run`` with the learning rate of the last epoch finished before it."""
    epochs = read_events(run, 'epoch')
    table = []
    for point in evaluation_curve(run):
        finished = [e for e in epochs if e['time'] <= point['time']]
        table.append({'epoch': 0.0, **point, 'lr': finished[-1].get('lr') if finished else None})
    return table


def markdown(run: Path) -> str:
    lines = ['| ' + ' | '.join(HEADER) + ' |', '|' + '---|' * len(HEADER)]
    for row in rows(run):
        cells = [form.format(row[key]) if row.get(key) is not None else '-' for key, form in COLUMNS.items()]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', help='the --output folder of a recipes/unsup_reid.py run')
    print(markdown(Path(p.parse_args(argv).run).expanduser()))


if __name__ == '__main__':
    main()
