#!/usr/bin/env bash
# README's first command. Sets up (or reuses) .venv, then trains the tiny RetinaNet with GHM-C + GHM-R
# on the embedded shapes dataset (generated into data/ghm_shapes/ on first use) with MMEngine's
# runner, evaluates it with the COCO metric on the val split, and prints where the checkpoint, the
# log and the metrics are. About 9 minutes on 2 idle CPU cores; no GPU, no download of anything.
# On a machine where other jobs use the CPU, OMP_NUM_THREADS=1 bash tools/main.sh is much faster.
#   bash tools/main.sh                                   # the GHM model
#   bash tools/main.sh configs/retinanet_r18-tiny_fpn_focal_shapes.py   # the focal-loss baseline
# Extra arguments go to mmdet_ghm.main_job (e.g. --work-dir DIR, --cfg-options key=value ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/env.sh"
cd "$ROOT"
CONFIG="configs/retinanet_r18-tiny_fpn_ghm_shapes.py"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then CONFIG="$1"; shift; fi
exec "$ROOT/.venv/bin/python" -m mmdet_ghm.main_job "$CONFIG" --target-map50 0.7 "$@"
