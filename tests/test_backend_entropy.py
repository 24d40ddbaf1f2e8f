"""Entropy regularisation of the EM step (``em_step(entropy=tau)``, ``pcir train --entropy``).

Three oracles: the optimality (KKT) conditions of ``argmax sum p log theta + tau H(theta)``, a
brute-force search on small simplices, and the reference evaluator's bisection solver, which
both engines must match on every hand-built case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs
from test_backend_helpers import CASES, data_for

from pcir.backend import compile as pc_compile
from pcir.backend.entropy import max_entropy_rows, regularised_counts
from pcir.ir import PcirError
from pcir.ir import evaluator as ev


def _rowsum(x):
    return x.sum(1, keepdim=True).expand_as(x)


def _objective(p, theta, tau):
    t = np.clip(theta, 1e-300, None)
    return (p * np.log(t)).sum(-1) - tau * (theta * np.log(t)).sum(-1)


@settings(max_examples=60, deadline=None)
@given(
    k=hs.integers(2, 9),
    tau=hs.sampled_from([1e-3, 0.01, 0.1, 0.5, 2.0, 10.0]),
    seed=hs.integers(0, 10_000),
    zeros=hs.integers(0, 3),
)
def test_solution_meets_the_optimality_conditions(k, tau, seed, zeros):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.5), size=4)
    p[:, : min(zeros, k - 1)] = 0.0  # zero counts get mass too
    p /= p.sum(1, keepdims=True)
    edge = torch.ones(p.shape, dtype=torch.bool)
    theta = max_entropy_rows(torch.tensor(p), edge, tau, _rowsum).numpy()
    np.testing.assert_allclose(theta.sum(1), 1.0, atol=1e-10)
    # the entropy term's gradient is infinite at 0, so zero counts get mass e^-nu >= e^-(1/tau +
    # log k) (which underflows float64 below tau ~ 1/700)
    if tau >= 0.01:
        assert (theta > 0).all()
    live = theta > 1e-280
    # stationarity: p_c / theta_c - tau (log theta_c + 1) is the same for every c of a row
    g = np.where(live, p / np.where(live, theta, 1.0) - tau * (np.log(np.where(live, theta, 1.0)) + 1.0), np.nan)
    spread = np.nanmax(g, 1) - np.nanmin(g, 1)
    np.testing.assert_allclose(spread, 0.0, atol=1e-6 * (1 + np.nanmax(np.abs(g))))
    # and the reference's bisection agrees
    ref = ev.max_entropy(p, np.ones(p.shape, bool), tau)
    np.testing.assert_allclose(theta, ref, rtol=1e-7, atol=1e-12)


def test_solution_beats_every_point_of_a_grid_on_the_3_simplex():
    p = np.array([0.7, 0.25, 0.05])
    tau = 0.3
    theta = max_entropy_rows(torch.tensor(p[None]), torch.ones((1, 3), dtype=torch.bool), tau, _rowsum).numpy()[0]
    a, b = np.meshgrid(np.linspace(1e-4, 1, 400), np.linspace(1e-4, 1, 400))
    grid = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], axis=1)
    grid = grid[grid[:, 2] > 1e-4]
    best = _objective(p, grid, tau).max()
    assert _objective(p, theta, tau) >= best - 1e-9
    # the regulariser moves mass toward uniform: the smallest entry grows, the largest shrinks
    assert theta[2] > p[2] and theta[0] < p[0]


def test_tau_limits():
    p = torch.tensor([[0.6, 0.3, 0.1, 0.0]], dtype=torch.float64)
    edge = torch.ones_like(p, dtype=torch.bool)
    small = max_entropy_rows(p, edge, 1e-4, _rowsum)
    big = max_entropy_rows(p, edge, 1e3, _rowsum)
    np.testing.assert_allclose(small.numpy(), p.numpy(), atol=2e-3)
    np.testing.assert_allclose(big.numpy(), 0.25, atol=2e-3)


def test_off_edge_entries_stay_zero_and_the_plain_update_recovers_theta():
    pf = torch.tensor([[3.0, 1.0, 0.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    edge = torch.tensor([[True, True, True, False], [True, True, False, False]])
    deg = edge.sum(1, keepdim=True)
    pc = 0.5
    new = regularised_counts(pf, edge, deg, 0.2, pc, _rowsum)
    assert new[0, 3] == 9.0 and torch.equal(new[1], pf[1])  # off-edge and massless rows untouched
    upd = torch.where(edge, (new + pc / deg) / (torch.where(edge, new, 0).sum(1, keepdim=True) + pc), 0.0)
    p = torch.where(edge, (pf + pc / deg) / (torch.where(edge, pf, 0).sum(1, keepdim=True) + pc), 0.0)
    want = max_entropy_rows(p[:1].double(), edge[:1], 0.2, _rowsum)
    np.testing.assert_allclose(upd[0].numpy(), want[0].numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tau,step,pc", [(0.05, 1.0, 0.0), (0.5, 0.4, 0.2)])
def test_em_step_with_entropy_matches_reference(case, tau, step, pc, engine, device):
    c = CASES[case]()
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x, miss = data_for(c, 8, seed=5, p_missing=0.2)
    m.forward_backward(x, miss)
    m.em_step(step_size=step, pseudocount=pc, entropy=tau)
    ref = ev.em_step(c, x, miss, step_size=step, pseudocount=pc, entropy=tau)
    plain = ev.em_step(c, x, miss, step_size=step, pseudocount=pc)
    moved = False
    for pname, p in c.params.items():
        if p.dtype == "i64":
            continue
        want = ref.param_value(pname)
        got = m.get_param(pname).cpu().double().numpy()
        ok = np.isfinite(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=5e-4, atol=5e-5, err_msg=pname)
        base = plain.param_value(pname)
        both = ok & np.isfinite(base)
        moved |= bool(np.abs(want[both] - base[both]).max(initial=0.0) > 1e-3)
    assert moved, "the regulariser changed no parameter: the test would not see it missing"
    assert float(m.sum_flows.abs().sum()) == 0.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_entropy_weight_is_refused_and_flows_are_kept(bad, device):
    c = CASES["tied_bernoulli"]()
    m = pc_compile(c, engine="torch", device=device)
    x, _ = data_for(c, 4, seed=1, p_missing=0.0)
    m.forward_backward(x)
    before = m.sum_flows.clone()
    with pytest.raises(PcirError, match="entropy"):
        m.em_step(entropy=bad)
    assert torch.equal(m.sum_flows, before)
