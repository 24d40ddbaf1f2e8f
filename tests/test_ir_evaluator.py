"""The reference evaluator on tiny circuits, against brute force and closed forms.

* every assignment's probability sums to 1 (normalised circuits);
* marginals (missing mask) equal explicit summation over the missing variables;
* flows: each sum node's parameter flows add up to its node flow, and parameter flows equal the
  gradient of the batch log-likelihood wrt the log-weights (central finite differences);
* em_step: a hand-computed update on a two-variable mixture, and full-batch EM never decreases the
  batch log-likelihood on generated circuits.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import at_least, circuits, data_for, discrete_total, random_data

from pcir.ir import (
    CircuitBuilder,
    DataError,
    Dist,
    Domain,
    InputGroup,
    SumGroup,
    em_step,
    flows,
    forward,
    log_likelihood,
)
from pcir.ir.evaluator import enumerate_assignments

SMALL = dict(max_vars=3, max_units=3)


@at_least(100)
@given(circuits())
def test_all_assignments_sum_to_one(c):
    for r in c.roots:
        assert discrete_total(c, r) == pytest.approx(1.0, abs=1e-12)


def test_enumerate_assignments_matches_product_of_domains():
    b = CircuitBuilder()
    b.variables(1, Domain.binary())
    b.variables(1, Domain.categorical(3))
    b.root(b.sum([b.product([b.input(0, 2, Dist.make("bernoulli")), b.input(1, 2, Dist.make("categorical", k=3))])], 1))
    xs = enumerate_assignments(b.build())
    assert xs.shape == (6, 2)
    assert {tuple(r) for r in xs.tolist()} == set(itertools.product(range(2), range(3)))


@at_least(60)
@given(circuits(**SMALL), st.data())
def test_marginal_equals_explicit_summation(c, data):
    x, missing = data.draw(data_for(c, 3))
    got = log_likelihood(c, x, missing)
    for b in range(len(x)):
        # complete the missing discrete entries every way; real ones stay marginalised
        holes = [v for v in range(c.num_vars) if missing[b, v] and c.variables[v].domain.is_discrete]
        combos = list(itertools.product(*[range(c.variables[v].domain.k) for v in holes]))
        rows = np.repeat(x[b : b + 1], len(combos), axis=0)
        for i, combo in enumerate(combos):
            rows[i, holes] = combo
        still = np.repeat(missing[b : b + 1], len(combos), axis=0)
        still[:, holes] = False
        full = log_likelihood(c, rows, still)
        want = np.logaddexp.reduce(full) if len(full) else -np.inf
        assert got[b] == pytest.approx(want, abs=1e-9) or (got[b] == -np.inf and want == -np.inf)


def _row_sums(c, g: SumGroup, pf: np.ndarray) -> np.ndarray:
    if g.pattern == "explicit":
        return np.bincount(g.edges[:, 0], weights=pf, minlength=g.units)
    return pf.sum(axis=1)


@at_least(60)
@given(circuits(**SMALL), st.data())
def test_param_flows_of_a_row_sum_to_the_node_flow(c, data):
    x, missing = data.draw(data_for(c, 4))
    keep = np.isfinite(log_likelihood(c, x, missing))  # flows of an impossible row are undefined
    fl = flows(c, x[keep], missing[keep])
    for pname in {g.params for g in c if isinstance(g, SumGroup)}:
        users = [c.group(u) for u in c.users_of_param(pname)]
        # tied users share one flow array; their node flows add up in it
        want = sum(fl.node[u.name].sum(axis=0) for u in users)
        g0 = users[0]
        got = _row_sums(c, g0, fl.param[pname])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@at_least(30)
@given(circuits(max_vars=3, max_units=2, allow_real=False), st.data())
def test_param_flows_are_gradients_wrt_log_weights(c, data):
    x, missing = data.draw(data_for(c, 3))
    root = c.roots[0]
    ll = log_likelihood(c, x, missing, root=root)
    keep = np.isfinite(ll)  # an impossible row has no gradient
    x, missing = x[keep], missing[keep]
    if not len(x):
        return
    fl = flows(c, x, missing, root=root)
    eps = 1e-5

    def total(params) -> float:
        return float(log_likelihood(c.with_params(**params), x, missing, root=root).sum())

    for pname in sorted({g.params for g in c if isinstance(g, SumGroup)}):
        w = np.asarray(c.param_value(pname), dtype=np.float64)
        fd = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            if w[idx] == 0:
                continue  # outside a block mask: no edge
            up, down = w.copy(), w.copy()
            up[idx] *= np.exp(eps)
            down[idx] *= np.exp(-eps)
            fd[idx] = (total({pname: up}) - total({pname: down})) / (2 * eps)
        np.testing.assert_allclose(fl.param[pname], fd, rtol=1e-5, atol=1e-6)


@at_least(30)
@given(circuits(max_vars=3, max_units=2, dists=("categorical", "indicator")), st.data())
def test_input_node_flows_are_gradients_wrt_log_leaf_params(c, data):
    """d(sum ll)/d(log theta[u, c]) = sum of flows of leaf u over observed samples with x == c."""
    x, missing = data.draw(data_for(c, 3))
    root = c.roots[0]
    keep = np.isfinite(log_likelihood(c, x, missing, root=root))
    x, missing = x[keep], missing[keep]
    if not len(x):
        return
    fl = flows(c, x, missing, root=root)
    eps = 1e-5
    for pname in sorted({g.params for g in c if isinstance(g, InputGroup) and g.dist.kind == "categorical"}):
        users = [c.group(u) for u in c.users_of_param(pname)]
        theta = np.asarray(c.param_value(pname))
        want = np.zeros_like(theta)
        for u in users:
            seen = ~missing[:, u.var]
            for k in range(theta.shape[1]):
                want[:, k] += fl.node[u.name][seen & (x[:, u.var] == k)].sum(axis=0)
        fd = np.zeros_like(theta)
        for idx in np.ndindex(theta.shape):
            up, down = theta.copy(), theta.copy()
            up[idx] *= np.exp(eps)
            down[idx] *= np.exp(-eps)
            lu = log_likelihood(c.with_params(**{pname: up}), x, missing, root=root).sum()
            ld = log_likelihood(c.with_params(**{pname: down}), x, missing, root=root).sum()
            fd[idx] = (lu - ld) / (2 * eps)
        np.testing.assert_allclose(want, fd, rtol=1e-5, atol=1e-6)


def _mixture(w, a, b):
    """root = w0 * A0(x0) B0(x1) + w1 * A1(x0) B1(x1) with Bernoulli leaves."""
    bld = CircuitBuilder()
    x0, x1 = bld.variables(2, Domain.binary())
    ia = bld.input(x0, 2, Dist.make("bernoulli"), params=a, name="A")
    ib = bld.input(x1, 2, Dist.make("bernoulli"), params=b, name="B")
    bld.root(bld.sum([bld.product([ia, ib], name="P")], 1, weights=[w], name="S"))
    return bld.build()


@pytest.mark.parametrize("pseudocount", [0.0, 0.5])
def test_em_step_closed_form_on_a_two_component_mixture(pseudocount):
    w, a, b = np.array([0.3, 0.7]), np.array([0.2, 0.9]), np.array([0.6, 0.1])
    c = _mixture(w, a, b)
    x = np.array([[0, 1], [1, 1], [1, 0], [0, 0], [1, 0]], dtype=float)
    missing = np.zeros_like(x, dtype=bool)
    missing[1, 0] = True  # x0 of row 1 is unobserved
    # by hand: responsibilities r[n, k] = w_k p_k(x_n) / p(x_n), leaves of missing entries are 1
    r = np.zeros((len(x), 2))
    for n in range(len(x)):
        for k in range(2):
            pa = 1.0 if missing[n, 0] else (a[k] if x[n, 0] == 1 else 1 - a[k])
            pb = b[k] if x[n, 1] == 1 else 1 - b[k]
            r[n, k] = w[k] * pa * pb
        r[n] /= r[n].sum()
    new_w = (r.sum(axis=0) + pseudocount / 2) / (len(x) + pseudocount)
    seen0 = ~missing[:, 0]
    new_a = ((r[seen0] * x[seen0, 0:1]).sum(axis=0) + pseudocount / 2) / (r[seen0].sum(axis=0) + pseudocount)
    new_b = ((r * x[:, 1:2]).sum(axis=0) + pseudocount / 2) / (r.sum(axis=0) + pseudocount)

    out = em_step(c, x, missing, step_size=1.0, pseudocount=pseudocount)
    np.testing.assert_allclose(out.param_value("S.w"), new_w[None, :], rtol=1e-12)
    np.testing.assert_allclose(out.param_value("A.w"), new_a, rtol=1e-12)
    np.testing.assert_allclose(out.param_value("B.w"), new_b, rtol=1e-12)

    half = em_step(c, x, missing, step_size=0.5, pseudocount=pseudocount)
    np.testing.assert_allclose(half.param_value("S.w"), 0.5 * w[None, :] + 0.5 * new_w[None, :], rtol=1e-12)


@at_least(100)
@given(circuits(max_vars=3, max_units=3), st.integers(0, 2**32 - 1))
def test_full_batch_em_never_decreases_the_log_likelihood(c, seed):
    x, missing = random_data(c, 12, np.random.default_rng(seed), missing_rate=0.25)
    before = log_likelihood(c, x, missing)
    keep = np.isfinite(before)
    x, missing, before = x[keep], missing[keep], before[keep]
    if not len(x):
        return
    cur, prev = c, before.sum()
    for _ in range(3):
        cur = em_step(cur, x, missing, step_size=1.0, pseudocount=0.0)
        now = log_likelihood(cur, x, missing).sum()
        assert np.isfinite(now)
        assert now >= prev - 1e-9 * (1 + abs(prev))
        prev = now


def test_em_keeps_parameters_of_units_that_get_no_flow():
    """A leaf never reached from the root (here: under a second root) keeps its parameters."""
    bld = CircuitBuilder()
    (x0,) = bld.variables(1, Domain.categorical(3))
    a = bld.input(x0, 2, Dist.make("categorical", k=3), name="A")
    bb = bld.input(x0, 2, Dist.make("categorical", k=3), name="B")
    bld.root(bld.sum([a], 1, name="R0"), bld.sum([bb], 1, name="R1"))
    c = bld.build()
    out = em_step(c, np.array([[0.0], [2.0]]), step_size=1.0)
    np.testing.assert_array_equal(out.param_value("B.w"), c.param_value("B.w"))
    assert np.isfinite(out.param_value("A.w")).all()


def test_forward_rejects_bad_data():
    c = _mixture(np.array([0.5, 0.5]), np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    with pytest.raises(DataError, match=r"expected \(N, 2\)"):
        forward(c, np.zeros((2, 3)))
    with pytest.raises(DataError, match="outside the domain"):
        forward(c, np.array([[0.0, 2.0]]))
    with pytest.raises(DataError, match="NaN"):
        forward(c, np.array([[0.0, np.nan]]))
    assert np.isfinite(forward(c, np.array([[0.0, np.nan]]), np.array([[False, True]]))["S"]).all()
