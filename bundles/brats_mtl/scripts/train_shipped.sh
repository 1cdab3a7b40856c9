#!/usr/bin/env bash
# Train the shipped any-subset model on a CPU, resumably: folds 1-2 of `medmtl prepare --folds 3
# --seed 0` train, fold 0 (9 cases) is held out. A checkpoint is written every epoch and the run
# resumes from the latest one when started again; a checkpoint committed in models/campaign/ seeds a
# fresh run folder so that training can continue on another machine.
#
#   bundles/brats_mtl/scripts/train_shipped.sh [DATASET_DIR] [RUN_DIR]
#   nohup bundles/brats_mtl/scripts/train_shipped.sh > train.log 2>&1 &
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${1:-$HERE/../../../shared/data/brats}"
RUN="${2:-runs/shipped}"
EPOCHS="${EPOCHS:-600}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$RUN/models"
if [ ! -f "$RUN/datalist.json" ]; then
    if [ -f "$HERE/models/campaign/datalist.json" ]; then
        cp "$HERE/models/campaign/datalist.json" "$RUN/datalist.json"  # the campaign's exact split
    else
        medmtl prepare "$DATA" --out "$RUN/datalist.json" --folds 3 --seed 0
    fi
fi
if ! ls "$RUN"/models/checkpoint_epoch=*.pt >/dev/null 2>&1; then
    seed=$(ls "$HERE"/models/campaign/checkpoint_epoch=*.pt 2>/dev/null | tail -1 || true)
    if [ -n "$seed" ]; then
        echo "resuming from $seed"
        cp "$seed" "$RUN/models/"
    fi
fi
exec medmtl train --dataset-dir "$DATA" --datalist "$RUN/datalist.json" --out "$RUN" \
    --stage plain --preset cpu --epochs "$EPOCHS" --set val_interval=10 num_workers=1
