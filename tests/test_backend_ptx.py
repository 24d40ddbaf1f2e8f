"""The flow atomics (column flows, batched-product scatter, product flows) compile to Hopper's
vector atomics (``atom...add.v4.f32``): their masks depend only on positions, not on the values
added (docs/backend.md). (The counts' and parameter flows' atomics stay scalar: their addresses
come from the tile tables, so Triton cannot prove them 16-byte aligned.) A per-value mask, such as
the ``fc != 0`` one removed in the eighth session (pd-64's backward 1.82 -> 1.27 ms on an H200),
makes Triton emit one scalar atomic per element. The kernels are lowered to sm_90 PTX on this
machine, in a process without Triton's interpreter (tests/_ptx_atomics.py); no GPU is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _atomics(tmp_path, *args: str) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    env["PCIR_CACHE_DIR"] = str(tmp_path / "pcir")
    r = subprocess.run(
        [sys.executable, str(HERE / "_ptx_atomics.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if r.returncode != 0 and "ptxas" in r.stderr.lower() and "not found" in r.stderr.lower():
        pytest.skip("no ptxas for sm_90 on this machine")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_flow_atomics_are_vector_atomics(tmp_path):
    got = _atomics(tmp_path)
    assert set(got) == {
        "sum_bwd_cols_v0",
        "sum_cols_scatter",
        "product_bwd",
        "sum_bwd_cols_v0:excl",
        "sum_cols_scatter:excl",
        "sum_bwd_cols_v0:excl_sc",
        "sum_cols_scatter:excl_sc",
    }
    for name, ops in got.items():
        if ":excl" in name:
            # an exclusive layer's flows are plain stores, vector ones although the leaves' rows
            # are shifted (codegen._flow_row: the shift is per row, constant along the samples)
            assert ops == ["st.global.v4.b32"], (name, ops)
            continue
        assert "atom.global.gpu.relaxed.add.v4.f32" in ops, (name, ops)
        assert "atom.global.gpu.relaxed.add.f32" not in ops, (name, ops)


def test_a_value_mask_would_make_them_scalar(tmp_path):
    """The check above can fail: with the value mask put back, the same kernels add one float at
    a time."""
    got = _atomics(tmp_path, "--value-mask")
    for name, ops in got.items():
        if ":excl" in name:
            continue
        assert "atom.global.gpu.relaxed.add.f32" in ops, (name, ops)
        assert not any(".v4." in op or ".v2." in op for op in ops), (name, ops)
