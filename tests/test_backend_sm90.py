"""Every kernel the runtime launches compiles for sm_90 (H100/H200), checked without a GPU.

The CPU tests run the kernels through Triton's interpreter, which checks no types; the GPU suite
is the only other check, and GPU time is scarce. tests/_sm90_compile.py (a process of its own:
no interpreter, Triton's driver replaced by one that names an sm_90 device) turns every launch
into a compile and calls the model's forward, flows, EM, training step and marginals, so each
kernel is compiled with the argument types and constants the engine gives it, under the knobs
below: the defaults, and the forms that are off by default but meant to be switched on (PDL,
dense loops, no aliases). It found, on the CPU, the compile error that had failed the GPU suite
with PDL on (the dense loop's int32 index, thirteenth session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcir.backend import triton_engine as te

HERE = Path(__file__).resolve().parent

CASES = [
    ("hclt", 5, []),
    ("hclt", 70, []),
    ("pd", 70, []),
    ("block_sparse", 5, []),
    ("hmm", 70, []),
    ("tied_bernoulli", 5, []),
    ("scratch_chain", 70, []),
    ("hclt", 5, ["PDL=2", "DENSE_LOOP=True", "--hopper"]),
    ("block_sparse", 70, ["PDL=2", "PDL_FWDT=True", "DENSE_LOOP=True", "--hopper"]),
    ("pd", 5, ["PDL=3", "PDL_FWDT=True", "DENSE_LOOP=True", "--hopper"]),
    ("hclt", 70, ["SUM_ALIAS=False", "LEAF_ALIAS=False"]),
    ("mixed", 5, []),  # gaussian and indicator leaves
    ("mixed", 70, []),
    ("pd", 70, ["BMM_MIN_EDGES=0", "BMM_MIN_EDGES_BWD=0", "BMM_MIN_UNITS=0", "BMM_MIN_FILL=0.0"]),  # batched products
    ("hclt", 70, ["COUNT_SCATTER_K=0"]),  # the tables' counts by scatter
    ("hclt", 70, ["SC_MIN_WARPS=8"]),  # the alias's column kernels on more warps
    ("pd", 5, ["FWD_MIN_WARPS=16"]),  # the forward on more warps
    ("hclt256", 70, []),  # 256 categories: the leaves' rows form on 16 x 256 tiles
    ("hmm", 1, ["--hopper"]),  # the chained forward (one launch for the HMM's steps) with PDL 2
    ("hmm128", 70, ["--hopper"]),  # ... on one 128 x 128 tile a step, 16 warps
    ("hmm", 70, ["CHAIN_BWD=False", "--hopper"]),  # the per-layer backward of a chained run
    ("hclt", 5, []),  # the chained backward (default for steps up to 64 x 64)
    ("hmm128", 70, ["CHAIN_BWD_MAX_TILE=128"]),  # in node sub-tiles of 16 (CHAIN_BWD_SUB_WIDE)
    ("hmm", 1, ["CHAIN_VEC_MAX_B=0"]),  # the chained runs' matrix-product forms at batch 1
    ("hmm128", 1, ["--hopper"]),  # their VEC forward on 128 x 128 steps, the per-layer backward
    ("hmm128", 1, ["CHAIN_VEC_BWD_MAX_TILE=128"]),  # ... and the VEC backward there
    ("hmm128", 2, ["CHAIN_VEC_MAX_B=2", "CHAIN_VEC_BWD_MAX_TILE=128"]),
]


@pytest.fixture(scope="module")
def triton_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("triton-sm90")


@pytest.mark.parametrize(
    ("name", "batch", "knobs"), CASES, ids=[f"{n}-{b}-{'-'.join(k) or 'default'}" for n, b, k in CASES]
)
def test_every_launched_kernel_compiles_for_sm90(name, batch, knobs, triton_cache, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(triton_cache)
    env["PCIR_CACHE_DIR"] = str(tmp_path / "pcir")
    r = subprocess.run(
        [sys.executable, str(HERE / "_sm90_compile.py"), name, str(batch), *knobs],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = r.stdout + r.stderr
    if r.returncode != 0 and "ptxas" in out.lower() and "not found" in out.lower():
        pytest.skip("no ptxas for sm_90 on this machine")
    assert r.returncode == 0, out[-4000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("compiled "), last
    kernels = last.split(": ", 1)[1].split()
    # the paths really compiled something of each kind: the inputs, a sum forward (fused loop or
    # batched product), its flows, EM, the data check
    assert any(k.startswith("input_") for k in kernels), kernels
    assert any(k.startswith("sum_fwd") or k == "sum_log_rows" for k in kernels), kernels
    assert any(k.startswith("sum_bwd") for k in kernels), kernels
    assert "em_sum_rows" in kernels and "check_data" in kernels, kernels
    # the categorical leaves' forward: whole table rows from a batch of 32 on (LEAF_ROWS)
    if name in ("hclt", "hclt256", "pd", "hmm"):
        rows = batch >= te.LEAF_ROWS_MIN_BATCH
        assert ("input_categorical_rows" in kernels) == rows, kernels
        assert ("input_categorical" in kernels) == (not rows), kernels
    # an HMM's steps are one chained launch (triton_engine.CHAIN) unless its layers are products
    if name in ("hmm", "hmm128") and not any(k.startswith("BMM") for k in knobs):
        assert "sum_fwd_chain" in kernels, kernels
        # ... and so is their backward (CHAIN_BWD), where a step fits CHAIN_BWD_MAX_TILE square
        # (the VEC form's cap is CHAIN_MAX_TILE)
        cap = (
            128 if "CHAIN_BWD_MAX_TILE=128" in knobs or "CHAIN_VEC_BWD_MAX_TILE=128" in knobs else te.CHAIN_BWD_MAX_TILE
        )
        fits = name == "hmm" or cap >= 128
        assert ("sum_bwd_chain" in kernels) == ("CHAIN_BWD=False" not in knobs and fits), kernels
