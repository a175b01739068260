#!/usr/bin/env bash
# Creates (first run) or reuses (later runs, seconds) the project environment in .venv/.
# Sourced by tools/main.sh and tools/test.sh; safe to run on its own: `bash tools/env.sh`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
# Bump STACK when a pin changes: the stamp makes a second run skip every install.
STACK="torch==2.13.0 mmengine==0.10.7 mmcv==2.1.0 mmdet==3.3.0 triton==3.9.0 openmim==0.3.9 tensorboard==2.21.0 r5"
STAMP="$VENV/.mmdet_ghm_stack"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STACK" ] && "$PY" -c "import mmdet_ghm" 2>/dev/null; then
    return 0 2>/dev/null || exit 0
fi

START=$SECONDS
step() { echo "[env] step $1/7 ($((SECONDS - START)) s): $2"; }
echo "[env] setting up $VENV (the first time: about 15 min on 2 cores, most of it building mmcv)"
step 1 "python venv and pip"
[ -x "$PY" ] || python3 -m venv "$VENV"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
pip_install --upgrade "pip>=24"
step 2 "torch 2.13.0 (CPU)"
# torch 2.13.0 is a CPU wheel on this machine's disk; any looser spec pulls a multi-GB CUDA build.
pip_install torch==2.13.0
step 3 "build tools"
# mmcv's setup.py imports pkg_resources (setuptools < 81); torch 2.13 wants setuptools >= 77.0.3.
pip_install "setuptools>=77.0.3,<81" wheel ninja "numpy<2.5" packaging
if ! "$PY" -c "import mmcv, mmcv.ops" 2>/dev/null; then
    step 4 "mmcv 2.1.0 with its ops: compiled from source, about 13 min on 2 cores (pip caches the wheel: seconds on a later set-up)"
    MMCV_START=$SECONDS
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" pip_install --no-build-isolation mmcv==2.1.0
    echo "[env] mmcv ready in $((SECONDS - MMCV_START)) s"
else
    step 4 "mmcv 2.1.0 with its ops: already installed"
fi
step 5 "mmengine, mmdet, triton, tensorboard, pytest, hypothesis"
pip_install mmengine==0.10.7 mmdet==3.3.0 triton==3.9.0 tensorboard==2.21.0 pytest hypothesis
step 6 "openmim"
# openmim (for `mim train`) drags in openxlab, which pins an old setuptools: install it without
# that dependency chain, then the few packages `mim train` really needs.
pip_install --no-deps openmim==0.3.9 model-index ordered-set markdown
pip_install click colorama rich tabulate requests "pandas<3" "setuptools>=77.0.3,<81"
step 7 "mmdet_ghm (editable)"
pip_install --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import torch, mmcv, mmcv.ops, mmdet, mmengine, triton, tensorboard, mmdet_ghm; print('[env] torch', torch.__version__, '| mmcv', mmcv.__version__, '| mmdet', mmdet.__version__, '| mmengine', mmengine.__version__, '| triton', triton.__version__, '| tensorboard', tensorboard.__version__)"
echo "[env] ready in $((SECONDS - START)) s"
echo "$STACK" > "$STAMP"
