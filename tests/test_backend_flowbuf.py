"""The backward's flow buffer is not zero-filled where an exclusive layer's backward stores every
sample's flow (``TritonEngine._flow_zero_rows``). With those rows poisoned (``FLOW_POISON``: NaN
instead of whatever memory held), every flow and parameter flow must equal the zero-filled
buffer's (up to the order of atomic adds), on every circuit of the gather tests, with the batched products on and off."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_backend_bmm import _every_layer
from test_backend_gathers import CIRCUITS
from test_backend_helpers import data_for, engine_pass

from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _pass(c, device, x, miss, monkeypatch, skip: bool, bmm: bool, runs: int = 16):
    """(engine, V, M, F, PF) with the zero-fill skipped on stored rows (poisoned) or not; the rows
    to zero as ranges when at most ``runs`` of them, else as one indexed fill."""
    _every_layer(monkeypatch, bmm)
    monkeypatch.setattr(te, "FLOW_ZERO_RUNS", runs)
    monkeypatch.setattr(te, "FLOW_SKIP_MIN", 0.0 if skip else 2.0)
    monkeypatch.setattr(te, "FLOW_POISON", math.nan if skip else None)
    m = pc_compile(c, engine="triton", device=device, precision="fp32")
    return (m._engine(), *engine_pass(m, x, miss))


@pytest.mark.parametrize("runs", [16, 0])
@pytest.mark.parametrize("bmm", [False, True])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_flows_without_the_zero_fill_equal_the_zero_filled(name, bmm, runs, triton_device, monkeypatch):
    c = CIRCUITS[name]()
    x, miss = data_for(c, 37, seed=3, p_missing=0.2)
    eng, *skipped = _pass(c, triton_device, x, miss, monkeypatch, skip=True, bmm=bmm, runs=runs)
    assert eng.flow_zero is not None
    assert isinstance(eng.flow_zero, torch.Tensor) == (runs == 0)
    eng0, *filled = _pass(c, triton_device, x, miss, monkeypatch, skip=False, bmm=bmm)
    assert eng0.flow_zero is None
    for what, a, b in zip(("V", "M", "F", "PF"), skipped, filled, strict=True):
        a, b = a.cpu().numpy(), b.cpu().numpy()
        assert not np.isnan(a).any(), f"{what}: a row no launch writes kept the poison"
        # equal up to the order of the atomic adds of layers that share child rows (GPU)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=what)


def _rows_left_unfilled(eng) -> int:
    zero = eng.flow_zero
    n = eng.plan.num_rows
    if isinstance(zero, torch.Tensor):
        return n - zero.numel()
    return n - sum(b - a for a, b in zero)


def test_hclt_skips_the_fill_on_every_row_but_a_few(triton_device):
    """HCLT's layers are all exclusive: only the zero row is filled (the root's is set)."""
    c = CIRCUITS["hclt"]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    assert all(L.exclusive for L in m.plan.layers if L.kind == "sum")
    assert eng.flow_zero == [(0, 1)]
    assert _rows_left_unfilled(eng) == m.plan.num_rows - 1


def test_a_row_wrongly_left_unfilled_shows(triton_device, monkeypatch):
    """The check above can fail: a row that a layer adds to (not stores) left out of the fill
    keeps the poison, and the flows differ."""
    c = CIRCUITS["mixed"]()
    monkeypatch.setattr(te, "FLOW_SKIP_MIN", 0.0)
    monkeypatch.setattr(te, "FLOW_POISON", math.nan)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    added = [L for L in eng.layers if isinstance(L, te._SumLayer) and not L.exclusive]
    assert added, "mixed has layers whose children are shared"
    victim = int(added[0].cols[added[0].cols != 0][0])
    zero = eng.flow_zero
    rows = zero.cpu().numpy() if isinstance(zero, torch.Tensor) else np.concatenate([np.arange(a, b) for a, b in zero])
    assert victim in rows
    eng.flow_zero = torch.as_tensor(rows[rows != victim], dtype=torch.long, device=eng.device)
    x, miss = data_for(c, 9, seed=1)
    _, _, F, PF = engine_pass(m, x, miss)
    assert np.isnan(F.cpu().numpy()).any() or np.isnan(PF.cpu().numpy()).any()
