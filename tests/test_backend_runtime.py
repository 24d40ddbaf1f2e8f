"""The compiled module against the reference evaluator: forward, marginals, flows, EM, autograd,
bad data, numerics. Every test runs with both engines: the generated Triton kernels (under
TRITON_INTERPRET=1 on CPU, compiled with ``--device cuda``) and the plain-torch executor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_helpers import CASES, data_for, hmm, torch_reference_ll

import pcir
from pcir.backend import compile as pc_compile
from pcir.ir import DataError
from pcir.ir import evaluator as ev
from pcir.ir.evaluator import enumerate_assignments


def build(case, engine, device, precision="fp32"):
    c = CASES[case]() if isinstance(case, str) else case
    return c, pc_compile(c, engine=engine, device=device, precision=precision)


TOL = {"fp32": 2e-4}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_marginals_match_reference(case, engine, device):
    c, m = build(case, engine, device)
    x, miss = data_for(c, 7, seed=1, p_missing=0.3)
    for mm in (None, miss):
        ll = m(x, mm).detach().cpu().double().numpy()
        ref = ev.log_likelihood(c, x, mm)
        assert ll.shape == ref.shape
        fin = np.isfinite(ref)
        assert np.array_equal(fin, np.isfinite(ll)), (ll, ref)
        np.testing.assert_allclose(ll[fin], ref[fin], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["mixed", "tied_bernoulli", "product_root", "scratch_chain"])
def test_partition_function_is_one(case, engine, device):
    c, m = build(case, engine, device)
    if any(not v.domain.is_discrete for v in c.variables):
        real = [i for i, v in enumerate(c.variables) if not v.domain.is_discrete]
        c2 = c  # marginalise the real variables
        disc = [i for i in range(c.num_vars) if i not in real]
        ks = [c.variables[i].domain.k for i in disc]
        grid = np.stack([g.reshape(-1) for g in np.meshgrid(*[np.arange(k) for k in ks], indexing="ij")], 1)
        x = np.zeros((len(grid), c.num_vars))
        x[:, disc] = grid
        miss = np.zeros_like(x, dtype=bool)
        miss[:, real] = True
        ll = m(x, miss)
        del c2
    else:
        ll = m(enumerate_assignments(c))
    total = torch.logsumexp(ll.double().reshape(ll.shape[0], -1)[:, 0], 0).exp().item()
    assert abs(total - 1.0) < 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_flows_match_reference(case, engine, device):
    c, m = build(case, engine, device)
    x, miss = data_for(c, 6, seed=2, p_missing=0.25)
    if engine == "triton":
        m._engine().target_programs = 64  # split the batch over parameter-flow programs
    m.zero_flows()
    m.forward_backward(x[:3], miss[:3])
    m.forward_backward(x[3:], miss[3:])  # flows accumulate over calls
    ref = ev.flows(c, x, miss)
    for pname, pf in ref.param.items():
        got = m.param_flows(pname).cpu().double().numpy()
        np.testing.assert_allclose(got, pf, rtol=2e-4, atol=2e-5, err_msg=pname)
    # leaf flows: categorical counts from the reference node flows of observed samples
    for g in c:
        if isinstance(g, pcir.InputGroup) and g.dist.kind == "categorical":
            users = [c.group(u) for u in c.users_of_param(g.params)]
            k = int(g.dist.arg("k"))
            counts = np.zeros((g.units, k))
            for u in users:
                obs = ~miss[:, u.var]
                for cat in range(k):
                    sel = obs & (x[:, u.var] == cat)
                    counts[:, cat] += ref.node[u.name][sel].sum(0)
            got = m.param_flows(g.params).cpu().double().numpy()
            np.testing.assert_allclose(got, counts, rtol=2e-4, atol=2e-5, err_msg=g.params)


@pytest.mark.parametrize("counts", ["product", "scatter"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_leaf_kernels_on_tiles_smaller_than_their_groups(case, counts, device, monkeypatch):
    """The leaf kernels (values, counts by product or by scatter, gaussian statistics) on tiles of
    2 leaf rows (16 for the counts' product), so that every group spans several tiles: at the
    default sizes each test circuit's groups fit one tile, which hid a row index of the tenth
    session's training step that was wrong past a group's first tile. Values, flows, counts and
    one EM step against the reference evaluator."""
    from pcir import knobs
    from pcir.backend import triton_engine as te

    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    monkeypatch.setattr(te, "BU", 2)
    monkeypatch.setattr(te, "COUNT_BU", 16)  # (tl.dot needs 16)
    monkeypatch.setattr(te, "SCATTER_BU", 2)
    monkeypatch.setattr(te, "COUNT_SCATTER_K", 1 if counts == "scatter" else te.COUNT_SCATTER_K)
    c, m = build(case, "triton", device)
    x, miss = data_for(c, 9, seed=7, p_missing=0.25)
    ll = m(x, miss).detach().cpu().double().numpy()
    want = ev.log_likelihood(c, x, miss)
    fin = np.isfinite(want)
    np.testing.assert_allclose(ll[fin], want[fin], rtol=1e-4, atol=1e-4)
    m.forward_backward(x, miss)
    ref = ev.flows(c, x, miss)
    for pname, pf in ref.param.items():
        got = m.param_flows(pname).cpu().double().numpy()
        np.testing.assert_allclose(got, pf, rtol=2e-4, atol=2e-5, err_msg=pname)
    m.em_step(0.4, 0.2)
    new = ev.em_step(c, x, miss, step_size=0.4, pseudocount=0.2)
    for pname, p in c.params.items():
        if p.dtype == "i64":
            continue
        np.testing.assert_allclose(
            m.get_param(pname).cpu().double().numpy(), new.param_value(pname), rtol=5e-4, atol=5e-5, err_msg=pname
        )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("step,pc", [(1.0, 0.0), (0.3, 0.5)])
def test_em_step_matches_reference(case, step, pc, engine, device):
    c, m = build(case, engine, device)
    x, miss = data_for(c, 8, seed=3, p_missing=0.2)
    m.forward_backward(x, miss)
    m.em_step(step_size=step, pseudocount=pc)
    ref = ev.em_step(c, x, miss, step_size=step, pseudocount=pc)
    for pname, p in c.params.items():
        if p.dtype == "i64":
            continue
        want = ref.param_value(pname)
        got = m.get_param(pname).cpu().double().numpy()
        ok = np.isfinite(want)  # the reference divides 0/0 for leaves without flow and pc=0
        np.testing.assert_allclose(got[ok], want[ok], rtol=5e-4, atol=5e-5, err_msg=pname)
    # the module's circuit is a valid, normalised circuit again
    c2 = m.to_circuit()
    pcir.verify(c2)
    np.testing.assert_allclose(
        m(x, miss).detach().cpu().double().numpy(), ev.log_likelihood(c2, x, miss), rtol=1e-4, atol=1e-4
    )
    assert float(m.sum_flows.abs().sum()) == 0.0  # em_step zeroes the flows


@pytest.mark.parametrize("case", ["mixed", "tied_bernoulli", "product_root", "scratch_chain"])
def test_autograd_matches_float64_torch(case, engine, device):
    c, m = build(case, engine, device)
    x, miss = data_for(c, 5, seed=4, p_missing=0.2)
    weights = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    ll = m(x, miss)
    (ll.double().reshape(5, -1).sum(1) * weights.to(ll.device)).sum().backward()
    ref_ll, leaves = torch_reference_ll(m, x, miss)
    (ref_ll.reshape(5, -1).sum(1) * weights).sum().backward()
    for name in ("sum_logits", "cat_logits", "gauss"):
        got = getattr(m, name).grad
        want = leaves[name].grad
        if want is None:
            continue
        got = got.cpu().double()
        fin = torch.isfinite(leaves[name].detach())
        np.testing.assert_allclose(got[fin].numpy(), want[fin].numpy(), rtol=1e-3, atol=1e-4, err_msg=name)


def test_scratch_products_are_recomputed_in_every_backward(engine, device):
    # the scratch region is shared by product launches (p3 reuses p0's rows): the backward
    # recomputes them, so two backward passes through one graph (retain_graph) and a
    # forward_backward all give the reference's flows
    c, m = build("scratch_chain", engine, device)
    assert m.plan.scratch_rows < m.plan.scratch_units
    x, miss = data_for(c, 6, seed=2, p_missing=0.3)
    ll = m(x, miss)
    ll.sum().backward(retain_graph=True)
    g1 = m.sum_logits.grad.clone()
    m.sum_logits.grad = None
    ll.sum().backward()
    np.testing.assert_allclose(m.sum_logits.grad.cpu().numpy(), g1.cpu().numpy(), rtol=1e-6, atol=1e-7)
    m.forward_backward(x, miss)
    fl = ev.flows(c, x, miss)
    for pname, pf in fl.param.items():
        if pname in m.plan.params and m.plan.params[pname].kind == "sum":
            np.testing.assert_allclose(m.param_flows(pname).cpu().double().numpy(), pf, rtol=2e-4, atol=5e-5)


def test_flows_are_gradients_wrt_log_weights(engine, device):
    """param flow of edge ij == d(sum ll)/d(log W_ij): the two views of one backward pass."""
    c, m = build("mixed", engine, device)
    x, miss = data_for(c, 6, seed=5)
    m.forward_backward(x, miss)
    flows = m.sum_flows.clone()
    logw, _ = m._normalised()
    logw = logw.detach().requires_grad_(True)
    from pcir.backend.runtime import _CircuitFunction

    xf = m._prepare(x, miss)
    _, logp = m._normalised()
    _CircuitFunction.apply(m, xf, logw, logp.detach(), m.gauss.detach()).sum().backward()
    np.testing.assert_allclose(logw.grad.cpu().numpy(), flows.cpu().numpy(), rtol=1e-4, atol=1e-6)


def test_sgd_keeps_the_circuit_normalised(engine, device):
    c, m = build("tied_bernoulli", engine, device)
    x, _ = data_for(c, 16, seed=6)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    before = float(m(x).mean().detach())
    for _ in range(5):
        opt.zero_grad()
        (-m(x).mean()).backward()
        opt.step()
    after = float(m(x).mean().detach())
    assert after > before
    total = torch.logsumexp(m(enumerate_assignments(c)).double(), 0).exp().item()
    assert abs(total - 1.0) < 1e-4


def test_deep_hmm_has_no_underflow(engine, device):
    length = 1024 if (device == "cuda" or engine == "torch") else 128
    c = hmm(length, hidden=3, vocab=4, seed=1)
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x, miss = data_for(c, 3, seed=7, p_missing=0.1)
    ll = m(x, miss).detach().cpu().double().numpy()
    ref = ev.log_likelihood(c, x, miss)
    assert np.all(np.isfinite(ll)) and ll.max() < -100
    np.testing.assert_allclose(ll, ref, rtol=1e-4)
    m.forward_backward(x, miss)
    assert torch.isfinite(m.sum_flows).all() and torch.isfinite(m.cat_flows).all()
    m.em_step(0.5, 0.1)
    assert torch.isfinite(m(x, miss)).all()


def test_zero_probability_inputs(engine, device):
    c, m = build("zero_probs", engine, device)
    x = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 2.0]])  # first row: probability 0
    ll = m(x).detach().cpu().double().numpy()
    ref = ev.log_likelihood(c, x)
    assert ll[0] == -np.inf and np.isfinite(ll[1:]).all()
    np.testing.assert_allclose(ll[1:], ref[1:], rtol=1e-5)
    m.forward_backward(x)
    assert torch.isfinite(m.sum_flows).all() and torch.isfinite(m.cat_flows).all()
    (m(x[1:]).sum()).backward()
    assert torch.isfinite(m.sum_logits.grad).all()


@pytest.mark.parametrize(
    "x, missing, message",
    [
        (np.zeros((2, 3)), None, r"data has shape \(2, 3\), expected \(N, 4\)"),
        (np.array([[0, 1, 5, 0.0]]), None, r"value 5 at row 0, column 2 \(x2\) is outside the domain categorical\(3\)"),
        (np.array([[0, 1.5, 1, 0.0]]), None, r"value 1.5 at row 0, column 1 \(x1\)"),
        (np.array([[0, -1, 1, 0.0]]), None, r"value -1 at row 0, column 1 \(x1\)"),
        (np.array([[0, 1, 1, np.nan]]), None, r"NaN in data at row 0, column 3 \(x3\)"),
        (np.array([["a", "b", "c", "d"]]), None, r"dtype"),
        (np.zeros((2, 4)), np.zeros((2, 3), dtype=bool), r"missing mask has shape"),
    ],
)
def test_bad_data_names_the_column(x, missing, message, engine, device):
    _, m = build("mixed", engine, device)
    with pytest.raises(DataError, match=message):
        m(x, missing)
    with pytest.raises(DataError, match=message):
        m.forward_backward(x, missing)


def test_bad_data_is_caught_by_a_replayed_forward(engine, device):
    # on CUDA the third call of one shape replays a captured graph that holds the value check too
    c, m = build("mixed", engine, device)
    good, _ = data_for(c, 3, seed=4)
    want = ev.log_likelihood(c, good)
    for _ in range(3):
        np.testing.assert_allclose(m(good).detach().cpu().double().numpy(), want, rtol=1e-4, atol=1e-4)
    for r, col, val, message in [
        (1, 2, 9, r"value 9 at row 1, column 2 \(x2\)"),
        (2, 3, np.nan, r"NaN in data at row 2"),
    ]:
        bad = good.copy()
        bad[r, col] = val
        with pytest.raises(DataError, match=message):
            m(bad)
    np.testing.assert_allclose(m(good).detach().cpu().double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_bad_data_accumulates_no_flows(engine, device):
    # values are checked on the device and the error raised at the end of the call: the bad batch
    # must leave the flow buffers as they were, and a later good batch must still train; on CUDA
    # the third call of one shape replays a captured step that holds the value check
    c, m = build("mixed", engine, device)
    good, _ = data_for(c, 5, seed=2)
    for _ in range(3):  # flows of 3 equal batches: the same EM update as of one
        m.forward_backward(good)
    before = [t.clone() for t in m.flow_tensors()]
    bad = good.copy()
    bad[3, 2] = 7
    with pytest.raises(DataError, match=r"value 7 at row 3, column 2 \(x2\)"):
        m.forward_backward(bad)
    for a, b in zip(before, m.flow_tensors(), strict=True):
        assert torch.equal(a, b)
    m.em_step(1.0, 0.0)
    new = ev.em_step(c, good, None, 1.0, 0.0)
    for p, slot in m.plan.params.items():
        if slot.kind != "indicator":
            np.testing.assert_allclose(m.get_param(p).cpu().double().numpy(), new.param_value(p), rtol=1e-4, atol=1e-6)


def test_nan_is_fine_where_missing(engine, device):
    c, m = build("mixed", engine, device)
    x = np.array([[0, 1, 2, np.nan]])
    miss = np.array([[False, False, False, True]])
    np.testing.assert_allclose(
        m(x, miss).detach().cpu().numpy(), ev.log_likelihood(c, np.nan_to_num(x), miss), rtol=1e-5
    )


def test_params_by_name_and_state_dict(engine, device):
    c, m = build("mixed", engine, device)
    w = m.get_param("s1")  # a group name resolves to its parameter
    assert tuple(w.shape) == (4, 8)
    new = np.full((4, 8), 1 / 8)
    m.set_param("s1.w", new)
    np.testing.assert_allclose(m.get_param("s1.w").cpu().numpy(), new, rtol=1e-6)
    x, _ = data_for(c, 4, seed=8)
    ref = ev.log_likelihood(m.to_circuit(), x)
    np.testing.assert_allclose(m(x).detach().cpu().numpy(), ref, rtol=1e-4)
    m2 = pc_compile(c, engine=engine, device=device, precision="fp32")
    m2.load_state_dict(m.state_dict())
    np.testing.assert_allclose(m2(x).detach().cpu().numpy(), ref, rtol=1e-4)
    with pytest.raises(pcir.BackendError, match="unknown parameter or group 's9'"):
        m.get_param("s9")


def test_flows_with_batch_split_over_programs(engine, device):
    """Batches of several tiles; the parameter-flow kernel splits them over programs."""
    c, m = build("tied_bernoulli", engine, device)
    if engine == "triton":
        m._engine().target_programs = 64
    x, miss = data_for(c, 150, seed=9, p_missing=0.1)
    m.forward_backward(x, miss)
    ref = ev.flows(c, x, miss)
    for pname, pf in ref.param.items():
        np.testing.assert_allclose(m.param_flows(pname).cpu().double().numpy(), pf, rtol=2e-4, atol=1e-4, err_msg=pname)


STRUCTURES = {
    "hclt": lambda S, rng: S.hclt(rng.integers(0, 4, (200, 6)), num_latents=4),
    "pd": lambda S, rng: S.pd(data_shape=(4, 4), num_latents=4, split_intervals=(2, 2), input_dist="categorical(k=3)"),
    "rat_spn": lambda S, rng: S.rat_spn(
        num_vars=8, num_latents=4, depth=2, num_repetitions=2, input_dist="categorical(k=3)"
    ),
    "hmm": lambda S, rng: S.hmm(6, 4, 5),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_structure_generators_compile_and_train(name, engine, device):
    from pcir import structures

    rng = np.random.default_rng(0)
    c = STRUCTURES[name](structures, rng)
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x, _ = data_for(c, 6, seed=10)
    np.testing.assert_allclose(m(x).detach().cpu().double().numpy(), ev.log_likelihood(c, x), rtol=1e-5)
    m.forward_backward(x)
    m.em_step(0.5, 0.1)
    new = ev.em_step(c, x, None, 0.5, 0.1)
    for p, slot in m.plan.params.items():
        if slot.kind != "indicator":
            np.testing.assert_allclose(m.get_param(p).cpu().double().numpy(), new.param_value(p), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["group-layers{fuse=none}", "default"])
def test_pass_scheduled_scratch_products_match_reference(spec, engine, device):
    from pcir import structures

    c = structures.pd(data_shape=(4, 4), num_latents=3, split_intervals=(2, 2), input_dist="categorical(k=3)")
    m = pc_compile(c, pipeline=spec, engine=engine, device=device, precision="fp32")
    assert m.plan.schedule == "annotated"
    x, miss = data_for(c, 6, seed=4, p_missing=0.2)
    np.testing.assert_allclose(m(x, miss).detach().cpu().double().numpy(), ev.log_likelihood(c, x, miss), rtol=1e-5)
    m.forward_backward(x, miss)
    m.em_step(0.5, 0.1)
    new = ev.em_step(m.circuit, x, miss, 0.5, 0.1)
    for p, slot in m.plan.params.items():
        if slot.kind != "indicator":
            np.testing.assert_allclose(m.get_param(p).cpu().double().numpy(), new.param_value(p), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", ["mixed", "tied_bernoulli"])
def test_row_chunked_normalisation_and_em(case, engine, device, monkeypatch):
    # the in-place normalisation and the fused EM pass walk the parameters in row chunks; with a
    # tiny chunk every run spans many chunks (and a chunk smaller than one row still takes a row)
    from pcir.backend import runtime

    monkeypatch.setattr(runtime, "_CHUNK", 5)
    c, m = build(case, engine, device)
    x, miss = data_for(c, 8, seed=6, p_missing=0.2)
    np.testing.assert_allclose(m(x, miss).detach().cpu().double().numpy(), ev.log_likelihood(c, x, miss), rtol=1e-5)
    m.forward_backward(x, miss)
    m.em_step(0.7, 0.2)
    new = ev.em_step(c, x, miss, 0.7, 0.2)
    for p, slot in m.plan.params.items():
        if slot.kind != "indicator":
            np.testing.assert_allclose(m.get_param(p).cpu().double().numpy(), new.param_value(p), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m(x).detach().cpu().double().numpy(), ev.log_likelihood(new, x), rtol=1e-4)


@pytest.mark.parametrize("n, chunk", [(10, 1 << 22), (1000, 64)])  # one chunk; 16 chunks on threads
def test_log32_is_the_float64_log_rounded(n, chunk):
    from pcir.backend.runtime import _log32

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, n)
    a[::7] = 0.0  # log 0 = -inf
    a[3] = -1e-9  # clipped to 0
    with np.errstate(divide="ignore"):
        want = np.log(np.maximum(a, 0.0)).astype(np.float32)
    got = _log32(a, chunk=chunk)
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    out = np.full(n + 4, 7.0, dtype=np.float32)
    _log32(a, out=out[2 : 2 + n], chunk=chunk)  # into a slice of a bigger store
    assert out[2 : 2 + n].tobytes() == want.tobytes() and np.all(out[:2] == 7.0) and np.all(out[-2:] == 7.0)


def test_initial_values_on_threads_equal_the_serial_ones(monkeypatch):
    """The seeded initial parameters are drawn in batches of slots on several threads for big
    circuits; the stores must be bitwise the ones a single thread writes."""
    from pcir import structures
    from pcir.backend import runtime
    from pcir.backend.plan import lower

    c = structures.hclt(np.random.default_rng(1).integers(0, 5, (300, 12)), num_latents=8)
    plan = lower(c)
    names = [n for n, slot in plan.params.items() if slot.kind not in ("indicator", "literal")]
    batches = runtime._batches(names, plan, 50)
    assert [n for b in batches for n in b] == names and len(batches) > 2  # all, in order, cut up
    assert all(sum(int(np.prod(plan.params[n].shape)) for n in b) >= 50 for b in batches[:-1])

    def stores(parallel_from: int, threads: int):
        monkeypatch.setattr(runtime, "_PARALLEL_INIT", parallel_from)
        monkeypatch.setattr(runtime.os, "cpu_count", lambda: threads)
        m = runtime.CompiledCircuit(c, plan, engine="torch")
        return m.sum_logits.detach().numpy().tobytes(), m.cat_logits.detach().numpy().tobytes()

    assert stores(1, 4) == stores(1 << 62, 4) == stores(1, 1)


@pytest.mark.parametrize("engine_name", ["triton", "torch"])
def test_categorical_store_is_shared_and_renormalised_in_place(engine_name, device, monkeypatch):
    """The kernels' categorical log-probabilities live in ``cat_logits``' own storage (one
    table-sized buffer less). Logits moved off the simplex (an optimiser step, a shift per row)
    are renormalised in place at the next call: same probabilities, same likelihoods as the
    reference, and gradients and EM as before; a replaced ``.data`` is picked up."""
    from pcir import knobs

    if engine_name == "triton" and device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    c = hmm(4, 3, 5)
    x, miss = data_for(c, 9, seed=3)
    m = pc_compile(c, engine=engine_name, device=device, precision="fp32")
    with torch.no_grad():
        m(x, miss)
    assert m._cache[2].data_ptr() == m.cat_logits.data_ptr()
    cat = [p for p, slot in m.plan.params.items() if slot.kind == "categorical"]
    probs = {p: m.get_param(p).detach().cpu().double().numpy() for p in cat}
    with torch.no_grad():  # a shift per row and some noise, as an optimiser step would leave them
        rng = np.random.default_rng(0)
        noise = torch.as_tensor(rng.normal(0, 0.3, m.cat_logits.shape), dtype=torch.float32, device=m.device)
        m.cat_logits.add_(noise + 2.0)
    want = {p: m.get_param(p).detach().cpu().double().numpy() for p in cat}  # softmax of the logits
    assert any(not np.allclose(want[p], probs[p]) for p in cat)
    with torch.no_grad():
        ll = m(x, miss).cpu().double().numpy()
    after = {p: m.get_param(p).detach().cpu().double().numpy() for p in cat}
    for p in cat:
        np.testing.assert_allclose(after[p], want[p], rtol=1e-5, atol=1e-7)
    ref = ev.log_likelihood(m.to_circuit(), x, miss)
    np.testing.assert_allclose(ll, ref, rtol=1e-5, atol=1e-5)
    lse = torch.logsumexp(m.cat_logits.detach().view(-1, 5), dim=1)  # now log-probabilities
    assert float(lse.abs().max()) < 1e-5
    # autograd reads the same distribution
    np.testing.assert_allclose(m(x, miss).detach().cpu().double().numpy(), ll, rtol=1e-6)
    # EM agrees with the reference, and with an unshared store
    m.forward_backward(x, miss)
    m.em_step(0.6, 0.1)
    new = ev.em_step(c.with_params(**{p: want[p] for p in cat}), x, miss, 0.6, 0.1)
    for p in cat:
        np.testing.assert_allclose(m.get_param(p).cpu().double().numpy(), new.param_value(p), rtol=1e-4, atol=1e-6)
    # a replaced storage is noticed: the kernels read the new logits, not the old buffer
    with torch.no_grad():
        fresh = torch.log(torch.full_like(m.cat_logits, 1.0 / 5))
        m.cat_logits.data = fresh
        ll_uniform = m(x, miss).cpu().double().numpy()
    assert m._cache[2].data_ptr() == fresh.data_ptr()
    np.testing.assert_allclose(ll_uniform, ev.log_likelihood(m.to_circuit(), x, miss), rtol=1e-5, atol=1e-5)


def test_unshared_categorical_store_gives_the_same_results(device, monkeypatch):
    from pcir.backend import runtime

    c = hmm(4, 3, 5)
    x, miss = data_for(c, 9, seed=4)
    out = []
    for share in (True, False):
        monkeypatch.setattr(runtime, "SHARE_CAT_STORE", share)
        m = pc_compile(c, device=device, precision="fp32")
        m.forward_backward(x, miss)
        m.em_step(0.5, 0.1)
        with torch.no_grad():
            out.append((m(x, miss).cpu().numpy(), m._cache[2].data_ptr() == m.cat_logits.data_ptr()))
    (ll_shared, shared), (ll_own, own) = out
    assert shared and not own
    np.testing.assert_allclose(ll_shared, ll_own, rtol=1e-6, atol=1e-6)
