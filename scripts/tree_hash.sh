#!/usr/bin/env bash
# A short hash of the files that decide what a GPU check runs (src, tests, bench, scripts; not
# bench/results), independent of git: scripts/gpu_check.sh records it in card.txt, and this
# command run on a checkout says whether it is the tree that ran.
set -euo pipefail
cd "$(dirname "$0")/.."
find src tests bench scripts -type f \( -name '*.py' -o -name '*.sh' -o -name '*.txt' -o -name '*.pc' \) \
  -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -path 'bench/results/*' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum | sha256sum | cut -c1-12
