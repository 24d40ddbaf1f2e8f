#!/usr/bin/env bash
# Set up a virtual environment (CPU-only pins) and run the whole test suite.
# Kernel tests run real @triton.jit kernels through Triton's CPU interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints-ci.txt -e '.[dev,plot]'
export TRITON_INTERPRET=1 PYTHONHASHSEED=0
# each interpreted launch runs its programs in a shuffled order (seeded per test), as a GPU may:
# a kernel whose programs depend on each other's writes fails here (tests/_program_order.py)
export PCIR_PROGRAM_ORDER=${PCIR_PROGRAM_ORDER:-shuffle}
exec .venv/bin/python -m pytest -n "${PCIR_TEST_WORKERS:-2}" "$@"
