"""Chained sum layers in one launch (plan.find_chains, triton_engine.CHAIN, codegen's
sum_fwd_chain; docs/backend.md).

The plan finds runs of sum layers whose groups form independent chains; the forward then runs
each run as one launch, one program per (chain, batch tile) looping over the chain's steps. The
checks: which runs the plan finds (HCLT's paths, an HMM's steps, a run cut where a group reads two
of its groups), each found step read against the cols tables directly, and the chained forward
against the per-layer forward: on the CPU interpreter every stored value and group maximum bit
for bit (the kernel adds a column's inputs in _gather's order), the flows and an EM step after it
up to the order of the backward's atomic adds; on a GPU to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import circuits
from test_backend_gathers import CIRCUITS, _assert_ll_matches_reference
from test_backend_helpers import data_for

from pcir import knobs, structures
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te
from pcir.backend.plan import lower
from pcir.ir import CircuitBuilder, Dist, Domain, verify


def _hclt12():
    """An HCLT over 12 variables of a Markov chain (each one copies the one before it with
    probability 0.8): its tree is a path, so the circuit has long runs of two chains."""
    rng = np.random.default_rng(0)
    x = np.zeros((400, 12), dtype=np.int64)
    x[:, 0] = rng.integers(0, 3, 400)
    for i in range(1, 12):
        x[:, i] = np.where(rng.random(400) < 0.8, x[:, i - 1], rng.integers(0, 3, 400))
    return structures.hclt(x, num_latents=8)


def _two_chains_then_a_join():
    """s0 -> s1 and t0 -> t1 (two chains), then j reads s1 and t1 (both chains), then the root."""
    b = CircuitBuilder(seed=2)
    xs = b.variables(6, Domain.categorical(3))
    a = [b.input(x, 4, Dist.make("categorical", k=3)) for x in xs]
    s0 = b.sum([b.product([a[0], a[1]])], 4)
    t0 = b.sum([b.product([a[3], a[4]])], 4)
    s1 = b.sum([b.product([s0, a[2]])], 4)
    t1 = b.sum([b.product([t0, a[5]])], 4)
    j = b.sum([b.product([s1, t1])], 4)
    b.root(b.sum([j], 1))
    return verify(b.build())


def _sum_owner(plan) -> dict[int, tuple[int, int]]:
    """row -> (layer, group position) for every sum row, from the plan's groups."""
    out = {}
    for t, lay in enumerate(plan.layers):
        if lay.kind == "sum":
            for i, g in enumerate(lay.groups):
                for r in range(g.row, g.row + g.units):
                    out[r] = (t, i)
    return out


def _check_steps(plan) -> None:
    """Every found step reads, of its run's rows, exactly its predecessor's group."""
    owner = _sum_owner(plan)
    for ch in plan.chains:
        for path in ch.groups:
            assert len(path) == ch.end - ch.start
            for j in range(1, len(path)):
                g = plan.layers[ch.start + j].groups[path[j]]
                seen = {owner[int(r)] for r in np.asarray(g.cols).reshape(-1) if int(r) in owner}
                inside = {o for o in seen if ch.start <= o[0] < ch.start + j}
                assert inside == {(ch.start + j - 1, path[j - 1])}, (ch, j, inside)
        for j in range(ch.end - ch.start):  # every group of each layer is on exactly one chain
            assert sorted(p[j] for p in ch.groups) == list(range(len(plan.layers[ch.start + j].groups)))


def test_an_hmm_is_one_chain_through_every_layer():
    plan = lower(structures.hmm(6, 4, 5))
    assert [(ch.start, ch.end, len(ch.groups)) for ch in plan.chains] == [(0, len(plan.layers), 1)]
    _check_steps(plan)
    assert f"chain layers=[0,{len(plan.layers)}) chains=1" in plan.to_text()


def test_hclt_paths_are_chains_and_each_step_reads_its_predecessor():
    plan = lower(_hclt12())
    assert plan.chains, plan.to_text()
    assert max(ch.end - ch.start for ch in plan.chains) >= 4
    _check_steps(plan)
    runs = [range(ch.start, ch.end) for ch in plan.chains]
    assert all(set(a).isdisjoint(b) for i, a in enumerate(runs) for b in runs[i + 1 :])


def test_a_group_reading_two_chains_ends_the_run():
    plan = lower(_two_chains_then_a_join())
    _check_steps(plan)
    layer_of = {g.name: t for t, lay in enumerate(plan.layers) for g in lay.groups}
    first = next(ch for ch in plan.chains if ch.start == 0)
    assert (first.end, len(first.groups)) == (2, 2)  # s0 -> s1, t0 -> t1
    join = max(layer_of.values()) - 1  # j's layer: it reads s1 and t1
    assert not any(ch.start < join < ch.end or (ch.start < 2 and ch.end > 2) for ch in plan.chains)


def test_table_driven_layers_form_no_chains():
    assert lower(CIRCUITS["pd"]()).chains == []


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _run(c, chain: bool, x, miss, device, monkeypatch):
    """(the forward's V and M, the number of chained launches, the flows, the log-likelihoods
    after an EM step) with ``triton_engine.CHAIN = chain``."""
    monkeypatch.setattr(te, "CHAIN", chain)
    m = pc_compile(c, engine="triton", device=device, precision="fp32")
    m.cuda_graphs = False
    eng = m._engine()
    seen: dict = {"chained": 0}
    real_fwd, real_chain = eng.forward, eng.chain_forward

    def spy_fwd(*a, **kw):
        warming = eng._warming()  # precompile's replay (a GPU's first call): nothing runs
        V, M = real_fwd(*a, **kw)
        if not warming:
            seen.setdefault("VM", (V.clone(), M.clone()))
        return V, M

    def spy_chain(*a, **kw):
        if not eng._warming():  # precompile's replay (a GPU's first call) only compiles
            seen["chained"] += 1
        return real_chain(*a, **kw)

    monkeypatch.setattr(eng, "forward", spy_fwd)
    monkeypatch.setattr(eng, "chain_forward", spy_chain)
    xt, mt = torch.as_tensor(x, device=device), torch.as_tensor(miss, device=device)
    with torch.no_grad():
        m(xt, mt)
    chained = seen["chained"]
    _assert_ll_matches_reference(m, c, x, miss)  # the circuit's own parameters still
    m.zero_flows()
    m.forward_backward(xt, mt)
    flows = [f.detach().cpu().clone() for f in m.flow_tensors()]
    m.em_step(0.5, 0.1)
    with torch.no_grad():
        after = m(xt, mt).cpu().clone()
    V, M = seen["VM"]
    return (V.cpu(), M.cpu()), chained, flows, after, m


class _KernelCount:
    """A view of an engine's kernel module counting its launches by (kernel, VEC constant)."""

    def __init__(self, module):
        self._module = module
        self.n: dict = {}

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not hasattr(fn, "warmup"):
            return fn
        n = self.n

        class _Grid:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    key = (name, kwargs.get("VEC"))
                    n[key] = n.get(key, 0) + 1
                    return fn[grid](*args, **kwargs)

                return launch

        return _Grid()


# (batch, the vector form): CHAIN_VEC_MAX_B 4 or 0 (the matrix-product form)
FORMS = [(1, False), (1, True), (3, True), (70, False)]


@pytest.mark.parametrize("batch,vec", FORMS)
@pytest.mark.parametrize("name", ["hclt12", "hmm", "join"])
def test_chained_forward_is_the_per_layer_forward(name, batch, vec, triton_device, monkeypatch):
    """The matrix-product form (sum_fwd_chain) adds as the per-layer kernel does: on the CPU
    interpreter, equal bit for bit; the vector form (VEC, small batches) sums a row in another
    order: equal to rounding."""
    monkeypatch.setattr(te, "CHAIN_VEC_MAX_B", 4 if vec else 0)
    c = {"hclt12": _hclt12, "hmm": lambda: structures.hmm(7, 4, 6), "join": _two_chains_then_a_join}[name]()
    x, miss = data_for(c, batch, seed=batch + 5, p_missing=0.2)
    (V0, M0), n0, flows0, after0, _ = _run(c, False, x, miss, triton_device, monkeypatch)
    (V1, M1), n1, flows1, after1, m = _run(c, True, x, miss, triton_device, monkeypatch)
    assert n0 == 0 and n1 == len(lower(c).chains) >= 1
    if triton_device == "cpu" and not vec:  # same arithmetic in the same order
        assert torch.equal(V0, V1) and torch.equal(M0, M1)
    else:
        torch.testing.assert_close(V1, V0, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(M1, M0, rtol=1e-6, atol=1e-6)
    for f0, f1 in zip(flows0, flows1, strict=True):
        torch.testing.assert_close(f1, f0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after1, after0, rtol=1e-5, atol=1e-5)


def test_no_chained_launch_where_a_layer_is_a_batched_product_or_a_tile_is_empty(triton_device, monkeypatch):
    c = structures.hmm(5, 4, 6)
    x, miss = data_for(c, 70, seed=3)
    for knob in ("BMM_MIN_EDGES", "BMM_MIN_UNITS"):
        monkeypatch.setattr(te, knob, 0)
    monkeypatch.setattr(te, "BMM_MIN_FILL", 0.0)
    _vm, n, _f, _a, m = _run(c, True, x, miss, triton_device, monkeypatch)
    assert n == 0  # every layer a batched product at 70: no chain
    eng = m._engine()
    run = next(iter(eng.chain_at.values()))
    assert not eng.use_chain(run, 70) and eng.use_chain(run, 8)
    run.ok = False
    assert not eng.use_chain(run, 8)
    assert eng.fwd_launch_counts(8) == [eng.fwd_launches(L, 8) for L in eng.layers]
    run.ok = True
    assert eng.fwd_launch_counts(8) == [1] + [0] * (len(eng.layers) - 1)


@pytest.mark.parametrize("latents, chained", [(80, True), (130, False)])
def test_a_step_is_one_tile_of_the_launchs_own_up_to_the_cap(latents, chained, triton_device, monkeypatch):
    """80 latents: the layers' 64 x 64 tiles, two node tiles a step; the chained launch takes
    one 128 x 128 tile (not the per-layer arithmetic: equal to rounding). 130: past
    CHAIN_MAX_TILE, per layer."""
    c = structures.hmm(3, latents, 5)
    assert lower(c).chains
    x, miss = data_for(c, 5, seed=4, p_missing=0.2)
    (V0, M0), _n0, _f0, after0, _ = _run(c, False, x, miss, triton_device, monkeypatch)
    (V1, M1), n, _f1, after1, m = _run(c, True, x, miss, triton_device, monkeypatch)
    run = next(iter(m._engine().chain_at.values()))
    assert (run.ok, n) == (chained, int(chained))
    assert run.bm == run.bk == (128 if chained else 256)
    finite = torch.isfinite(V0)
    assert torch.equal(finite, torch.isfinite(V1))
    torch.testing.assert_close(V1[finite], V0[finite], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after1, after0, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(circuits(max_vars=5, max_units=4))
def test_every_chain_found_in_a_random_circuit_is_valid(c):
    """Shared regions, block-sparse and explicit sums, stored products, several roots: whatever
    runs the plan reports, every step reads exactly its predecessor's group."""
    _check_steps(lower(c))


@st.composite
def _random_trees(draw):
    """An HCLT over a random tree (a random Pruefer sequence) of 3-14 variables, 1-5 latents, a
    random root: paths and branches of every length."""
    n = draw(st.integers(3, 14))
    seq = draw(st.lists(st.integers(0, n - 1), min_size=n - 2, max_size=n - 2))
    degree = [1] * n
    for v in seq:
        degree[v] += 1
    edges = []
    for v in seq:
        leaf = min(i for i in range(n) if degree[i] == 1)
        edges.append((leaf, v))
        degree[leaf] -= 1
        degree[v] -= 1
    a, b = [i for i in range(n) if degree[i] == 1]
    edges.append((a, b))
    return structures.hclt(
        tree=edges, num_vars=n, root=draw(st.integers(0, n - 1)), num_latents=draw(st.integers(1, 5)),
        input_dist="categorical(k=3)", seed=draw(st.integers(0, 9)),
    )  # fmt: skip


@settings(max_examples=12, deadline=None, derandomize=True)
@given(_random_trees(), st.integers(1, 40))
def test_chained_forward_on_random_trees_matches_the_reference(c, batch):
    if not knobs.get().triton_interpret:
        pytest.skip("the Triton engine on the CPU needs TRITON_INTERPRET=1")
    plan = lower(c)
    _check_steps(plan)
    x, miss = data_for(c, batch, seed=batch, p_missing=0.2)
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    assert all(r.ok for r in m._engine().chain_at.values())  # units and columns of at most 128
    _assert_ll_matches_reference(m, c, x, miss)


def test_chained_launch_batch_tile_follows_the_step_size():
    """From batch 64 on, runs of steps of at most CHAIN_SMALL_TILE weights take batch tiles of
    CHAIN_BB_SMALL (twice the programs: hclt-32 was faster, hclt-64 and hclt-128 slower), the
    others 32; smaller batches their own tile; CHAIN_BB overrides."""

    class Run:
        def __init__(self, bm, bk):
            self.bm, self.bk = bm, bk

    assert te._chain_bb(Run(32, 32), 512) == te.CHAIN_BB_SMALL == 16
    assert te._chain_bb(Run(16, 32), 64) == 16
    assert te._chain_bb(Run(64, 64), 512) == 32
    assert te._chain_bb(Run(32, 64), 512) == 32
    assert te._chain_bb(Run(32, 32), 8) == te._batch_tile(8)
    assert te._chain_bb(Run(128, 128), 1) == te._batch_tile(1)


def test_chained_launch_on_batch_tiles_of_16(triton_device, monkeypatch):
    """CHAIN_BB = 16 (the probe's variant chainbb16): twice the programs at a batch of 70, the
    same values as the per-layer forward."""
    c = structures.hmm(6, 8, 5)
    x, miss = data_for(c, 70, seed=11, p_missing=0.2)
    (V0, M0), _n0, _f0, _a0, _ = _run(c, False, x, miss, triton_device, monkeypatch)
    monkeypatch.setattr(te, "CHAIN_BB", 16)
    (V1, M1), n, _f1, _a1, _ = _run(c, True, x, miss, triton_device, monkeypatch)
    assert n == 1
    torch.testing.assert_close(V1, V0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(M1, M0, rtol=0, atol=0)


def _flows_and_step(c, x, miss, device, monkeypatch, chain_bwd: bool):
    """(the flows of forward_backward, the log-likelihoods after one train_step, chained
    backward launches) with ``triton_engine.CHAIN_BWD = chain_bwd``."""
    monkeypatch.setattr(te, "CHAIN_BWD", chain_bwd)
    xt, mt = torch.as_tensor(x, device=device), torch.as_tensor(miss, device=device)
    used = 0
    out = []
    for step in (False, True):  # forward_backward (flows in F), then train_step (the leaf alias)
        m = pc_compile(c, engine="triton", device=device, precision="fp32")
        m.cuda_graphs = False
        eng = m._engine()
        real = eng.chain_backward

        def spy(*a, _real=real, _eng=eng, **kw):
            nonlocal used
            used += not _eng._warming()
            return _real(*a, **kw)

        monkeypatch.setattr(eng, "chain_backward", spy)
        if step:
            m.train_step(xt, 0.5, 0.1, mt)
            with torch.no_grad():
                out.append(m(xt, mt).cpu().clone())
        else:
            m.zero_flows()
            m.forward_backward(xt, mt)
            out.append([f.detach().cpu().clone() for f in m.flow_tensors()])
    return out[0], out[1], used


@pytest.mark.parametrize("batch,vec", FORMS)
@pytest.mark.parametrize("name", ["hclt12", "hmm", "join"])
def test_chained_backward_is_the_per_layer_backward(name, batch, vec, triton_device, monkeypatch):
    """CHAIN_BWD (on by default where a step fits 64 x 64): the flows of forward_backward and a training
    step (whose backward keeps G in the value rows: the per-step flags) as per layer, in the
    matrix-product form and the vector form (VEC, small batches)."""
    monkeypatch.setattr(te, "CHAIN_VEC_MAX_B", 4 if vec else 0)
    c = {"hclt12": _hclt12, "hmm": lambda: structures.hmm(7, 4, 6), "join": _two_chains_then_a_join}[name]()
    x, miss = data_for(c, batch, seed=batch + 7, p_missing=0.2)
    flows0, after0, used0 = _flows_and_step(c, x, miss, triton_device, monkeypatch, False)
    flows1, after1, used1 = _flows_and_step(c, x, miss, triton_device, monkeypatch, True)
    assert used0 == 0 and used1 == 2 * len(lower(c).chains)
    for f0, f1 in zip(flows0, flows1, strict=True):
        torch.testing.assert_close(f1, f0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after1, after0, rtol=1e-5, atol=1e-5)


def test_chained_backward_in_node_sub_tiles_and_past_its_tile_cap(triton_device, monkeypatch):
    """A 128 x 128 step: eight node sub-tiles of 16 (CHAIN_BWD_SUB_WIDE), the same flows as per
    layer; with the cap lowered to 64, per layer."""
    c = structures.hmm(3, 80, 5)
    x, miss = data_for(c, 5, seed=2, p_missing=0.2)
    monkeypatch.setattr(te, "CHAIN_BWD_MAX_TILE", 64)
    flows0, after0, used = _flows_and_step(c, x, miss, triton_device, monkeypatch, True)
    assert used == 0
    monkeypatch.setattr(te, "CHAIN_BWD_MAX_TILE", 128)
    flows1, after1, used = _flows_and_step(c, x, miss, triton_device, monkeypatch, True)
    assert used == 2
    for f0, f1 in zip(flows0, flows1, strict=True):
        torch.testing.assert_close(f1, f0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after1, after0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_small_batches_run_the_vector_forms_on_steps_past_the_matrix_forms_cap(batch, triton_device, monkeypatch):
    """Up to CHAIN_VEC_MAX_B samples (2 here; CHAIN_VEC_BWD_MAX_TILE 128) the chained runs take the VEC forms of
    sum_fwd_chain and sum_bwd_chain, one program per chain, the backward on 128 x 128 steps
    (CHAIN_BWD_MAX_TILE, 64, caps the matrix-product form only); at 3 the matrix-product forward
    and the per-layer backward. Values, flows and an EM step as per layer either way."""
    monkeypatch.setattr(te, "CHAIN_VEC_MAX_B", 2)
    monkeypatch.setattr(te, "CHAIN_VEC_BWD_MAX_TILE", 128)
    c = structures.hmm(4, 80, 5)
    x, miss = data_for(c, batch, seed=batch, p_missing=0.2)
    monkeypatch.setattr(te, "CHAIN_BWD", False)
    (V0, M0), _, flows0, after0, _ = _run(c, False, x, miss, triton_device, monkeypatch)
    monkeypatch.setattr(te, "CHAIN_BWD", True)
    (V1, M1), n1, flows1, after1, m = _run(c, True, x, miss, triton_device, monkeypatch)
    eng = m._engine()
    count = _KernelCount(eng.k)
    monkeypatch.setattr(eng, "k", count)
    xt, mt = torch.as_tensor(x, device=triton_device), torch.as_tensor(miss, device=triton_device)
    with torch.no_grad():
        m(xt, mt)
    m.zero_flows()
    m.forward_backward(xt, mt)
    vec = batch <= 2
    assert n1 == 1
    assert count.n.get(("sum_fwd_chain", vec), 0) == 2  # the call's forward and forward_backward's
    assert count.n.get(("sum_fwd_chain", not vec), 0) == 0
    assert count.n.get(("sum_bwd_chain", True), 0) == int(vec)
    assert count.n.get(("sum_bwd_chain", False), 0) == 0
    finite = torch.isfinite(V0)
    assert torch.equal(finite, torch.isfinite(V1))
    torch.testing.assert_close(V1[finite], V0[finite], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(M1, M0, rtol=1e-6, atol=1e-6)
    for f0, f1 in zip(flows0, flows1, strict=True):
        torch.testing.assert_close(f1, f0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after1, after0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 70])
@pytest.mark.parametrize("name", ["hmm16", "hclt16"])
def test_runs_of_whole_weight_tiles_load_them_unmasked_with_the_same_results(name, batch, triton_device, monkeypatch):
    """Steps of the launch's bk columns (16 here; the HMM's last, its root, has one node) take
    the kernels' FULL form (no column masks, one aligned base: triton_engine.CHAIN_FULL); its
    values and maxima are the masked form's bit for bit on the CPU interpreter (the same
    arithmetic), its flows up to the order of the atomic adds."""
    if name == "hmm16":
        c = structures.hmm(5, 16, 6)
    else:
        rng = np.random.default_rng(3)
        c = structures.hclt(rng.integers(0, 3, (300, 7)), num_latents=16)
    x, miss = data_for(c, batch, seed=batch + 11, p_missing=0.2)
    monkeypatch.setattr(te, "CHAIN_FULL", False)
    (V0, M0), n0, flows0, after0, m0 = _run(c, True, x, miss, triton_device, monkeypatch)
    monkeypatch.setattr(te, "CHAIN_FULL", True)
    (V1, M1), n1, flows1, after1, m1 = _run(c, True, x, miss, triton_device, monkeypatch)
    chains0 = list(m0._engine().chain_at.values())
    chains1 = list(m1._engine().chain_at.values())
    assert chains1 and all(r.full for r in chains1) and not any(r.full for r in chains0)
    assert n0 == n1 == len(chains1)
    if triton_device == "cpu":  # (maxima by atomic max: any order gives the same)
        assert torch.equal(V0, V1) and torch.equal(M0, M1)
    else:
        torch.testing.assert_close(V1, V0, rtol=1e-6, atol=1e-6)
    # the parameter flows add the batch tiles' shares atomically, in the order the programs run
    # (shuffled on the interpreter in CI: PCIR_PROGRAM_ORDER)
    for f0, f1 in zip(flows0, flows1, strict=True):
        torch.testing.assert_close(f1, f0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(after1, after0, rtol=1e-5, atol=1e-5)


def test_no_chained_backward_where_the_alias_end_cuts_a_block_of_rows(triton_device):
    """sum_bwd_chain shifts each block of rows (a step's nodes, an input's K rows) to its flow
    rows once, so a run where the alias end fell inside one would keep the per-layer backward;
    in the circuits built here it never does (it ends a layer)."""
    for c in (_hclt12(), structures.hmm(5, 16, 6), _two_chains_then_a_join()):
        m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
        eng = m._engine()
        runs = list(eng.chain_at.values())
        assert runs and not any(r.split for r in runs)
        assert all(r.blocks for r in runs)
        run = runs[0]
        row, units = run.blocks[0]
        assert eng.use_chain_bwd(run, 70)
        assert units > 1 and run.cut_by(row + 1) and not run.cut_by(row, row + units)
        run.split = run.cut_by(row + 1)  # as if the alias ended inside the first step's nodes
        assert not eng.use_chain_bwd(run, 70)
