#!/usr/bin/env bash
# README's first command. Sets up (or reuses) .venv, then runs tools/main_job.py: trains the tiny
# RetinaNet with GHM-C + GHM-R on the embedded shapes dataset (generated into data/ghm_shapes/ on
# first use) with MMEngine's runner, recording the GHM density every 25 iterations, evaluates it
# with the COCO metric on the val split, draws the gradient-norm figures of the run, and prints
# where the checkpoint, the log, the metrics and the figures are. About 5 minutes on 2 idle CPU
# cores; no GPU, no download of anything. On a machine where other jobs use the CPU,
# OMP_NUM_THREADS=1 bash tools/main.sh is much faster.
#   bash tools/main.sh                                                   # the GHM model
#   bash tools/main.sh configs/retinanet_r18-tiny_fpn_focal_shapes.py    # the focal-loss baseline
#   bash tools/main.sh --tensorboard                                     # + TensorBoard event files
# Extra arguments go to tools/main_job.py (--work-dir DIR, --cfg-options key=value ...,
# --density-interval N, --tensorboard).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/env.sh"
cd "$ROOT"
CONFIG="configs/retinanet_r18-tiny_fpn_ghm_shapes.py"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then CONFIG="$1"; shift; fi
exec "$ROOT/.venv/bin/python" tools/main_job.py "$CONFIG" --target-map50 0.7 "$@"
