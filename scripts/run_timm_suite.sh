#!/usr/bin/env bash
# Run timm's OWN model test-suite (tests/test_models.py of the installed timm version, shipped in timm's
# source distribution) against the models timm_gam registers, offline, pretrained-weight tests included.
#
# Usage:  bash scripts/run_timm_suite.sh [pytest args, e.g. -x -k forward --durations=10]
#
# Environment (all optional):
#   PYTHON            interpreter with torch, timm, pytest, timm_gam's dependencies     [python]
#   TIMM_MODELS       comma-separated fnmatch globs over model names   [gam_*,cbam_resnet50,acbam_resnet50]
#   TIMM_TESTS_SRC    a timm sdist (.tar.gz) or an unpacked timm source tree; default: the sdist of the
#                     installed timm version, fetched once with `pip download` into TIMM_SUITE_CACHE
#   TIMM_SUITE_CACHE  where that sdist is kept                        [~/.cache/timm-gam/timm_suite]
#
# How: test_models.py builds its parametrize lists from timm's registry at import, so a generated conftest
# imports timm_gam first and then deselects every item whose `model_name` is not one of ours (and timm's
# hand-picked, model-specific tests). The timm_gam modules are added to FEAT_INTER_FILTERS, timm's allow-list
# for the forward_intermediates tests. For the *_pretrained tests every pretrained tag gets a Hub folder,
# the committed release folder hub/<model>.<tag>/ where there is one and random weights otherwise, installed
# into a private Hub cache that the suite reads with HF_HUB_OFFLINE=1: no test touches the network.
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
export TIMM_MODELS="${TIMM_MODELS:-gam_*,cbam_resnet50,acbam_resnet50}"
CACHE="${TIMM_SUITE_CACHE:-$HOME/.cache/timm-gam/timm_suite}"
SUITE="$(mktemp -d -t timm_gam_suite.XXXXXX)"
trap 'rm -rf "$SUITE"' EXIT
export PYTHONPATH="$PROJECT_DIR${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_DISABLE_TELEMETRY=1
mkdir -p "$CACHE"

# 1. tests/test_models.py of exactly the installed timm version
TIMM_VERSION="$("$PY" -c 'import timm; print(timm.__version__)')"
SRC="${TIMM_TESTS_SRC:-$CACHE/timm-$TIMM_VERSION.tar.gz}"
if [ -z "${TIMM_TESTS_SRC:-}" ] && [ ! -f "$SRC" ]; then
    "$PY" -m pip download -q --no-deps --no-binary :all: "timm==$TIMM_VERSION" -d "$CACHE" \
        || { echo "could not download the timm $TIMM_VERSION sdist; set TIMM_TESTS_SRC to a copy" >&2; exit 2; }
fi
if [ -d "$SRC" ]; then
    cp "$SRC/tests/test_models.py" "$SUITE/test_timm_models.py"
else
    tar -xzO -f "$SRC" --wildcards '*/tests/test_models.py' > "$SUITE/test_timm_models.py"
fi

# 2. our registry modules into FEAT_INTER_FILTERS; 3. a Hub folder per pretrained tag in a private cache
"$PY" - "$SUITE" "$PROJECT_DIR" <<'EOF'
import fnmatch, os, re, sys
from pathlib import Path

import timm
import timm_gam  # noqa: F401  (registers the models)
from timm_gam.hub import install_into_hf_cache, save_hub_folder

suite, project = Path(sys.argv[1]), Path(sys.argv[2])
globs = os.environ['TIMM_MODELS'].split(',')
ours = [m for m in timm.list_models() if any(fnmatch.fnmatchcase(m, g) for g in globs)]
if not ours:
    sys.exit(f'no registered model matches TIMM_MODELS={os.environ["TIMM_MODELS"]}')
modules = sorted(m for m in timm.list_modules() if set(timm.list_models(module=m)) & set(ours))

tests = suite / 'test_timm_models.py'
source = tests.read_text()
allow_list = re.search(r'^FEAT_INTER_FILTERS = \[.*?^\]\n', source, flags=re.S | re.M)
assert allow_list, 'FEAT_INTER_FILTERS not found in test_models.py: has timm changed its test-suite?'
addition = f'FEAT_INTER_FILTERS += {modules!r}  # added by timm-gam scripts/run_timm_suite.sh\n'
tests.write_text(source[:allow_list.end()] + addition + source[allow_list.end():])

for tagged in timm.list_pretrained():
    if tagged.split('.')[0] not in ours:
        continue
    folder = project / 'hub' / tagged
    if not (folder / 'model.safetensors').is_file():
        folder = save_hub_folder(timm.create_model(tagged), suite / 'random_weights' / tagged)
    install_into_hf_cache(folder, timm.models.get_pretrained_cfg(tagged).hf_hub_id, cache_dir=suite / 'hf_cache')
print(f'timm {timm.__version__}: {len(ours)} models of {", ".join(modules)}; suite in {suite}')
EOF

# 4. conftest: register our models before collection, keep only the items that test them
cat > "$SUITE/conftest.py" <<'EOF'
import fnmatch
import os

import timm_gam  # noqa: F401

GLOBS = os.environ['TIMM_MODELS'].split(',')


def is_ours(item):
    name = getattr(getattr(item, 'callspec', None), 'params', {}).get('model_name')
    return isinstance(name, str) and any(fnmatch.fnmatchcase(name.split('.')[0], g) for g in GLOBS)


def pytest_collection_modifyitems(config, items):
    config.hook.pytest_deselected(items=[i for i in items if not is_ours(i)])
    items[:] = [i for i in items if is_ours(i)]
EOF
printf '[pytest]\naddopts = -p no:cacheprovider\nfilterwarnings =\n    ignore::pytest.PytestUnknownMarkWarning\n' \
    > "$SUITE/pytest.ini"

# 5. run, offline
cd "$SUITE"
HF_HUB_OFFLINE=1 HF_HUB_CACHE="$SUITE/hf_cache" "$PY" -m pytest -c pytest.ini --rootdir "$SUITE" \
    test_timm_models.py -q -rfEs "$@"
