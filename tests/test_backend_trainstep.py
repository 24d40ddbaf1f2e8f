"""``CompiledCircuit.train_step``: one mini-batch EM step, ``forward_backward`` then ``em_step``.

On the Triton engine the categorical and bernoulli tables are updated inside the step from the
leaves' flows (``TritonEngine.input_stats`` with ``em``: the rows' total flows, a linear-space
prior pass, the count kernels scaled, a log pass), so the counts buffer ``cat_flows`` is never
allocated. Oracle: the same model driven by the two calls (whose EM is tested against the
reference evaluator elsewhere). Every parameter must agree, on every circuit of the gather tests,
with the tables' counts by matrix product and by scatter; bad data must change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_gathers import CIRCUITS
from test_backend_helpers import data_for

from pcir import knobs, structures
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te
from pcir.ir.diagnostics import DataError

PARAMS = ("sum_logits", "cat_logits", "gauss")


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _params(m) -> dict[str, np.ndarray]:
    return {n: getattr(m, n).detach().cpu().numpy().copy() for n in PARAMS}


def _assert_same_params(a, b, what: str) -> None:
    """Equal distributions: probabilities (exp of the log-parameters) within float32 rounding,
    and the same zero-probability entries."""
    pa, pb = _params(a), _params(b)
    for n in ("sum_logits", "cat_logits"):
        x, y = pa[n], pb[n]
        assert np.array_equal(np.isneginf(x), np.isneginf(y)), f"{what}: {n} zero entries differ"
        np.testing.assert_allclose(np.exp(x), np.exp(y), rtol=2e-5, atol=1e-7, err_msg=f"{what}: {n}")
    np.testing.assert_allclose(pa["gauss"], pb["gauss"], rtol=2e-5, atol=1e-6, err_msg=f"{what}: gauss")


def _pair(c, device):
    return (pc_compile(c, engine="triton", device=device, precision="fp32") for _ in range(2))


@pytest.mark.parametrize("counts", ["product", "scatter", "product-tiles", "scatter-tiles"])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_train_step_equals_forward_backward_then_em_step(name, counts, triton_device, monkeypatch):
    """Three steps on different batches (with missing values), each against the two calls; the
    counts as one-hot products (small tables) or by scatter (COUNT_SCATTER_K 1: every table);
    ``-tiles``: node tiles of 2 units (16 for the products), so that groups span several tiles (the first GPU run had
    the row totals' index wrong past a group's first tile, which one-tile groups never show)."""
    monkeypatch.setattr(te, "COUNT_SCATTER_K", 1 if counts.startswith("scatter") else te.COUNT_SCATTER_K)
    if counts.endswith("tiles"):
        monkeypatch.setattr(te, "COUNT_BU", 16)  # (tl.dot needs 16)
        monkeypatch.setattr(te, "SCATTER_BU", 2)
    c = CIRCUITS[name]()
    ref, m = _pair(c, triton_device)
    before = _params(m)
    for step, (s, pc) in enumerate([(0.3, 0.1), (1.0, 0.0), (0.5, 1.0)]):
        x, miss = data_for(c, 37, seed=10 + step, p_missing=0.2)
        ll_ref = ref.forward_backward(x, miss)
        ref.em_step(s, pc)
        ll = m.train_step(x, s, pc, miss)
        np.testing.assert_allclose(ll.cpu().numpy(), ll_ref.cpu().numpy(), rtol=1e-5, atol=1e-5, err_msg=f"step {step}")
        _assert_same_params(m, ref, f"{name}, step {step}")
    assert m.cat_flows.numel() == 0, "the fused step allocated the counts buffer"
    explicit = m.plan.w_size > m.plan.sum_param_size
    assert m.sum_flows.numel() == (m.plan.sum_param_size if explicit else 0), "sum flows allocated"
    if m.plan.cat_size:
        assert ref.cat_flows.numel() == m.plan.cat_size
        # the steps did change the tables (a step that updated nothing would pass the above
        # only if the two calls did nothing too)
        assert not np.allclose(np.exp(before["cat_logits"]), np.exp(_params(m)["cat_logits"]), atol=1e-4)


def test_rows_without_mass_keep_their_exact_values(triton_device):
    """Pseudocount 0 and a variable missing in every sample: its tables get no flow and keep
    their (normalised) log-probabilities bit for bit, as em_step keeps them; the others change."""
    c = structures.hclt(np.random.default_rng(0).integers(0, 3, (200, 5)), num_latents=4)
    ref, m = _pair(c, triton_device)
    x, _ = data_for(c, 40, seed=3)
    miss = np.zeros(x.shape, dtype=bool)
    miss[:, 2] = True
    before = _params(m)["cat_logits"]
    ref.forward_backward(x, miss)
    ref.em_step(0.7, 0.0)
    m.train_step(x, 0.7, 0.0, miss)
    after = _params(m)["cat_logits"]
    _assert_same_params(m, ref, "variable 2 missing")
    var2 = [n for n, g in m.plan.params.items() if g.kind == "categorical" and _reads_var(m, n, 2)]
    assert var2, "no table of variable 2"
    for n in var2:
        slot = m.plan.params[n]
        sl = slice(slot.offset, slot.offset + int(np.prod(slot.shape)))
        kept = _params(ref)["cat_logits"][sl]
        assert np.array_equal(after[sl], kept), f"{n}: a table without flow changed"
        np.testing.assert_allclose(after[sl], before[sl], rtol=1e-6)  # (before: not yet normalised)
    assert not np.array_equal(after, before)


def _reads_var(m, param: str, var: int) -> bool:
    for b in m.plan.inputs:
        for gname, row, _units in b.groups:
            if m.plan.group_param.get(gname) == param and int(b.var[row - b.row]) == var:
                return True
    return False


@pytest.mark.parametrize("name", ["hclt", "block_sparse"])
def test_checked_steps_replayed_wait_for_the_check_only(name, triton_device):
    """Steps without a missing mask, the value check inside the step: on CUDA the first runs
    eagerly, the second captures a graph whose check writes its verdict to a pinned word, the
    rest replay it and wait for that word only, not the step (``_verdict``). Every step as the
    two calls; then a bad batch on the replayed graph raises and changes nothing."""
    c = CIRCUITS[name]()
    ref, m = _pair(c, triton_device)
    for step in range(5):
        x, _ = data_for(c, 24, seed=40 + step)
        ll_ref = ref.forward_backward(x)
        ref.em_step(0.5, 0.1)
        ll = m.train_step(x, 0.5, 0.1)
        np.testing.assert_allclose(ll.cpu().numpy(), ll_ref.cpu().numpy(), rtol=1e-5, atol=1e-5, err_msg=f"step {step}")
        _assert_same_params(m, ref, f"{name}, step {step}")
    ents = [e for k, e in m._graphs.items() if k[0] == "train-checked"]
    if triton_device == "cuda":
        assert len(ents) == 1 and type(ents[0]) is tuple and ents[0][3] is not None
        assert int(ents[0][3][2][0]) == 0  # the last replay's verdict: nothing rejected
    before = _params(m)
    bad = x.copy()
    bad[3, 2] = 99 if c.variables[2].domain.is_discrete else np.inf
    with pytest.raises(DataError, match="row 3, column 2"):
        m.train_step(bad, 0.5, 0.1)
    if triton_device == "cuda":
        assert int(ents[0][3][2][0]) == 1
    for n, v in _params(m).items():
        assert np.array_equal(v, before[n]), f"{n} changed on bad data"


@pytest.mark.parametrize("name", ["hclt", "zero_probs", "block_sparse"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_bad_data_changes_no_parameter(with_mask, name, triton_device):
    """An out-of-range value: the DataError of forward_backward, and every parameter as before
    bit for bit (the step size is 0 inside the step, and the logits' storage, which holds the
    sums' flows during a good step, is left alone), with or without a missing mask."""
    c = CIRCUITS[name]()
    (m,) = (pc_compile(c, engine="triton", device=triton_device, precision="fp32"),)
    x, miss = data_for(c, 20, seed=5, p_missing=0.1 if with_mask else 0.0)
    m.train_step(x, 0.5, 0.1, miss if with_mask else None)  # a good step first
    before = _params(m)
    bad = x.copy()
    bad[7, 1] = 99 if c.variables[1].domain.is_discrete else np.inf
    with pytest.raises(DataError, match="row 7, column 1"):
        m.train_step(bad, 0.5, 0.1, miss if with_mask else None)
    for n, v in _params(m).items():
        assert np.array_equal(v, before[n]), f"{n} changed on bad data"
    # (the flows of a fused step live in the logits' storage, checked above; no buffer appeared)
    assert m.sum_flows.numel() == 0 and m.cat_flows.numel() == 0
    m.train_step(x, 0.5, 0.1, miss if with_mask else None)  # and training goes on
    assert not np.array_equal(_params(m)["cat_logits"], before["cat_logits"])


def test_pending_flows_and_options_take_the_two_calls(triton_device):
    """Flows waiting from an earlier forward_backward are applied with the step's (the two calls'
    semantics); entropy and softening are not fused and give the two calls' result too."""
    c = CIRCUITS["pd"]()
    x1, miss1 = data_for(c, 25, seed=1, p_missing=0.1)
    x2, miss2 = data_for(c, 25, seed=2, p_missing=0.1)
    ref, m = _pair(c, triton_device)
    ref.forward_backward(x1, miss1)
    ref.forward_backward(x2, miss2)
    ref.em_step(0.4, 0.2)
    m.forward_backward(x1, miss1)
    m.train_step(x2, 0.4, 0.2, miss2)
    _assert_same_params(m, ref, "pending flows")
    assert float(m.cat_flows.abs().sum()) == 0.0  # applied and zeroed by the step
    for opt in ({"entropy": 0.3}, {"soften": 0.9}):
        ref, m = _pair(c, triton_device)
        if "soften" in opt:
            ref.soften = m.soften = opt["soften"]
        ent = opt.get("entropy", 0.0)
        ref.forward_backward(x1, miss1)
        ref.em_step(0.4, 0.2, ent)
        m.train_step(x1, 0.4, 0.2, miss1, entropy=ent)
        _assert_same_params(m, ref, str(opt))
    # after the fallback, a plain step fuses again (nothing pending)
    m.train_step(x2, 0.4, 0.2, miss2)


def test_torch_engine_train_step(device):
    """The torch engine has no fused update: train_step is the two calls."""
    c = CIRCUITS["hmm"]()
    x, miss = data_for(c, 30, seed=6, p_missing=0.1)
    ref = pc_compile(c, engine="torch", device=device)
    m = pc_compile(c, engine="torch", device=device)
    ref.forward_backward(x, miss)
    ref.em_step(0.5, 0.1)
    ll = m.train_step(x, 0.5, 0.1, miss)
    assert ll.shape == (30,)
    for n in PARAMS:  # (the same calls; on a GPU the torch engine's atomics order the sums freely)
        torch.testing.assert_close(getattr(m, n), getattr(ref, n), rtol=1e-6, atol=1e-7)


def test_step_memory_lists_no_counts_for_the_fused_step():
    """train_memory describes train_step: no table-sized counts where the step fuses the update."""
    c = CIRCUITS["hclt"]()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32") if _triton() else None
    if m is None:
        pytest.skip("no Triton")
    mem = m.train_memory(64)
    assert "categorical_counts" not in mem["model"] and "cat_flows" not in mem["model"], mem
    assert mem["step"]["table row flows"] == 4 * m.plan.cat_num_rows
    m.soften = 0.9  # not fused: the counts are the step's
    assert m.train_memory(64)["model"]["categorical_counts"] == 4 * m.plan.cat_size


def _triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", ["hclt", "hmm"])
def test_updated_tables_stay_normalised_in_tf32(name, triton_device):
    """The tables' row totals are summed by the counts' own product: at precision tf32 (whose
    products round the flows to 10 bits on a GPU) every updated row still sums to 1 to float32
    rounding. A total summed in float32 next to tf32 counts misses by about 1e-4. One-pass tables
    (hclt) and four-pass tied ones (hmm)."""
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="tf32")
    for step in range(4):
        x, miss = data_for(c, 64, seed=20 + step, p_missing=0.1)
        m.train_step(x, 0.9, 0.01, miss)
    for slot in m.plan.params.values():
        if slot.kind != "categorical":
            continue
        n = int(np.prod(slot.shape))
        p = torch.exp(m.cat_logits.detach()[slot.offset : slot.offset + n].double()).view(-1, slot.k)
        np.testing.assert_allclose(p.sum(1).cpu().numpy(), 1.0, atol=3e-6, err_msg=slot.name)


def test_long_tied_rows_over_several_column_chunks(triton_device):
    """An HMM whose tied emission rows (1,500 categories) are longer than the row passes' column
    chunk (1,024): counted by scatter, updated in four passes, each row over two programs."""
    c = structures.hmm(3, 4, 1500)
    ref, m = _pair(c, triton_device)
    eng = m._engine()
    assert eng.scatter_n and any(chunks == 2 for *_, chunks in eng.cat_em_tiles), eng.cat_em_tiles
    for step in range(2):
        x, miss = data_for(c, 50, seed=30 + step, p_missing=0.1)
        ref.forward_backward(x, miss)
        ref.em_step(0.6, 0.05)
        m.train_step(x, 0.6, 0.05, miss)
        _assert_same_params(m, ref, f"step {step}")


def test_an_error_inside_the_step_keeps_the_distributions(triton_device, monkeypatch):
    """The sums' logits hold flows while a fused step runs: an error there (here the leaf
    statistics raise) rebuilds them from W before it propagates, so every sum keeps its
    distribution; the tables, not yet touched, keep theirs."""
    c = CIRCUITS["pd"]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, 20, seed=8, p_missing=0.1)
    m.train_step(x, 0.5, 0.1, miss)
    before = _params(m)
    eng = m._engine()

    def boom(*a, **kw):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(eng, "input_stats", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        m.train_step(x, 0.5, 0.1, miss)
    after = _params(m)
    np.testing.assert_allclose(np.exp(after["sum_logits"]), np.exp(before["sum_logits"]), rtol=1e-6, atol=1e-7)
    assert np.array_equal(after["cat_logits"], before["cat_logits"])
    monkeypatch.undo()
    m.train_step(x, 0.5, 0.1, miss)  # and the model trains on
    assert np.isfinite(_params(m)["sum_logits"][np.isfinite(before["sum_logits"])]).all()
