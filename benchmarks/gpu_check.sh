#!/usr/bin/env bash
# The GPU check of mmdet_ghm's Triton path in one command (docs/gpu.md), from the repo root:
#
#   bash benchmarks/gpu_check.sh --fetch     # on a machine with a package index: download the
#                                            # wheels a bare GPU machine lacks into .gpu_wheels/
#   bash benchmarks/gpu_check.sh             # on the CUDA machine: results in $OUT (or
#                                            # /tmp/ghm_gpu_check): results.md, results.json, log
#   bash benchmarks/gpu_check.sh --dry-run   # CPU, Triton interpreter, tiny shapes (no figures)
#
# It never installs or replaces torch or triton: the carried wheels (mmengine, mmcv-lite, mmdet
# and the few pure-Python/binary packages they import that a CUDA image lacks) go into a separate
# folder put first on PYTHONPATH, without dependencies, and only when mmdet is not importable.
# Extra arguments go to gpu_check.py (e.g. --steps parity,syncs --budget 300).
# Environment: PY (default python3), GHM_WHEELS (default .gpu_wheels), OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY="${PY:-python3}"
WHEELS="${GHM_WHEELS:-.gpu_wheels}"
RESULTS="${OUT:-/tmp/ghm_gpu_check}"
# mmdet 3.3 / mmengine 0.10.7 / mmcv-lite 2.1 and what `import mmdet.models` needs beyond a CUDA
# image with torch, numpy, scipy, matplotlib, pyyaml, rich, opencv, pillow, six, tqdm
STACK="mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0 addict terminaltables termcolor yapf
platformdirs pycocotools shapely"

if [ "${1:-}" = "--fetch" ]; then
    mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${GHM_PY:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $STACK
fi

mkdir -p "$RESULTS"
if [ "${1:-}" != "--dry-run" ]; then
    unset TRITON_INTERPRET
    if ! "$PY" -c "import mmdet" 2>/dev/null; then
        if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
            SITE="${TMPDIR:-/tmp}/ghm_gpu_site"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl \
                && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        else
            echo "gpu_check.sh: no mmdet and no wheels in $WHEELS: the mmdet parity is skipped" >&2
        fi
    fi
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | head -3
# the check keeps to its budget (450 s by default); timeout is the backstop
timeout -k 10 480 "$PY" benchmarks/gpu_check.py --out "$RESULTS" "$@" 2>&1 \
    | tee "$RESULTS/log.txt"
exit "${PIPESTATUS[0]}"
