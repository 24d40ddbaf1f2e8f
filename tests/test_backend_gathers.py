"""The sum kernels' two ways to find a column's rows and the two forward layouts, against the
reference evaluator.

* Contiguous gathers (``codegen.COL_ROWS``, ``CG``): a layer whose column tables read consecutive
  rows (HCLT, HMM) reads only the first row of each input; others read the whole table.
* Table-driven layers run the kernels with the arity unrolled (``codegen.static_arity``, names
  ending in ``s``), or with the arity a runtime argument.
* Short sum launches of few tiles on contiguous layers run on batch tiles of 32 instead of 64
  (``SMALL_LAYER``).
* The forward runs feature-major (``sum_fwd``) on batch tiles under 64 and batch-major
  (``sum_fwdt``) on tiles of 64.
* Dense layers (every node tile meets every column tile) loop over the tile index (``DENSE``);
  block-sparse ones over a list of the occupied tiles.

Each case runs with contiguous gathers on and off, unrolled arity on and off, dense loops on and
off, at a batch of each forward layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_helpers import CASES, data_for, engine_pass

from pcir import knobs, structures
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te
from pcir.backend.plan import contiguous_columns
from pcir.ir import CircuitBuilder, Dist, Domain, verify
from pcir.ir import evaluator as ev


def block_sparse():
    """A sum layer with empty 16x16 tiles (block-diagonal 32 x 32 units), whose loops skip them."""
    b = CircuitBuilder(seed=3)
    xs = b.variables(3, Domain.categorical(3))
    a = b.input(xs[0], 32, Dist.make("categorical", k=3))
    c = b.input(xs[1], 32, Dist.make("categorical", k=3))
    d = b.input(xs[2], 32, Dist.make("categorical", k=3))
    s = b.sum([b.product([a, c])], 32, mask=np.eye(2, dtype=bool), block=(16, 16), attrs={"bs": 16})
    top = b.sum([b.product([s, d])], 32, mask=np.array([[True, False], [True, True]]), block=(16, 16))
    b.root(b.sum([top], 1))
    return verify(b.build())


CIRCUITS = {
    **{name: make for name, make in CASES.items()},
    "block_sparse": block_sparse,
    "hclt": lambda: structures.hclt(np.random.default_rng(0).integers(0, 3, (200, 5)), num_latents=4),
    "hmm": lambda: structures.hmm(5, 4, 6),
    "pd": lambda: structures.pd(
        data_shape=(2, 4), num_latents=4, split_intervals=(2, 2), input_dist="categorical(k=3)"
    ),
}


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _sum_layers(m) -> list:
    return [L for L in m._engine().layers if isinstance(L, te._SumLayer)]


def _assert_ll_matches_reference(m, c, x, miss) -> None:
    """The model's log-likelihoods against the reference evaluator's (the same samples finite)."""
    with torch.no_grad():
        ll = m(x, miss).cpu().double().numpy()
    ref = ev.log_likelihood(c, x, miss)
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(ll))
    np.testing.assert_allclose(ll[fin], ref[fin], rtol=1e-4, atol=1e-4)


def _contig_layers(m) -> list[bool]:
    return [L.contig for L in _sum_layers(m)]


def test_contiguity_is_detected_exactly():
    step = np.arange(4)
    assert contiguous_columns(np.stack([5 + step, 9 + step], 1))
    assert contiguous_columns(np.stack([5 + step, 0 * step], 1))  # padding: row 0 throughout
    assert not contiguous_columns(np.stack([5 + step, 9 + step[::-1]], 1))
    assert not contiguous_columns(np.stack([0 * step + 5, 9 + step], 1))  # one row repeated
    assert not contiguous_columns(np.stack([step, 9 + step], 1))  # starts at row 0, then moves on


def test_the_cases_cover_both_gathers(triton_device):
    seen = set()
    for make in CIRCUITS.values():
        seen.update(_contig_layers(pc_compile(make(), engine="triton", device=triton_device, precision="fp32")))
    assert seen == {True, False}


def test_unrolled_kernels_are_emitted_only_for_table_driven_layers():
    from pcir.backend.codegen import generate
    from pcir.backend.plan import lower

    for name, make in CIRCUITS.items():
        plan = lower(make())
        text = generate(plan)
        table = any(L.kind == "sum" and not L.contiguous() for L in plan.layers)
        assert ("def sum_fwd_v0s(" in text) == table, name


def test_dense_loops_are_detected_exactly(triton_device, monkeypatch):
    """Every HCLT/HMM/PD layer is dense; the block-sparse circuit's two layers are not, in the
    direction that has empty tiles (its top layer has a full first column of tiles)."""
    monkeypatch.setattr(te, "DENSE_LOOP", True)
    for name in ("hclt", "hmm", "pd"):
        m = pc_compile(CIRCUITS[name](), engine="triton", device=triton_device, precision="fp32")
        assert all(L.dense_fwd and L.dense_col for L in _sum_layers(m)), name
    m = pc_compile(block_sparse(), engine="triton", device=triton_device, precision="fp32")
    dense = [(L.dense_fwd, L.dense_col) for L in _sum_layers(m)]
    assert dense == [(False, False), (False, False), (True, True)]


@pytest.mark.parametrize(
    "contig, static, small, dense, fused",
    [
        (True, True, 0, False, True),
        (False, True, 0, False, True),
        (True, False, 0, False, True),
        (True, True, 1e9, False, True),
        (True, True, 0, True, True),
        (False, False, 0, True, True),
        (True, True, 0, False, False),  # the backward's four separate launches
        (False, False, 1e9, False, False),
    ],
)
@pytest.mark.parametrize("batch", [5, 70])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_gathers_and_forward_layouts_match_reference(
    name, batch, contig, static, small, dense, fused, triton_device, monkeypatch
):
    monkeypatch.setattr(te, "BWD_FUSED", fused)
    monkeypatch.setattr(te, "FUSE_MM_MAX_TILES", float("inf") if batch > 8 else -1.0)  # both forms
    monkeypatch.setattr(te, "DENSE_LOOP", dense)
    monkeypatch.setattr(te, "CONTIG_GATHER", contig)
    monkeypatch.setattr(te, "SMALL_LAYER", small)  # 1e9: contiguous launches of 64-sample tiles on 32
    monkeypatch.setattr(te, "SMALL_LAYER_LOOP", 1 << 30 if small else te.SMALL_LAYER_LOOP)
    monkeypatch.setattr(te, "STATIC_GATHER", static)
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    layers = _sum_layers(m)
    table = [not L.contiguous() for L in m.plan.layers if L.kind == "sum"]
    assert [L.contig for L in layers] == [contig and not t for t in table]
    # exactly the table-driven layers take the unrolled kernels, and only when asked to
    assert [L.sfx for L in layers] == ["s" if static and t else "" for t in table]
    if not dense:
        assert not any(L.dense_fwd or L.dense_col for L in layers)
    elif name in ("hclt", "hmm", "pd"):
        assert all(L.dense_fwd and L.dense_col for L in layers)
    x, miss = data_for(c, batch, seed=batch, p_missing=0.2)
    _assert_ll_matches_reference(m, c, x, miss)
    m.zero_flows()
    m.forward_backward(x, miss)
    for pname, pf in ev.flows(c, x, miss).param.items():
        got = m.param_flows(pname).cpu().double().numpy()
        np.testing.assert_allclose(got, pf, rtol=2e-4, atol=1e-4, err_msg=pname)


def test_batch_tile_of_sum_launches(monkeypatch):
    class _L:  # what _tile_for reads of a layer
        def __init__(self, contig):
            self.contig = contig

    eng = te.TritonEngine.__new__(te.TritonEngine)
    eng.sms = 100
    monkeypatch.setattr(te, "SMALL_LAYER", 1.0)
    monkeypatch.setattr(te, "SMALL_LAYER_LOOP", 512)
    assert eng._tile_for(_L(True), 99, 512, 512) == 32  # short, few tiles, contiguous
    assert eng._tile_for(_L(True), 100, 512, 512) == 64  # enough tiles
    assert eng._tile_for(_L(True), 99, 1024, 512) == 64  # long loop
    assert eng._tile_for(_L(False), 99, 512, 512) == 64  # table-driven
    assert eng._tile_for(_L(True), 99, 512, 20) == 32  # batch of 20: the tile is 32 anyway
    assert eng._tile_for(_L(True), 99, 512, 1) == 16
    monkeypatch.setattr(te, "SMALL_LAYER", 0.0)
    assert eng._tile_for(_L(True), 1, 16, 512) == 64  # off


def test_backward_launches_of_a_sum_layer(monkeypatch):
    class _L:  # what _bwd_shape reads of a layer (not one for batched products)
        contig, max_units, bmm = False, 64, None

        def __init__(self, n_pf, n_col):
            self.n_pf, self.n_col = n_pf, n_col

    eng = te.TritonEngine.__new__(te.TritonEngine)
    eng.sms, eng.target_programs = 10, 40
    monkeypatch.setattr(te, "BWD_FUSED", True)
    monkeypatch.setattr(te, "FUSE_MM_MAX_TILES", 1.0)
    assert eng._bwd_shape(_L(4, 2), 640) == (64, 64, True)  # 4 chunks of 64 samples x 4 tiles; 6 tiles
    assert eng.bwd_launches(_L(4, 2), 640) == 2
    assert eng._bwd_shape(_L(8, 4), 640) == (128, 64, False)  # 12 tiles > 1 x 10 SMs: products apart
    assert eng.bwd_launches(_L(8, 4), 640) == 3
    assert eng.bwd_launches(_L(8, 4), 64) == 3  # whatever the batch
    monkeypatch.setattr(te, "FUSE_MM_MAX_TILES", float("inf"))
    assert eng.bwd_launches(_L(8, 4), 640) == 2
    monkeypatch.setattr(te, "BWD_FUSED", False)
    assert eng.bwd_launches(_L(4, 2), 64) == 4


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["hclt", "pd", "block_sparse", "mixed"])
def test_flows_buffer_after_the_backward(name, fused, triton_device, monkeypatch):
    """What ``F`` holds after the engine's backward (triton_engine's docstring): flows on the rows
    of inputs, and on the rows of sum nodes the scaled flows ``F exp(m - V)`` the sum kernels
    consumed; checked against the reference evaluator's node flows, with the backward's launches
    fused in pairs or not."""
    monkeypatch.setattr(te, "BWD_FUSED", fused)
    monkeypatch.setattr(te, "FUSE_MM_MAX_TILES", float("inf"))
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, 6, seed=2, p_missing=0.2)
    V, M, F, _ = engine_pass(m, x, miss)
    ref = ev.flows(c, x, miss)
    F, V, M = (t.detach().cpu().double().numpy() for t in (F, V, M))
    for b in m.plan.inputs:
        for gname, row, units in b.groups:
            np.testing.assert_allclose(F[row : row + units].T, ref.node[gname], rtol=2e-4, atol=1e-5, err_msg=gname)
    assert m.plan.sum_groups
    for g in m.plan.sum_groups:  # the root's too: it started from flow 1
        f, v = ref.node[g.name].T, V[g.row : g.row + g.units]
        mx = np.where(np.isfinite(M[g.index]), M[g.index], 0.0)[None, :]
        with np.errstate(over="ignore", invalid="ignore"):
            want = np.where((f != 0) & np.isfinite(v), f * np.exp(mx - v), 0.0)
        np.testing.assert_allclose(F[g.row : g.row + g.units], want, rtol=2e-4, atol=1e-5, err_msg=g.name)


@pytest.mark.parametrize("name", ["hclt", "pd", "mixed"])
def test_forward_on_batch_tiles_of_128(name, triton_device, monkeypatch):
    """The sum forward on 128-sample tiles at batches of 1024 or more (triton_engine.FWD_BB_LARGE,
    a probe knob), a partial last tile included, against the reference."""
    monkeypatch.setattr(te, "FWD_BB_LARGE", 128)
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, 1030, seed=3, p_missing=0.2)
    _assert_ll_matches_reference(m, c, x, miss)


@pytest.mark.parametrize("batch_fastest", [True, False])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_leaf_programs_in_either_grid_order(name, batch_fastest, triton_device, monkeypatch):
    """The leaf kernels on a flat grid with batch tiles fastest, or on a (leaf tile, batch tile)
    grid (triton_engine.LEAF_BATCH_FASTEST): the same log-likelihoods as the reference, at a batch
    of two tiles."""
    monkeypatch.setattr(te, "LEAF_BATCH_FASTEST", batch_fastest)
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, 70, seed=4, p_missing=0.2)
    _assert_ll_matches_reference(m, c, x, miss)
