#!/usr/bin/env bash
# s19 call 1: VEC chained forms: GPU tests of the chain/replay files, probe A/B, B1/B8 beside PyJuice
set -u
O=$OUT; T0=$SECONDS
S=/tmp/pcir-gpu-check-site
python3 -m pip install -q --no-index --no-deps --target $S .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$S:$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc PCIR_CACHE_DIR=/tmp/pc TORCH_EXTENSIONS_DIR=/tmp/te
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; echo "tree: $(bash scripts/tree_hash.sh)"; } > $O/card.txt
cat $O/card.txt
python3 bench/pyjuice_prebuild.py > $O/pyjuice-prebuild.log 2>&1 &
PB=$!
timeout 150 python3 -m pytest --device cuda -n 8 -p no:cacheprovider tests/test_backend_chain.py tests/test_backend_replay.py tests/test_backend_trainstep.py > $O/tests.log 2>&1
echo "tests rc $? at $((SECONDS-T0)) s"; grep -E "passed|failed" $O/tests.log | tail -2; grep "^FAILED" $O/tests.log | head
timeout 170 python3 bench/kernel_probe.py --config hclt-128 --batch 1,2,4,8 --variants base,novec,vec4,vec8,vecsub16,novecbwd --json $O/probe-hclt-128.json > $O/probe-hclt-128.log 2>&1
echo "probe128 rc $? at $((SECONDS-T0)) s"; tail -28 $O/probe-hclt-128.log
timeout 80 python3 bench/kernel_probe.py --config hclt-32 --batch 1,8 --variants base,novec,vec8 --json $O/probe-hclt-32.json > $O/probe-hclt-32.log 2>&1
echo "probe32 rc $? at $((SECONDS-T0)) s"; tail -10 $O/probe-hclt-32.log
wait $PB; echo "prebuild done at $((SECONDS-T0)) s"
timeout 150 python3 bench/run.py --configs hclt-128-B1,hclt-128-B8 --budget-s 120 --config-timeout-s 70 --json $O/bench.json > $O/bench.log 2>&1
echo "bench rc $? at $((SECONDS-T0)) s"
python3 bench/run.py --from-json $O/bench.json > $O/bench.md 2>&1; head -30 $O/bench.md
