#!/usr/bin/env bash
# Run a command inside the project's Python environment, creating it on first use.
#
#   bash scripts/env.sh python -m pytest                 # the test suite
#   bash scripts/env.sh python recipes/unsup_reid.py     # the default training job
#
# The environment lives outside the checkout (TIMM_GAM_VENV, default ~/.cache/timm-gam/venv) so that
# fresh clones on the same machine reuse it: installing torch takes minutes. It is rebuilt when
# pyproject.toml's dependencies change, and built from nothing when it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TIMM_GAM_VENV:-$HOME/.cache/timm-gam/venv}"
py="${PYTHON:-python3}"
stamp="$venv/.timm-gam-deps"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
    echo "[env] creating $venv" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[env] installing dependencies (torch takes a few minutes the first time)" >&2
    # torch and torchvision pinned to the releases this machine keeps on disk
    "$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$venv/bin/python" -m pip install -q -e "$root[test]"
    echo "$want" > "$stamp"
fi
# the checkout may be a fresh clone elsewhere: point the editable install at this one
if ! "$venv/bin/python" -c "import timm_gam, os, sys; sys.exit(os.path.dirname(timm_gam.__path__[0]) != '$root')" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --no-deps -e "$root"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
exec "$@"
