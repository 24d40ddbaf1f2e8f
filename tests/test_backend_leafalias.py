"""The training step's backward keeps the leaves' flows in their value rows (``TritonEngine.backward``
with ``leaf_alias``, ``codegen._flow_row``): the forward allocates ``X [2R - leaf end, B]``, ``V``
is its first ``R`` rows, and the flows ``F`` start ``leaf end`` rows before ``V`` ends, so the flow
buffer has no leaf rows. It applies where every leaf is stored (not added) by an exclusive layer's
backward. With the rows that no launch should need poisoned, every flow, parameter flow and leaf
statistic must equal the plain backward's, on every circuit of the gather tests, with the batched
products on and off; and the training step's flows must be the same with the alias on and off."""

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


def _alias_pass(m, x, miss):
    """(V, M, F, PF, cat, g5) of the engine's leaf-alias forward and backward (as the training
    step runs them), flow 1 at the root."""
    xf, _ = m._prepare(x, miss, defer=True)
    m._normalised_cached()
    _, _, logp, W = m._cache
    eng = m._engine()
    with torch.no_grad():
        V, M = eng.forward(W, logp, m.gauss, xf, precompile=False, flow_rows=True)
        ones = torch.ones((m.plan.root_units, xf.shape[0]), device=xf.device)
        F, PF = eng.backward(W, V, M, xf, ones, leaf_alias=True)
        cat, g5 = eng.input_stats(eng.leaf_flows(V, F, True), xf, m.gauss)
    return V, M, F, PF, cat, g5


def _plain_stats(m, x, miss, F):
    xf, _ = m._prepare(x, miss, defer=True)
    with torch.no_grad():
        return m._engine().input_stats(F, xf, m.gauss)


def _plain_then_poisoned(c, x, miss, device, monkeypatch, **compile_kw):
    """(the plain backward's V, M, F, PF, categorical counts, gaussian statistics; a second model
    of ``c`` whose flow buffer starts poisoned with NaN where no launch should need it)."""
    import pcir

    monkeypatch.setattr(te, "FLOW_POISON", None)
    m0 = pcir.compile(c, engine="triton", device=device, precision="fp32", **compile_kw)
    V0, M0, F0, PF0 = engine_pass(m0, x, miss)
    cat0, g50 = _plain_stats(m0, x, miss, F0)
    monkeypatch.setattr(te, "FLOW_POISON", math.nan)
    m = pcir.compile(c, engine="triton", device=device, precision="fp32", **compile_kw)
    return (V0, M0, F0, PF0, cat0, g50), m


# circuits whose leaves all have one reader, an exclusive layer (the others share leaves)
ALIASED = {"block_sparse", "hclt", "hmm", "pd", "product_root", "zero_probs"}
# and whose first sum layers' rows are each stored by an exclusive layer too (their G in V)
SUM_ALIASED = {"block_sparse", "hclt", "hmm", "pd"}


@pytest.mark.parametrize("bmm", ["off", "on", "chunked"])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_leaf_alias_equals_the_plain_backward(name, bmm, triton_device, monkeypatch):
    """``bmm``: the batched products off, on (each layer at once), or on a group at a time (a
    chunk's scatter writes its leaves' flows over values no later chunk reads)."""
    c = CIRCUITS[name]()
    x, miss = data_for(c, 37, seed=4, p_missing=0.2)
    _every_layer(monkeypatch, bmm != "off")
    monkeypatch.setattr(te, "BMM_CHUNK_BYTES", 1 if bmm == "chunked" else 0)
    monkeypatch.setattr(te, "BMM_CHUNK_ROOM", False)
    (V0, M0, F0, PF0, cat0, g50), m = _plain_then_poisoned(c, x, miss, triton_device, monkeypatch)
    eng = m._engine()
    le, R = eng.leaf_end, m.plan.num_rows
    assert bool(le) == (name in ALIASED), f"{name}: leaf end {le}"
    V, M, F, PF, cat, g5 = _alias_pass(m, x, miss)

    def close(a, b, what):
        a, b = a.cpu().numpy(), b.cpu().numpy()
        assert not np.isnan(a).any(), f"{what}: a row no launch writes kept the poison"
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=what)

    close(M, M0, "M")
    close(PF, PF0, "PF")
    close(cat, cat0, "categorical counts")
    close(g5, g50, "gaussian statistics")
    if le:
        ae = eng.alias_end  # the sums' G in their value rows up to here (_sum_alias)
        assert ae >= le and (ae > le) == (name in SUM_ALIASED), f"{name}: alias end {ae}, leaf end {le}"
        assert V._base is not None and V._base.shape[0] == 2 * R - ae  # the flows' rows follow V's
        assert F.data_ptr() == V._base[R - ae :].data_ptr()
        close(V[1:le], F0[1:le], "leaf flows (in V)")
        close(V[le:ae], F0[le:ae], "the aliased sums' G (in V)")
        close(V[ae:], V0[ae:], "values above the alias (untouched)")
        close(F[ae:], F0[ae:], "flows above the alias")
    else:
        close(V, V0, "V")
        close(F, F0, "F")


def test_a_missing_shift_shows(triton_device, monkeypatch):
    """The check above can fail: the leaves' flows written to ``F``'s own rows below the leaf
    end (no shift) land on values above the leaves, and leave the leaf rows holding values."""
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 11, seed=2)
    m0 = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    _, _, F0, _ = engine_pass(m0, x, miss)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    assert eng.leaf_end
    real = te.TritonEngine.sum_backward
    monkeypatch.setattr(te.TritonEngine, "sum_backward", lambda self, *a: real(self, *a[:7]))  # le_sh dropped
    V, *_ = _alias_pass(m, x, miss)
    le = eng.leaf_end
    assert not np.allclose(V[1:le].cpu().numpy(), F0[1:le].cpu().numpy(), rtol=1e-6, atol=1e-7)


def test_the_alias_needs_every_leaf_stored(triton_device, monkeypatch):
    """A leaf whose flow a layer adds (not stores), or the switch off: no alias."""
    c = CIRCUITS["hclt"]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    assert m._engine().leaf_end == 1 + sum(b.count for b in m.plan.inputs)
    m.plan.layers[0].exclusive = False  # the plan as if a leaf had two readers
    assert te.TritonEngine(m.plan, m.device, m._kernels, "fp32").leaf_end == 0
    monkeypatch.setattr(te, "LEAF_ALIAS", False)
    m2 = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    assert m2._engine().leaf_end == 0


@pytest.mark.parametrize("name", ["hclt", "pd", "mixed"])
def test_training_flows_equal_with_and_without_the_alias(name, triton_device, monkeypatch):
    c = CIRCUITS[name]()
    x, miss = data_for(c, 29, seed=5, p_missing=0.2)
    out = []
    for on in (True, False):
        monkeypatch.setattr(te, "LEAF_ALIAS", on)
        m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
        m.cuda_graphs = False
        ll = m.forward_backward(x, miss)
        out.append([t.detach().cpu().numpy().copy() for t in (ll, m.sum_flows, m.cat_flows, m.gauss_stats)])
    for what, a, b in zip(("ll", "sum flows", "cat flows", "gauss stats"), *out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=what)


STORED_PRODUCTS = "collapse-nodes,partition-blocks,group-layers{fuse=none}"


@pytest.mark.parametrize("name", ["pd", "rat", "zero_probs", "hclt"])
def test_leaves_read_by_one_product_layer(name, triton_device, monkeypatch):
    """With the products stored (a scratch layer each, recomputed in the backward) the leaves of
    PD, a small RAT-SPN and zero_probs are read by one product layer, which adds their flows: the
    backward zeroes the leaves' rows of ``V`` just before that layer's backward (after its
    recompute) and the flows land there (RAT-SPN's first layer in the benchmark is such a layer).
    HCLT's leaves are read by products of many layers: no alias."""
    from pcir import structures as st

    make = CIRCUITS.get(name) or (lambda: st.rat_spn(8, 4, 2, 2, input_dist="categorical(k=3)"))
    c = make()
    x, miss = data_for(c, 29, seed=6, p_missing=0.2)
    (_, _, F0, PF0, cat0, _), m = _plain_then_poisoned(c, x, miss, triton_device, monkeypatch, pipeline=STORED_PRODUCTS)
    eng = m._engine()
    if name == "hclt":
        assert eng.leaf_end == 0
        return
    assert eng.leaf_end and eng.leaf_zero_at >= 0
    assert m.plan.layers[eng.leaf_zero_at].kind == "product" and m.plan.layers[eng.leaf_zero_at].scratch
    le = eng.leaf_end
    V, M, F, PF, cat, g5 = _alias_pass(m, x, miss)
    for what, a, b in (
        ("PF", PF, PF0),
        ("categorical counts", cat, cat0),
        ("leaf flows (in V)", V[1:le], F0[1:le]),
        ("flows above the leaves", F[le:], F0[le:]),
    ):
        a, b = a.cpu().numpy(), b.cpu().numpy()
        assert not np.isnan(a).any(), what
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=what)


@pytest.mark.parametrize("name", ["hclt", "pd", "mixed", "hmm"])
def test_step_buffers_are_the_buffers_the_step_allocates(name, triton_device, monkeypatch):
    """``TritonEngine.step_buffers`` (``pcir info --plan --batch B``) lists the training step's
    buffers: each listed size is the size of a tensor the engine's forward and backward really
    allocate (recorded by a dispatch mode), with the batched products on and chunked."""
    from torch.utils._python_dispatch import TorchDispatchMode

    _every_layer(monkeypatch, True)
    monkeypatch.setattr(te, "BMM_CHUNK_BYTES", 1)
    monkeypatch.setattr(te, "BMM_CHUNK_ROOM", False)
    c = CIRCUITS[name]()
    x, miss = data_for(c, 70, seed=2)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    sizes: list[int] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.__name__.startswith(("empty", "zeros", "full", "new_")) and isinstance(out, torch.Tensor):
                sizes.append(out.numel() * out.element_size())
            return out

    with Record():
        _alias_pass(m, x, miss)
    listed = eng.step_buffers(70)
    assert ("values and flows" in listed) == bool(eng.leaf_end)
    for what, b in listed.items():
        assert b in sizes, (what, b, sorted(set(sizes))[-8:])


@pytest.mark.parametrize("bmm", ["off", "on"])
@pytest.mark.parametrize("args", [(34, 3, 1, 2), (72, 2, 2, 1)])
def test_rat_spn_keeps_sums_g_in_value_rows(args, bmm, triton_device, monkeypatch):
    """RAT-SPN as in the benchmark: leaf products of more than 16 inputs (a scratch product
    layer that adds the leaves' flows over their zeroed values), then exclusive sum layers whose
    G the parents store over the sums' values (``_sum_alias``) up to the root; the flow buffer
    keeps only the root's and the scratch products' rows. Every flow, parameter flow and leaf
    statistic as the plain backward's, the rows no launch should need poisoned."""
    from pcir import structures as st

    c = st.rat_spn(*args, input_dist="categorical(k=3)")
    x, miss = data_for(c, 23, seed=8, p_missing=0.2)
    _every_layer(monkeypatch, bmm == "on")
    (_, _, F0, PF0, cat0, _), m = _plain_then_poisoned(c, x, miss, triton_device, monkeypatch)
    eng = m._engine()
    le, ae, R = eng.leaf_end, eng.alias_end, m.plan.num_rows
    assert le and eng.leaf_zero_at == 0 and ae == m.plan.root_row > le
    V, M, F, PF, cat, _ = _alias_pass(m, x, miss)
    assert V._base.shape[0] == 2 * R - ae
    for what, a, b in (
        ("PF", PF, PF0),
        ("categorical counts", cat, cat0),
        ("leaf flows (in V)", V[1:le], F0[1:le]),
        ("the sums' G (in V)", V[le:ae], F0[le:ae]),
        ("flows from the root on", F[ae:], F0[ae:]),
    ):
        a, b = a.cpu().numpy(), b.cpu().numpy()
        assert not np.isnan(a).any(), what
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=what)


def test_the_sum_alias_can_be_turned_off(triton_device, monkeypatch):
    """With SUM_ALIAS off the alias ends at the leaves, and a mutation that drops the children's
    scaling (the parent stores flows, not G, over the sums' values) makes the comparison fail."""
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 13, seed=3)
    monkeypatch.setattr(te, "SUM_ALIAS", False)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    assert m._engine().alias_end == m._engine().leaf_end
    monkeypatch.setattr(te, "SUM_ALIAS", True)
    m0 = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    _, _, F0, PF0 = engine_pass(m0, x, miss)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    assert eng.alias_end > eng.leaf_end
    eng.scale_children = set()  # the parents store plain flows over the sums' values
    _, _, _, PF, _, _ = _alias_pass(m, x, miss)
    assert not np.allclose(PF.cpu().numpy(), PF0.cpu().numpy(), rtol=1e-6, atol=1e-7)


class _Recorder:
    """The engine's kernel module, every launch recorded as (kernel, SC, num_warps) and run."""

    def __init__(self, module, seen):
        self._module, self._seen = module, seen

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not hasattr(fn, "__getitem__") or not callable(getattr(fn, "__getitem__", None)):
            return fn
        seen = self._seen

        class _Grid:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    seen.append((name, kwargs.get("SC"), kwargs.get("num_warps")))
                    return fn[grid](*args, **kwargs)

                return launch

        return _Grid()


@pytest.mark.parametrize("sc_warps", [0, 8])
def test_sc_min_warps_changes_only_the_alias_column_launches(sc_warps, triton_device, monkeypatch):
    """SC_MIN_WARPS raises the warps of the column-flow launches that compute the children's G
    (SC) and of no other launch; the flows are the same either way."""
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 13, seed=3)
    monkeypatch.setattr(te, "SC_MIN_WARPS", sc_warps)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    assert eng.scale_children, "the test circuit has no layer computing its children's G"
    seen: list = []
    eng.k = _Recorder(eng.k, seen)
    V, M, F, PF, cat, g5 = _alias_pass(m, x, miss)
    sc_cols = [w for n, sc, w in seen if sc and n.startswith(("sum_bwd_cols", "sum_bwd_mm"))]
    assert sc_cols, seen
    layer_warps = {L.num_warps for L in eng.layers if isinstance(L, te._SumLayer)}
    assert layer_warps == {4}  # small tiles: the knob has something to raise
    assert set(sc_cols) == ({sc_warps} if sc_warps else layer_warps), sc_cols
    others = [w for n, sc, w in seen if w is not None and not (sc and n.startswith(("sum_bwd_cols", "sum_bwd_mm")))]
    assert all(w in layer_warps for w in others), others
    monkeypatch.setattr(te, "SC_MIN_WARPS", 0)
    m0 = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    PF0 = _alias_pass(m0, x, miss)[3]
    np.testing.assert_allclose(PF.cpu().numpy(), PF0.cpu().numpy(), rtol=1e-6, atol=1e-7)


def test_fwd_min_warps_changes_only_the_forward_launches(triton_device, monkeypatch):
    """FWD_MIN_WARPS raises the warps of the sum forward's launches and of no other; the
    log-likelihoods are the same."""
    c = CIRCUITS["pd"]()
    x, miss = data_for(c, 9, seed=4)
    seen: dict[int, list] = {}
    lls = {}
    for w in (0, 16):
        monkeypatch.setattr(te, "FWD_MIN_WARPS", w)
        m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
        m.cuda_graphs = False
        eng = m._engine()
        seen[w] = []
        eng.k = _Recorder(eng.k, seen[w])
        with torch.no_grad():
            lls[w] = m(torch.as_tensor(x), torch.as_tensor(miss)).cpu().numpy()
    fwd = {w: [n for n, _, ww in seen[w] if n.startswith("sum_fwd") and ww is not None] for w in seen}
    assert fwd[0] and fwd[0] == fwd[16]
    assert {ww for n, _, ww in seen[16] if n.startswith("sum_fwd")} == {16}
    assert 16 not in {ww for n, _, ww in seen[0]}
    others = [(n, ww) for n, _, ww in seen[16] if not n.startswith("sum_fwd") and ww is not None]
    assert all(ww != 16 for _, ww in others), others
    np.testing.assert_array_equal(lls[16], lls[0])
