#!/usr/bin/env bash
# pcir's main job, on a fresh machine:
#   1. set up a virtual environment with pcir,
#   2. check the example circuit examples/nltcs_hclt.pc (an HCLT over the 16 NLTCS variables),
#   3. run the default pass pipeline, writing the IR after every pass to runs/main/ir/,
#   4. compile it and train it with mini-batch EM on the NLTCS data shipped with pcir
#      (on the GPU when there is one, else on the CPU), printing progress and the held-out
#      (validation and test) log-likelihood; checkpoints and report.json land in runs/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q -e '.[plot]'
else  # no GPU: take the CPU build of torch (the plain one is a multi-GB CUDA download)
  .venv/bin/python -m pip install -q -c constraints-ci.txt -e '.[plot]'
fi
PCIR=.venv/bin/pcir
EPOCHS=${EPOCHS:-5}
set -x
$PCIR check examples/nltcs_hclt.pc
$PCIR opt examples/nltcs_hclt.pc --dump-dir runs/main/ir --stats -o runs/main/nltcs_hclt.opt.pcir
$PCIR train examples/nltcs_hclt.pc --data nltcs --epochs "$EPOCHS" --out runs/main/train --overwrite
