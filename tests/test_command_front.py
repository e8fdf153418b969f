"""The ``timm-gam`` command answers help, version and bad input at once: one line, exit status 2, before
torch or timm is imported, and nothing written."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm

import timm_gam_cli

# runs timm_gam_cli.main in a fresh interpreter and reports its exit status, what it printed and which of
# the heavy modules it imported
FRONT_SCRIPT = """
import contextlib, io, json, sys
import timm_gam_cli
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = timm_gam_cli.main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
heavy = sorted(name for name in ('torch', 'timm', 'timm_gam') if name in sys.modules)
print(json.dumps({'code': code, 'out': out.getvalue(), 'err': err.getvalue(), 'heavy': heavy}))
"""


def front(*argv, cwd=None) -> dict:
    result = subprocess.run([sys.executable, '-c', FRONT_SCRIPT, *map(str, argv)], capture_output=True,
                            text=True, cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize('argv', [['--help'], ['--version'], ['extract', '--help'], ['search', '--help'],
                                  ['eval', '--help']], ids=' '.join)
def test_help_and_version_import_nothing_heavy(argv):
    answer = front(*argv)
    assert answer['code'] == 0 and answer['heavy'] == []
    assert answer['out'].strip()
    for markup in ('``', ':mod:', ':func:'):  # RST that argparse would print as it is
        assert markup not in answer['out']


def test_version_is_the_installed_package():
    from importlib.metadata import version
    assert front('--version')['out'].strip() == f'timm-gam {version("timm-gam")}'


def test_eval_help_lists_evaluation_flags_only():
    help_text = front('eval', '--help')['out']
    for flag in ('--checkpoint', '--pretrained', '--data-root', '--output'):
        assert flag in help_text
    for training_flag in ('--warmup-epochs', '--preset', '--merge-percent', '--time-budget-min'):
        assert training_flag not in help_text


# argument lists ({tmp}: the test's folder, holding an empty crops/ folder, gallery.npz and q.jpg) and a word
# the one-line answer must contain
BAD_INPUTS = {
    'missing folder': ('extract --images {tmp}/nope --output {tmp}/out.npz', 'is not a folder'),
    'wrong suffix': ('extract --images {tmp}/crops --output {tmp}/out.npy', 'out.npz'),
    'unknown model': ('extract --images {tmp}/crops --output {tmp}/out.npz --model gam_resnet50_g5',
                      'released: gam_resnet50_g2'),
    'model without weights': ('extract --images {tmp}/crops --output {tmp}/out.npz --model cbam_resnet50',
                              '--checkpoint'),
    'missing checkpoint': ('extract --images {tmp}/crops --output {tmp}/out.npz --checkpoint {tmp}/none.pt',
                           'does not exist'),
    'top-k 0': ('search --features {tmp}/gallery.npz --query {tmp}/q.jpg --top-k 0', '--top-k'),
    'missing query': ('search --features {tmp}/gallery.npz --query {tmp}/none.jpg', 'none.jpg'),
    'missing gallery': ('search --features {tmp}/none.npz --query {tmp}/q.jpg', 'none.npz'),
    'ranked list not png': ('search --features {tmp}/gallery.npz --query {tmp}/q.jpg --output {tmp}/r.jpg',
                            'r.png'),
    'missing argument': ('extract --images {tmp}/crops', '--output'),
    'eval without data': ('eval --pretrained --data-root {tmp}/nope', 'is not a folder'),
}


@pytest.mark.parametrize('case', list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_before_anything_loads(case, tmp_path):
    (tmp_path / 'crops').mkdir()
    (tmp_path / 'gallery.npz').write_bytes(b'')  # only their existence is looked at before loading
    (tmp_path / 'q.jpg').write_bytes(b'')
    arguments, named = BAD_INPUTS[case]
    before = sorted(tmp_path.rglob('*'))
    answer = front(*arguments.format(tmp=tmp_path).split(), cwd=tmp_path)
    assert answer['code'] == 2
    assert answer['heavy'] == []  # torch and timm never imported: the answer comes at once
    assert answer['out'] == '' and answer['err'].count('\n') == 1 and named in answer['err']
    assert sorted(tmp_path.rglob('*')) == before  # nothing written


def test_the_released_names_are_timms_pretrained_list():
    import timm_gam  # noqa: F401  registers the models

    assert list(timm_gam_cli.RELEASED_WEIGHTS) == timm.list_pretrained('gam_*')
    assert timm_gam_cli.model_problem('cbam_resnet50') and not timm.list_pretrained('cbam_resnet50')
    for name in timm.list_pretrained('gam_*'):
        assert timm_gam_cli.model_problem(name) is None
        assert timm_gam_cli.model_problem(name.split('.')[0]) is None


def test_the_installed_command_answers_bad_input_in_one_line(tmp_path):
    command = Path(sys.executable).parent / 'timm-gam'
    result = subprocess.run([str(command), 'extract', '--images', str(tmp_path / 'nope'), '--output',
                             str(tmp_path / 'x.npz')], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.splitlines() == [f'timm-gam extract: error: {tmp_path / "nope"} is not a folder: '
                                          'pass --images DIR, a folder of person crops']
