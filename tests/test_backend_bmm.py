"""Dense sum layers by batched matrix product (``triton_engine.BMM``): the columns' factors once
(``sum_cols_exp``), ``torch.bmm``, the log (``sum_log_rows``); backward by two products and
``sum_cols_scatter``. Every case runs with the thresholds at zero, so every eligible layer of
these small circuits takes that path, against the reference evaluator and against the fused
kernels (which other tests check against the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_gathers import CIRCUITS, _sum_layers
from test_backend_helpers import data_for, engine_pass

from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.backend import precompile as pre
from pcir.backend import triton_engine as te
from pcir.ir import evaluator as ev


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _every_layer(monkeypatch, bmm: bool = True) -> None:
    """The batched products on (off) for every layer at least half full, at any batch."""
    monkeypatch.setattr(te, "BMM", bmm)
    monkeypatch.setattr(te, "BMM_MIN_FILL", 0.5)
    monkeypatch.setattr(te, "BMM_MIN_EDGES", 0)
    monkeypatch.setattr(te, "BMM_MIN_EDGES_BWD", 0)
    monkeypatch.setattr(te, "BMM_MIN_UNITS", 0)
    monkeypatch.setattr(te, "BMM_MIN_BATCH", 1)


def _run(c, device, x, miss, bmm: bool, monkeypatch):
    """(model, engine, V, M, F, PF) of one forward and backward with the batched products on or
    off (_every_layer)."""
    _every_layer(monkeypatch, bmm)
    m = pc_compile(c, engine="triton", device=device, precision="fp32")
    return (m, m._engine(), *engine_pass(m, x, miss))


# circuits with a layer that qualifies (dense groups of one shape): HCLT, HMM, PD; mixed has one
BMM_CASES = ["hclt", "hmm", "pd", "mixed", "block_sparse"]


@pytest.mark.parametrize("chunk", [0, 1])
@pytest.mark.parametrize("name", BMM_CASES)
def test_batched_product_layers_match_the_fused_kernels(name, chunk, triton_device, monkeypatch):
    """``chunk``: BMM_CHUNK_BYTES, 0 (each layer at once) or 1 (one group at a time, in both
    passes: no room from the other layers, BMM_CHUNK_ROOM)."""
    c = CIRCUITS[name]()
    x, miss = data_for(c, 70, seed=5, p_missing=0.2)  # 70: partial batch tiles of 32 and 64
    monkeypatch.setattr(te, "BMM_CHUNK_BYTES", chunk)
    monkeypatch.setattr(te, "BMM_CHUNK_ROOM", False)
    m, eng, *on = _run(c, triton_device, x, miss, True, monkeypatch)
    uses = [eng.use_bmm(L, 70) for L in _sum_layers(m)]
    assert any(uses), f"no layer of {name} took the batched product"
    groups = [L.bmm[0] for L, u in zip(_sum_layers(m), uses, strict=True) if u]
    for fwd in (True, False):
        cap = eng._chunk_caps(70)[0 if fwd else 1]
        chunks = [len(eng._bmm_chunks(L, 70, cap)) for L, u in zip(_sum_layers(m), uses, strict=True) if u]
        assert chunks == (groups if chunk else [1] * len(groups)), (fwd, chunks, groups)
    _, eng_off, *off = _run(c, triton_device, x, miss, False, monkeypatch)
    assert not any(eng_off.use_bmm(L, 70) for L in _sum_layers(m))
    for what, a, b in zip(("V", "M", "F", "PF"), on, off, strict=True):
        a, b = a.cpu().double().numpy(), b.cpu().double().numpy()
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), what
        fin = np.isfinite(a)
        np.testing.assert_allclose(a[fin], b[fin], rtol=2e-4, atol=1e-5, err_msg=what)
    # and the root's log-likelihood against the reference evaluator
    V = on[0].cpu().double().numpy()
    ref = ev.log_likelihood(c, x, miss)
    ll = V[m.plan.root_row]
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(ll))
    np.testing.assert_allclose(ll[fin], ref[fin], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [0, 1])
@pytest.mark.parametrize("name", ["hclt", "hmm", "pd"])
def test_maxima_and_factors_in_one_pass_as_in_two(name, chunk, triton_device, monkeypatch):
    """BMM_FUSE_MAX_K: groups of at most that many columns gather their children once
    (sum_cols_maxexp), not once for the maxima and again for the factors; the same M, V, flows
    and parameter flows as the two passes (bit for bit on the CPU interpreter: the same sums in
    the same order), per chunk of groups or the whole layer; wider groups take the two passes."""
    c = CIRCUITS[name]()
    x, miss = data_for(c, 70, seed=9, p_missing=0.2)
    monkeypatch.setattr(te, "BMM_CHUNK_BYTES", chunk)
    monkeypatch.setattr(te, "BMM_CHUNK_ROOM", False)
    out, launched = [], []
    for fuse_k in (256, 0):
        monkeypatch.setattr(te, "BMM_FUSE_MAX_K", fuse_k)
        _every_layer(monkeypatch)
        m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
        eng, names = m._engine(), []
        real = eng.k

        class Spy:
            def __getattr__(self, a, _real=real, _names=names):
                if a.startswith("sum_cols_m"):
                    _names.append(a)
                return getattr(_real, a)

        eng.k = Spy()
        out.append(engine_pass(m, x, miss))
        launched.append(names)
    assert launched[0] and set(launched[0]) == {"sum_cols_maxexp"}
    assert set(launched[1]) == {"sum_cols_max"}
    for what, a, b in zip(("V", "M", "F", "PF"), *out, strict=True):
        if triton_device == "cpu":
            assert torch.equal(a, b), what
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=what)
    # a layer wider than the cap takes the two passes
    monkeypatch.setattr(te, "BMM_FUSE_MAX_K", 1)
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    names = []
    real = m._engine().k

    class Spy2:
        def __getattr__(self, a):
            if a.startswith("sum_cols_m"):
                names.append(a)
            return getattr(real, a)

    m._engine().k = Spy2()
    V, M, _, _ = engine_pass(m, x, miss)
    assert set(names) == {"sum_cols_max"}
    torch.testing.assert_close(V, out[0][0], rtol=0, atol=0)  # the same kernels as the two-pass run


def test_which_layers_qualify(triton_device, monkeypatch):
    """Dense groups of one shape qualify; block-sparse groups do not; the thresholds apply."""
    monkeypatch.setattr(te, "BMM_MIN_EDGES", 0)
    monkeypatch.setattr(te, "BMM_MIN_UNITS", 0)
    monkeypatch.setattr(te, "BMM_MIN_BATCH", 64)
    hclt = pc_compile(CIRCUITS["hclt"](), engine="triton", device=triton_device, precision="fp32")
    layers = _sum_layers(hclt)
    eng = hclt._engine()
    assert all(L.bmm is not None for L in layers)
    G, N, K, row0, w0, grp0 = layers[0].bmm
    assert (N, K) == (4, 4) and G >= 1
    assert eng.use_bmm(layers[0], 64) and not eng.use_bmm(layers[0], 63)
    # precompile replays a batch of same_specialisation(B) rows: the same path as B itself
    for B in (1, 16, 63, 64, 65, 100, 512, 1000):
        assert eng.use_bmm(layers[0], B) == eng.use_bmm(layers[0], pre.same_specialisation(B))
    monkeypatch.setattr(te, "BMM_MIN_UNITS", 5)  # groups of 4 nodes
    assert not eng.use_bmm(layers[0], 64)
    monkeypatch.setattr(te, "BMM_MIN_UNITS", 0)
    monkeypatch.setattr(te, "BMM_MIN_EDGES", layers[0].edges + 1)
    assert not eng.use_bmm(layers[0], 512)
    monkeypatch.setattr(te, "BMM_MIN_EDGES_BWD", 0)
    assert eng.use_bmm(layers[0], 512, backward=True)  # the backward's own threshold
    # block-diagonal 2x2 tiles are half full: they qualify at BMM_MIN_FILL 0.5, not above
    monkeypatch.setattr(te, "BMM_MIN_FILL", 0.5)
    sparse = pc_compile(CIRCUITS["block_sparse"](), engine="triton", device=triton_device, precision="fp32")
    assert [L.bmm is not None for L in _sum_layers(sparse)][:1] == [True]
    monkeypatch.setattr(te, "BMM_MIN_FILL", 0.51)
    sparse = pc_compile(CIRCUITS["block_sparse"](), engine="triton", device=triton_device, precision="fp32")
    assert [L.bmm is None for L in _sum_layers(sparse)][:1] == [True]
    monkeypatch.setattr(te, "BMM_MIN_EDGES", 0)
    bf16 = pc_compile(CIRCUITS["hclt"](), engine="triton", device=triton_device, precision="bf16")
    assert not bf16._engine().use_bmm(_sum_layers(bf16)[0], 512)  # no library bf16 product here
    tf32x3 = pc_compile(CIRCUITS["hclt"](), engine="triton", device=triton_device, precision="tf32x3")
    assert tf32x3._engine().use_bmm(_sum_layers(tf32x3)[0], 512)  # as IEEE fp32 products
    monkeypatch.setattr(te, "BMM_TF32X3", False)
    assert not tf32x3._engine().use_bmm(_sum_layers(tf32x3)[0], 512)


@pytest.mark.parametrize("precision, want", [("tf32", "tf32"), ("tf32x3", "ieee"), ("fp32", "ieee")])
def test_library_products_run_in_the_engines_precision(precision, want, triton_device, monkeypatch):
    """torch's fp32 matmul setting while each library product runs: tf32 for tf32, IEEE fp32 for
    tf32x3 (at least as accurate) and fp32."""
    _every_layer(monkeypatch)
    seen = []
    bmm = torch.bmm

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.matmul.fp32_precision)
        return bmm(*args, **kwargs)

    monkeypatch.setattr(torch, "bmm", spy)
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 8, seed=1)
    m = pc_compile(c, engine="triton", device=triton_device, precision=precision)
    engine_pass(m, x, miss)
    assert seen and set(seen) == {want}


def test_the_callers_matmul_precision_is_restored(triton_device, monkeypatch):
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 8, seed=1)
    mm = torch.backends.cuda.matmul
    before = mm.fp32_precision
    _run(c, triton_device, x, miss, True, monkeypatch)
    assert mm.fp32_precision == before


def test_training_with_batched_products(triton_device, monkeypatch):
    """Two EM steps with the batched products give the parameters of two steps without them."""
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 96, seed=7, p_missing=0.1)
    out = []
    for bmm in (True, False):
        _every_layer(monkeypatch, bmm)
        m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
        m.cuda_graphs = False
        for _ in range(2):
            m.forward_backward(x, miss)
            m.em_step(0.5, 0.01)
        out.append(torch.cat([p.detach().flatten().cpu() for p in m.parameters()]).double().numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-4, atol=1e-6)


def test_chunk_sizes_follow_the_room_of_the_other_layers(triton_device, monkeypatch):
    """The backward's chunks take BMM_CHUNK_BYTES, or half the largest column scratch of the
    layers that are not batched products where that is more; the forward's the room the
    backward's scratch takes anyway (plus the flow buffer's when the forward does not allocate it)."""
    c = CIRCUITS["pd"]()
    monkeypatch.setattr(te, "BMM_CHUNK_BYTES", 64)
    m, eng, *_ = _run(c, triton_device, *data_for(c, 8, seed=1), True, monkeypatch)
    B = 70
    sums = _sum_layers(m)
    other = max([4 * L.columns * B for L in sums if not eng.use_bmm(L, B, backward=True)], default=0)
    fwd, bwd = eng._chunk_caps(B)
    assert bwd == max(64, other // 2)
    # the backward's E: a layer's columns, or a chunk's and its temporaries'
    rows = max(2 * eng._chunk_cols(L, B, bwd) if eng.use_bmm(L, B, backward=True) else L.columns for L in sums)
    assert rows == eng._bwd_e_rows(B)
    assert fwd == 4 * rows * B + 4 * m.plan.num_rows * B
    assert eng._chunk_caps(B, aliased=True)[0] == 4 * rows * B
    monkeypatch.setattr(te, "BMM_CHUNK_ROOM", False)
    eng2 = te.TritonEngine(m.plan, m.device, m._kernels, "fp32")
    assert eng2._chunk_caps(B) == (64, 64)


@pytest.mark.parametrize("chunk", [0, 1])
def test_groups_of_more_nodes_than_samples(chunk, triton_device, monkeypatch):
    """The backward's weight-sized temporary fits in ``E``'s spare rows only where a group has no
    more nodes than the batch has samples; past that it is a temporary of its own. Both ways agree
    with the fused kernels (HCLT's groups of 4 nodes at a batch of 3)."""
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 3, seed=7, p_missing=0.2)
    monkeypatch.setattr(te, "BMM_CHUNK_BYTES", chunk)
    monkeypatch.setattr(te, "BMM_CHUNK_ROOM", False)
    m, eng, *on = _run(c, triton_device, x, miss, True, monkeypatch)
    assert any(eng.use_bmm(L, 3, backward=True) and L.bmm[1] > 3 for L in _sum_layers(m))
    _, _, *off = _run(c, triton_device, x, miss, False, monkeypatch)
    for what, a, b in zip(("V", "M", "F", "PF"), on, off, strict=True):
        a, b = a.cpu().double().numpy(), b.cpu().double().numpy()
        fin = np.isfinite(a)
        assert np.array_equal(fin, np.isfinite(b)), what
        np.testing.assert_allclose(a[fin], b[fin], rtol=2e-4, atol=1e-5, err_msg=what)
