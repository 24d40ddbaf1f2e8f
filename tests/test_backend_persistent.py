"""The one-launch forward (``triton_engine.PERSISTENT_FWD``, codegen's ``sum_fwd_all``):
consecutive sum layers that are not batched products run as one launch whose programs meet at a
grid barrier between layers. It computes the same tiles with the same code as the per-layer
launches, so every value row must be equal bit for bit, on every circuit of the gather tests and at
batches that fill one, two or several batch tiles. On the CPU interpreter one program does every
item (its programs run one after the other); with ``--device cuda`` every SM runs one, and the
repeated runs below would show a race between programs as a difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_bmm import _every_layer
from test_backend_gathers import CIRCUITS, _assert_ll_matches_reference
from test_backend_helpers import data_for

from pcir import knobs, structures
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _forward(m, x, miss, persistent: bool, monkeypatch):
    """(V, M, runs) of the engine's forward with the one-launch runs on or off."""
    monkeypatch.setattr(te, "PERSISTENT_FWD", persistent)
    eng = m._engine()
    eng._fwd_runs.clear()
    xf, _ = m._prepare(x, miss, defer=True)
    m._normalised_cached()
    _, _, logp, W = m._cache
    with torch.no_grad():
        V, M = eng.forward(W, logp, m.gauss, xf, precompile=False)
    return V, M, eng._forward_runs(xf.shape[0])


def _sum_runs_expected(eng, B: int) -> int:
    """How many one-launch runs the layer list allows: maximal stretches of at least two
    consecutive sum layers that are not batched products, split where the gather form changes."""
    runs, length, cg = 0, 0, None
    for L in [*eng.layers, None]:
        ok = L is not None and isinstance(L, te._SumLayer) and not eng.use_bmm(L, B)
        if ok and length and L.contig == cg:
            length += 1
            continue
        runs += length >= te.PERSISTENT_MIN_LAYERS
        length, cg = (1, L.contig) if ok else (0, None)
    return runs


@pytest.mark.parametrize("B", [1, 17, 64])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_one_launch_forward_equals_the_per_layer_launches(name, B, triton_device, monkeypatch):
    """At batch 64 both on 64-sample batch-major tiles (sum_tile_fwdt): the per-layer launches'
    32-sample tiles for small layers off, the one-launch forward's tiles up to 64."""
    if B == 64:
        monkeypatch.setattr(te, "SMALL_LAYER", 0.0)
        monkeypatch.setattr(te, "PERSISTENT_BB", 64)
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, B, seed=B, p_missing=0.2)
    V0, M0, runs0 = _forward(m, x, miss, False, monkeypatch)
    assert all(l1 - l0 == 1 for l0, l1 in runs0)
    V1, M1, runs1 = _forward(m, x, miss, True, monkeypatch)
    eng = m._engine()
    multi = [(l0, l1) for l0, l1 in runs1 if l1 - l0 > 1]
    assert len(multi) == _sum_runs_expected(eng, B)
    assert [i for l0, l1 in runs1 for i in range(l0, l1)] == list(range(len(eng.layers)))  # each once, in order
    for l0, l1 in multi:
        assert all(isinstance(L, te._SumLayer) for L in eng.layers[l0:l1])
        assert len({L.contig for L in eng.layers[l0:l1]}) == 1
    torch.testing.assert_close(V1, V0, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(M1, M0, rtol=0, atol=0, equal_nan=True)
    if multi:  # the barriers ran: each program arrived once per layer boundary of its run
        bar = eng._fwd_all[4].cpu()
        P = 1 if triton_device == "cpu" else None
        for l0, l1 in multi:
            arrivals = int(bar[l0])
            assert arrivals % (l1 - l0 - 1) == 0 and arrivals > 0
            if P is not None:
                assert arrivals == P * (l1 - l0 - 1)
    _assert_ll_matches_reference(m, c, x, miss)


def test_every_gather_circuit_with_two_sum_layers_gets_a_run(triton_device, monkeypatch):
    """The test above is not vacuous: most circuits have a run of two or more layers at batch 1."""
    with_runs = []
    for name, make in sorted(CIRCUITS.items()):
        m = pc_compile(make(), engine="triton", device=triton_device, precision="fp32")
        eng = m._engine()
        eng._fwd_runs.clear()
        if any(l1 - l0 > 1 for l0, l1 in eng._forward_runs(1)):
            with_runs.append(name)
    assert {"hclt", "hmm", "pd"} <= set(with_runs)


def test_runs_stop_at_batched_products(triton_device, monkeypatch):
    """With every layer a batched product (at any batch), no layer is left for a one-launch run,
    and the forward still matches the reference."""
    _every_layer(monkeypatch)
    c = CIRCUITS["hclt"]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    x, miss = data_for(c, 8, seed=3)
    runs = eng._forward_runs(8)
    for l0, l1 in runs:
        if l1 - l0 > 1:
            assert not any(eng.use_bmm(L, 8) for L in eng.layers[l0:l1])
    assert _sum_runs_expected(eng, 8) == sum(l1 - l0 > 1 for l0, l1 in runs)
    _assert_ll_matches_reference(m, c, x, miss)


def test_the_layer_tables_are_views_of_one_buffer(triton_device):
    """The per-layer launches read views of the one-launch forward's buffers (no second copy),
    each starting 16-byte aligned, and holding the layer's own table."""
    c = CIRCUITS["pd"]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    LT, COLS, TAB, LIST, _ = eng._fwd_all
    lt = LT.view(-1, 6).cpu().numpy()
    for i, L in enumerate(eng.layers):
        if not isinstance(L, te._SumLayer):
            continue
        for t, buf, field in ((L.cols, COLS, 4), (L.fwd, TAB, 2), (L.fwd_list, LIST, 3)):
            assert t.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
            off = (t.data_ptr() - buf.data_ptr()) // t.element_size()
            assert off == lt[i, field] and t.data_ptr() % 16 == 0
        assert lt[i, 0] == L.variant and lt[i, 1] == L.n_fwd and lt[i, 5] == L.arity


@pytest.mark.parametrize("B", [1, 40])
def test_one_launch_forward_is_stable_over_repeated_runs(B, triton_device, monkeypatch):
    """A larger HCLT (many programs per layer on a GPU): ten one-launch forwards, each equal to the
    per-layer forward bit for bit (a missing barrier shows as a run that differs); both on the
    same batch tiles."""
    monkeypatch.setattr(te, "SMALL_LAYER", 0.0)
    monkeypatch.setattr(te, "PERSISTENT_BB", 64)
    rng = np.random.default_rng(1)
    n_vars = 12 if triton_device == "cpu" else 40
    data = rng.integers(0, 4, (300, n_vars))
    c = structures.hclt(data, num_latents=8 if triton_device == "cpu" else 64)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, B, seed=5)
    V0, _, _ = _forward(m, x, miss, False, monkeypatch)
    for _ in range(2 if triton_device == "cpu" else 10):
        V1, _, runs = _forward(m, x, miss, True, monkeypatch)
        assert any(l1 - l0 > 1 for l0, l1 in runs)
        torch.testing.assert_close(V1, V0, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("ap", [1, 2, 4])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_wide_gathers_equal_the_one_input_gathers(name, ap, triton_device, monkeypatch):
    """The forward's gathers over ``ap`` inputs at once (codegen's _gather_wide, per-layer and one
    launch) against one input at a time (_gather): the same values up to the order of the
    additions over a column's inputs. ``ap`` 1 and 2 loop over the inputs of wider columns."""
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, 9, seed=2, p_missing=0.2)
    monkeypatch.setattr(te, "WIDE_AP", 0)
    V0, _, _ = _forward(m, x, miss, False, monkeypatch)
    monkeypatch.setattr(te, "WIDE_AP", ap)
    for persistent in (False, True):
        V1, _, _ = _forward(m, x, miss, persistent, monkeypatch)
        torch.testing.assert_close(V1, V0, rtol=1e-6, atol=1e-6, equal_nan=True)
