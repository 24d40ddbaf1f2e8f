#!/usr/bin/env bash
# On a machine with a CUDA GPU: the whole test suite with the kernels compiled for real, then the
# benchmark suite beside PyJuice, each under a time limit, every log and JSON in one folder.
#
#   bash scripts/gpu_check.sh [OUTDIR]      # default out/gpu-check; on the lent GPU machine (with
#                                           # $OUT and no OUTDIR) one archive, $OUT/gpu-check.tgz
#
# Environment: TESTS_S (seconds for the tests, default 300; 0 skips them; each failure is
# written to failures.txt as it happens), BENCH_S (for the benchmark, default 300; 0 skips it),
# BENCH_CONFIG_S (seconds before one benchmark row is abandoned, default 110), CONFIGS (the benchmark's --configs; default: the rows whose
# peak memory and train step matter most, largest first, because cuBLAS's workspace counts on the
# first row that calls torch.bmm), WORKERS (pytest-xdist workers, default 14), PROBE_S (seconds
# for bench/kernel_probe.py's open variants after the benchmark, default 0: skipped) with
# PROBE_CONFIGS (default hclt-128,hmm-64,hclt-32,pd-32), PROBE_BATCHES (default 1,512) and PROBE_VARIANTS (default base,pdl,pdlwait,pdl+pdlfwdt,fw8,fw16,pdl+fw8);
# AB_S with AB_KNOBS (space-separated NAME=VALUE, e.g. "SUM_ALIAS=False") runs the benchmark's
# rows twice more, pcir only, at the defaults and with those engine knobs, and prints the two side
# by side (bench/ab_compare.py; default 0: skipped). KNOBS (space-separated
# NAME=VALUE, e.g. "PDL=2") sets engine knobs for the tests (pytest --engine-knob) and the
# benchmark (--knob): a candidate default's whole check before it becomes the default.
# Wheels in .whl/ (lark, pyjuice, ...; docs/benchmarks.md) are installed to a private folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
# the lent machine returns at most 8 files from $OUT: there everything goes to a folder of its own
# and comes back as one archive, $OUT/gpu-check.tgz (beside it card.txt and the tables)
PACK=""
if [ $# -eq 0 ] && [ -n "${OUT:-}" ]; then
  PACK=$OUT
  OUTDIR=${TMPDIR:-/tmp}/gpu-check
else
  OUTDIR=${1:-out/gpu-check}
fi
mkdir -p "$OUTDIR"
pack() {  # after every part: a call cut by its time limit still brings back what ran
  [ -n "$PACK" ] || return 0
  tar czf "$PACK/gpu-check.tgz" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")"
  for f in card.txt bench.md bench-ab.md; do [ -s "$OUTDIR/$f" ] && cp "$OUTDIR/$f" "$PACK/"; done
  return 0
}
TESTS_S=${TESTS_S:-300}
BENCH_CONFIG_S=${BENCH_CONFIG_S:-110}
BENCH_S=${BENCH_S:-300}
WORKERS=${WORKERS:-14}
CONFIGS=${CONFIGS:-hclt-512,hclt-128,rat-d5-r16-256,hmm-2048,pd-256,hclt-32,hmm-64,pd-32,hclt-128-B1}
SITE=${TMPDIR:-/tmp}/pcir-gpu-check-site
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >"$OUTDIR/wheels.log" 2>&1 || { echo "installing .whl/*.whl failed: $OUTDIR/wheels.log"; exit 1; }
  export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-${TMPDIR:-/tmp}/pcir-gpu-check-triton} \
  PCIR_CACHE_DIR=${PCIR_CACHE_DIR:-${TMPDIR:-/tmp}/pcir-gpu-check-pcir}
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  # the lent machine's copy of the tree carries a git folder whose HEAD can be stale (three calls
  # of one session all printed the session's first commit): the tree's own hash says what ran;
  # `bash scripts/tree_hash.sh` here gives the same for a commit checked out
  echo "git HEAD (may be stale on a copied tree): $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "tree: $(bash scripts/tree_hash.sh)"
  echo "engine knobs: ${KNOBS:-defaults}"
} >"$OUTDIR/card.txt" 2>&1
cat "$OUTDIR/card.txt"
# PyJuice's small-batch CUDA kernels (nvcc, minutes) build in the background while the tests run;
# the benchmark's rows under batch 16 then find them cached (bench/pyjuice_prebuild.py)
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${TMPDIR:-/tmp}/pcir-gpu-check-torch-ext}
if [ "$BENCH_S" -gt 0 ] && echo ",$CONFIGS," | grep -qE -- "-B(1|2|4|8),"; then
  python3 bench/pyjuice_prebuild.py >"$OUTDIR/pyjuice-prebuild.log" 2>&1 &
fi
rc=0
if [ "$TESTS_S" -gt 0 ]; then
  # no -q here: pyproject's addopts has one, and -qq drops pytest's summary line (the counts)
  tknobs=()
  for kv in ${KNOBS:-}; do tknobs+=(--engine-knob "$kv"); done
  timeout "$TESTS_S" python3 -m pytest --device cuda -n "$WORKERS" -p no:cacheprovider "${tknobs[@]}" \
    --fail-log "$OUTDIR/failures.txt" >"$OUTDIR/tests.log" 2>&1
  trc=$?
  echo "tests: exit $trc ($OUTDIR/tests.log)"
  grep -E "passed|failed|error" "$OUTDIR/tests.log" | tail -3
  # a collection error (a missing wheel, say) stops the run before any test: show why
  grep -q "passed" "$OUTDIR/tests.log" || tail -8 "$OUTDIR/tests.log"
  # written as each test fails, so a run cut off by TESTS_S still names its failures
  [ -s "$OUTDIR/failures.txt" ] && grep "^FAILED" "$OUTDIR/failures.txt" | head -20
  [ "$trc" -eq 0 ] || rc=1
  pack
fi
if [ "$BENCH_S" -gt 0 ]; then
  budget=$((BENCH_S > 120 ? BENCH_S - 60 : BENCH_S / 2))
  bknobs=()
  for kv in ${KNOBS:-}; do bknobs+=(--knob "$kv"); done
  timeout "$BENCH_S" python3 bench/run.py --configs "$CONFIGS" --budget-s "$budget" --config-timeout-s "$BENCH_CONFIG_S" "${bknobs[@]}" \
    --json "$OUTDIR/bench.json" >"$OUTDIR/bench.log" 2>&1
  brc=$?
  echo "bench: exit $brc ($OUTDIR/bench.log)"
  if [ -s "$OUTDIR/bench.json" ]; then
    python3 bench/run.py --from-json "$OUTDIR/bench.json" >"$OUTDIR/bench.md" 2>&1
    tail -40 "$OUTDIR/bench.md"
  fi
  [ "$brc" -eq 0 ] || rc=1
  pack
fi
AB_S=${AB_S:-0}
if [ "$AB_S" -gt 0 ] && [ -n "${AB_KNOBS:-}" ]; then
  # the same rows, pcir only, at the defaults and then with engine knobs changed (bench/run.py
  # --knob), both in this call on this card: an A/B of a default (bench/ab_compare.py)
  knobs=()
  for kv in $AB_KNOBS; do knobs+=(--knob "$kv"); done
  half=$((AB_S / 2))
  timeout "$half" python3 bench/run.py --configs "$CONFIGS" --no-pyjuice --budget-s $((half - 30)) \
    --config-timeout-s 90 --json "$OUTDIR/bench-ab-base.json" >"$OUTDIR/bench-ab-base.log" 2>&1
  echo "bench at the defaults: exit $? ($OUTDIR/bench-ab-base.log)"
  timeout "$half" python3 bench/run.py --configs "$CONFIGS" --no-pyjuice "${knobs[@]}" --budget-s $((half - 30)) \
    --config-timeout-s 90 --json "$OUTDIR/bench-ab.json" >"$OUTDIR/bench-ab.log" 2>&1
  echo "bench with $AB_KNOBS: exit $? ($OUTDIR/bench-ab.log)"
  if [ -s "$OUTDIR/bench-ab-base.json" ] && [ -s "$OUTDIR/bench-ab.json" ]; then
    python3 bench/ab_compare.py "$OUTDIR/bench-ab-base.json" "$OUTDIR/bench-ab.json" | tee "$OUTDIR/bench-ab.md"
  fi
  pack
fi
PROBE_S=${PROBE_S:-0}
if [ "$PROBE_S" -gt 0 ]; then
  end=$((SECONDS + PROBE_S))
  for cfg in $(echo "${PROBE_CONFIGS:-hclt-128,hmm-64,hclt-32,pd-32}" | tr , ' '); do
    left=$((end - SECONDS))
    [ "$left" -gt 20 ] || break
    timeout "$left" python3 bench/kernel_probe.py --config "$cfg" --batch "${PROBE_BATCHES:-1,512}" \
      --variants "${PROBE_VARIANTS:-base,pdl,pdlwait,pdl+pdlfwdt,fw8,fw16,pdl+fw8}" --json "$OUTDIR/probe-$cfg.json" >"$OUTDIR/probe-$cfg.log" 2>&1
    echo "probe $cfg: exit $? ($OUTDIR/probe-$cfg.log)"
    tail -12 "$OUTDIR/probe-$cfg.log"
    pack
  done
fi
pack
[ -n "$PACK" ] && echo "everything: \$OUT/gpu-check.tgz"
exit $rc
