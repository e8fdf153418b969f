"""The README's first command: ``python recipes/unsup_reid.py`` with no arguments, as a user meets it.

It generates the synthetic set, trains the tiny GAM network through the whole staged schedule and must
end with better retrieval than it started with (about two minutes on two cores).
"""
import json

from recipe_scripts import load_recipe


def test_default_command_learns(default_run):
    output, printed = default_run
    assert '[eval] untrained:' in printed
    metrics = json.loads((output / 'metrics.json').read_text())
    preset = load_recipe('unsup_reid').PRESETS['synthetic']
    assert metrics['model'] == preset['model'] == 'test_gam_resnet'
    counts = [stage['num_clusters'] for stage in metrics['history']]
    assert len(counts) == preset['stages'] + 1 and counts == sorted(counts, reverse=True)
    assert metrics['mAP'] > metrics['untrained']['mAP'] + 1, metrics  # measured: 12.6 -> 16.6
