#!/usr/bin/env bash
# HCLT on Fashion-MNIST (issue 8's image quality bar: bits per dimension on the test set).
# Usage: bash bench/fmnist.sh [FMNIST_DIR] [LATENTS] [EPOCHS] [OUT]
#   FMNIST_DIR: folder with the idx(.gz) files (default: Debian's /usr/share/datasets/fashion-mnist)
set -euo pipefail
DATA=${1:-/usr/share/datasets/fashion-mnist}
LATENTS=${2:-32}
EPOCHS=${3:-20}
OUT=${4:-runs/fmnist}
PCIR=${PCIR:-pcir}
mkdir -p "$OUT"
python3 - "$DATA" "$OUT/train.npy" <<'PY'
import sys, numpy as np
from pcir.data import load_dataset
ds = load_dataset(sys.argv[1])
np.save(sys.argv[2], ds.splits["train"].x)
print("train", ds.splits["train"].x.shape)
PY
t0=$(date +%s)
$PCIR gen hclt --data "$OUT/train.npy" --latents "$LATENTS" --max-rows 20000 --device cuda -o "$OUT/hclt.pcir"
echo "structure built in $(( $(date +%s) - t0 )) s"
$PCIR train "$OUT/hclt.pcir" --data "$DATA" --device cuda --epochs "$EPOCHS" --step-size 0.5 --step-size-final 0.05 \
  --full-epochs 2 --pseudocount 0.1 --no-progress --out "$OUT/train" --overwrite
