"""The Triton engine's row-wise parameter passes (EM update and normalisation of every uniform run
of the parameter stores in one launch per tile shape) and its scatter path for the expected counts
of large categorical tables, against the reference evaluator and the torch engine.

Kept tiny: the kernels run under TRITON_INTERPRET=1 on the CPU (``--device cuda`` compiles them).
"""

from __future__ import annotations

import numpy as np
import pytest
from _tiny_circuits import random_circuit
from test_backend_helpers import CASES, data_for, hmm

import pcir
from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.backend import plan as plan_mod
from pcir.backend import triton_engine
from pcir.ir import evaluator as ev


@pytest.fixture
def triton_ok(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")


def reference_counts(c, x, miss, ref):
    """Expected counts of every categorical parameter from the reference node flows."""
    out: dict[str, np.ndarray] = {}
    for g in c:
        if isinstance(g, pcir.InputGroup) and g.dist.kind == "categorical":
            k = int(g.dist.arg("k"))
            cnt = out.setdefault(g.params, np.zeros((g.units, k)))
            obs = ~miss[:, g.var]
            for cat in np.unique(x[obs, g.var]).astype(int):
                sel = obs & (x[:, g.var] == cat)
                cnt[:, cat] += ref.node[g.name][sel].sum(0)
    return out


def check_em(m, c, x, miss, step, pc):
    m.zero_flows()
    m.forward_backward(x, miss)
    m.em_step(step, pc)
    new = ev.em_step(c, x, miss, step_size=step, pseudocount=pc)
    for p, slot in m.plan.params.items():
        if slot.kind in ("indicator", "literal"):
            continue
        want = new.param_value(p)
        ok = np.isfinite(want)
        got = m.get_param(p).cpu().double().numpy()
        np.testing.assert_allclose(got[ok], want[ok], rtol=2e-4, atol=2e-6, err_msg=p)
    # the normalised buffers the kernels read were updated too (forward against the new circuit)
    np.testing.assert_allclose(
        m(x, miss).detach().cpu().double().numpy(), ev.log_likelihood(new, x, miss), rtol=1e-4, atol=1e-4
    )
    assert float(m.sum_flows.abs().sum()) == 0.0 and float(m.cat_flows.abs().sum()) == 0.0
    return new


@pytest.mark.parametrize("engine", ["triton", "torch"])
def test_large_vocabulary_tied_hmm(engine, device, request):
    """Tied emissions over 1100 categories: counts by scatter (k > COUNT_SCATTER_K; many tied
    groups add into one table, the same token at several positions hits the same entry), and
    EM rows longer than one column chunk of the row kernels."""
    if engine == "triton":
        request.getfixturevalue("triton_ok")
    c = hmm(5, hidden=3, vocab=1100, seed=2)
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    if engine == "triton":
        eng = m._engine()
        assert eng.scatter_n > 0 and eng.count_n == 0
        assert any(bk == 1024 for _, bk, _, _ in eng.row_tiles["cat"])
    x, miss = data_for(c, 12, seed=5, p_missing=0.15)
    x[:4] = 7.0  # every position the same token: tied groups collide on one table entry
    x[4:6, :3] = 1099.0
    m.forward_backward(x, miss)
    ref = ev.flows(c, x, miss)
    for pname, pf in ref.param.items():
        np.testing.assert_allclose(m.param_flows(pname).cpu().double().numpy(), pf, rtol=2e-4, atol=2e-5)
    for pname, cnt in reference_counts(c, x, miss, ref).items():
        got = m.param_flows(pname).cpu().double().numpy()
        np.testing.assert_allclose(got, cnt, rtol=2e-4, atol=2e-5, err_msg=pname)
    c = check_em(m, c, x, miss, 0.5, 0.1)
    check_em(m, c, x, miss, 1.0, 0.0)  # a second step from the updated buffers


@pytest.mark.parametrize("precision", ["tf32x3", "fp32"])
def test_counts_by_product_to_float32_accuracy(precision, device, triton_ok):
    """The one-hot product's counts at tf32x3 (two tf32 products, codegen.COUNTS_SPLIT) and fp32
    against the reference, tightly enough that one tf32 product (1e-3 relative) would fail on a
    GPU (the interpreter computes every dot in float32)."""
    from pcir.backend.codegen import generate

    c = CASES["mixed"]()
    m = pc_compile(c, engine="triton", device=device, precision=precision)
    assert m._engine().count_n > 0
    assert ("_tf32_hi(f)" in generate(m.plan, precision)) == (precision == "tf32x3")
    x, miss = data_for(c, 300, seed=6, p_missing=0.1)
    m.forward_backward(x, miss)
    ref = ev.flows(c, x, miss)
    for pname, cnt in reference_counts(c, x, miss, ref).items():
        got = m.param_flows(pname).cpu().double().numpy()
        np.testing.assert_allclose(got, cnt, rtol=5e-5, atol=1e-6, err_msg=pname)


@pytest.mark.parametrize("case", ["mixed", "tied_bernoulli", "zero_probs", "product_root"])
def test_scatter_counts_match_reference(case, device, triton_ok, monkeypatch):
    """Every categorical/bernoulli table counted by the scatter kernel."""
    monkeypatch.setattr(triton_engine, "COUNT_SCATTER_K", 1)
    c = CASES[case]()
    m = pc_compile(c, engine="triton", device=device, precision="fp32")
    assert m._engine().count_n == 0
    x, miss = data_for(c, 9, seed=4, p_missing=0.25)
    m.forward_backward(x[:5], miss[:5])
    m.forward_backward(x[5:], miss[5:])
    ref = ev.flows(c, x, miss)
    for pname, cnt in reference_counts(c, x, miss, ref).items():
        got = m.param_flows(pname).cpu().double().numpy()
        np.testing.assert_allclose(got, cnt, rtol=2e-4, atol=2e-5, err_msg=pname)
    for g in c:  # bernoulli: (units, 2) counts of 0 and 1
        if isinstance(g, pcir.InputGroup) and g.dist.kind == "bernoulli":
            users = [c.group(u) for u in c.users_of_param(g.params)]
            want = np.zeros((g.units, 2))
            for u in users:
                obs = ~miss[:, u.var]
                for v in (0, 1):
                    want[:, v] += ref.node[u.name][obs & (x[:, u.var] == v)].sum(0)
            got = m.param_flows(g.params).cpu().double().numpy()
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=g.params)


@pytest.mark.parametrize("seed", [0, 1, 3, 5, 8])
def test_em_rows_on_random_circuits(seed, device, triton_ok):
    """Dense, block-sparse and explicit (ragged, left to torch) sums of many row lengths, tied and
    table leaf families: the row kernels' EM equals the reference, twice in a row."""
    c = random_circuit(seed)
    m = pc_compile(c, engine="triton", device=device, precision="fp32")
    x, miss = data_for(c, 10, seed=seed, p_missing=0.2)
    c1 = check_em(m, c, x, miss, 0.6, 0.2)
    check_em(m, c1, x, miss, 1.0, 0.0)


def test_row_kernel_normalisation(device, triton_ok):
    """set_param stores unnormalised values' logs; the row kernel normalises them into the
    buffers the forward reads (sum rows of several lengths, block-sparse, tied, categorical)."""
    from pcir import structures

    c = structures.pd(data_shape=(4, 4), num_latents=3, split_intervals=(2, 2), input_dist="categorical(k=5)")
    m = pc_compile(c, engine="triton", device=device, precision="fp32")
    rng = np.random.default_rng(0)
    values = {}
    for p, slot in m.plan.params.items():
        if slot.kind in ("sum", "categorical"):
            cur = np.asarray(c.param_value(p), dtype=np.float64)
            raw = np.where(cur > 0, rng.uniform(0.1, 3.0, cur.shape), 0.0)  # keep the edge pattern
            m.set_param(p, raw)
            values[p] = raw / raw.sum(-1, keepdims=True)
    x, _ = data_for(c, 7, seed=1)
    want = ev.log_likelihood(c.with_params(**values), x)
    np.testing.assert_allclose(m(x).detach().cpu().double().numpy(), want, rtol=1e-4, atol=1e-4)
    W = m._normalised_cached()[2]
    logw, _ = m._normalised()  # the autograd path's torch log-softmax
    np.testing.assert_allclose(
        W.cpu().numpy()[: m.plan.sum_param_size], np.exp(logw.detach().cpu().numpy()), rtol=1e-5, atol=1e-7
    )


def test_row_tiles_cover_every_uniform_entry_once():
    from pcir import structures

    c = structures.pd(data_shape=(6, 6), num_latents=4, split_intervals=(2, 3), input_dist="categorical(k=3)")
    plan = plan_mod.lower(c)
    runs = plan.runs("sum")
    assert len({r[2] for r in runs}) > 2  # several row lengths
    tiles = triton_engine.row_tiles(runs, "cpu")
    assert len(tiles) == len({(br, bk) for br, bk, _, _ in tiles})  # one launch per tile shape
    seen = np.zeros(plan.sum_param_size, dtype=np.int64)
    for br, bk, tab, n in tiles:
        t = tab.numpy().reshape(n, 3)
        for base, row_len, rows in t:
            assert 1 <= rows <= br and row_len <= max(bk, 1024) and (row_len <= bk or bk == 1024)
            seen[base : base + row_len * rows] += 1
    uniform = np.zeros(plan.sum_param_size, dtype=bool)
    for off, n, row_len in runs:
        if row_len:
            uniform[off : off + n] = True
    assert np.all(seen[uniform] == 1) and np.all(seen[~uniform] == 0)
