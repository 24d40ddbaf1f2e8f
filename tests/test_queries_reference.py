"""Reference queries against brute force on tiny circuits: conditionals, sampling, MAP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _tiny_circuits import deterministic_circuit, random_circuit

from pcir.ir import CircuitBuilder, DataError, Dist, Domain, Param, PcirError, verify
from pcir.ir import queries as q
from pcir.ir.evaluator import enumerate_assignments
from pcir.ir.evaluator import log_likelihood as complete_ll

SEEDS = range(12)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi^2(df); z = 3.09 is the one-sided 0.1% point."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def joint(c) -> tuple[np.ndarray, np.ndarray]:
    """Every complete assignment and its probability, from complete-data evaluation only."""
    xs = enumerate_assignments(c)
    return xs, np.exp(complete_ll(c, xs))


def brute_conditional(xs, p, row, evidence_vars, target, k):
    """P(x_target = a | x_e = row_e) by summing the joint."""
    m = np.ones(len(xs), dtype=bool)
    for v in evidence_vars:
        m &= xs[:, v] == row[v]
    num = np.array([p[m & (xs[:, target] == a)].sum() for a in range(k)])
    return num / num.sum()


def random_query(c, rng, n_rows):
    """Rows of data, a missing mask, and targets drawn at random (evidence patterns vary)."""
    xs, p = joint(c)
    rows = xs[rng.choice(len(xs), size=n_rows, p=p / p.sum())]
    v = c.num_vars
    targets = sorted(rng.choice(v, size=int(rng.integers(1, v)), replace=False).tolist())
    missing = rng.random((n_rows, v)) < 0.3
    missing[:, targets] = False  # targets are summed out anyway; keep the mask about evidence
    return rows, missing, targets


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["flows", "enumerate"])
def test_conditional_matches_brute_force(seed, method):
    c = random_circuit(seed)
    rng = np.random.default_rng(100 + seed)
    rows, missing, targets = random_query(c, rng, 6)
    xs, p = joint(c)
    got = q.conditional(c, rows, missing, targets, method=method)
    assert sorted(got) == targets
    for t in targets:
        k = c.variables[t].domain.k
        assert got[t].shape == (len(rows), k)
        np.testing.assert_allclose(got[t].sum(axis=1), 1.0, atol=1e-12)
        for b in range(len(rows)):
            ev = [v for v in range(c.num_vars) if v not in targets and not missing[b, v]]
            np.testing.assert_allclose(got[t][b], brute_conditional(xs, p, rows[b], ev, t, k), atol=1e-10)


def test_conditional_no_evidence_is_the_marginal_and_all_targets():
    c = random_circuit(3)
    xs, p = joint(c)
    row = np.full(c.num_vars, np.nan)
    got = q.conditional(c, row)  # targets default to every missing variable
    assert sorted(got) == list(range(c.num_vars))
    for v in range(c.num_vars):
        k = c.variables[v].domain.k
        np.testing.assert_allclose(got[v][0], [p[xs[:, v] == a].sum() for a in range(k)], atol=1e-12)


def test_conditional_ignores_target_values_and_accepts_names():
    c = random_circuit(5)
    rows = enumerate_assignments(c)[:3]
    other = rows.copy()
    other[:, 1] = 0
    a = q.conditional(c, rows, targets=["v1"])
    b = q.conditional(c, other, targets=[1])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(DataError, match="unknown target variable 'v9'"):
        q.conditional(c, rows, targets=["v9"])
    with pytest.raises(DataError, match="out of range"):
        q.conditional(c, rows, targets=[17])


def _two_var_circuit():
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.categorical(3))
    lit = b.input(x0, 1, Dist.make("literal", value=0))
    cat = b.input(x1, 1, Dist.make("categorical", k=3), params=[[0.2, 0.3, 0.5]])
    b.root(b.sum([b.product([lit, cat])], 1))
    return verify(b.build())


def test_conditional_zero_probability_evidence_is_nan():
    c = _two_var_circuit()
    got = q.conditional(c, np.array([[1.0, 0.0], [0.0, 0.0]]), targets=[1])
    assert np.isnan(got[1][0]).all()
    np.testing.assert_allclose(got[1][1], [0.2, 0.3, 0.5])
    got = q.conditional(c, np.array([[1.0, 0.0]]), targets=[1], method="enumerate")
    assert np.isnan(got[1][0]).all()


def test_conditional_normalises_over_the_domain_only():
    # leaves with more categories than the domain: mass outside the domain must not leak
    b = CircuitBuilder()
    (x0,) = b.variables(1, Domain.categorical(2))
    a = b.input(x0, 2, Dist.make("categorical", k=4), params=[[0.1, 0.2, 0.3, 0.4], [0.4, 0.4, 0.1, 0.1]])
    b.root(b.sum([a], 1, weights=[[0.5, 0.5]]))
    c = verify(b.build())
    got = q.conditional(c, np.array([np.nan]), targets=[0])
    np.testing.assert_allclose(got[0][0], [0.5 / 1.1, 0.6 / 1.1])


def test_conditional_on_non_decomposable_circuit_uses_enumeration():
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.binary())
    a = b.input(x0, 1, Dist.make("bernoulli"), params=[0.3])
    a2 = b.input(x0, 1, Dist.make("bernoulli"), params=[0.8])
    c1 = b.input(x1, 1, Dist.make("bernoulli"), params=[0.6])
    p = b.product([a, a2, c1], attrs={"waive": "decomposable"})
    b.root(b.sum([p], 1))
    c = verify(b.build(), decomposable=False)
    xs = enumerate_assignments(c)
    pj = np.exp(complete_ll(c, xs))
    got = q.conditional(c, np.array([0.0, 1.0]), targets=[0])
    m = xs[:, 1] == 1
    expect = np.array([pj[m & (xs[:, 0] == a)].sum() for a in range(2)])
    np.testing.assert_allclose(got[0][0], expect / expect.sum())


def test_queries_batch_of_one_and_single_row():
    c = random_circuit(7)
    row = enumerate_assignments(c)[5]
    assert q.log_likelihood(c, row).shape == (1,)
    assert q.conditional(c, row, targets=[0])[0].shape == (1, c.variables[0].domain.k)
    assert q.map_assignment(c, row[None, :]).shape == (1, c.num_vars)
    assert q.sample(c, 1).shape == (1, c.num_vars)
    ev = row.copy()
    ev[0] = np.nan
    s = q.sample(c, evidence=ev)
    assert s.shape == (1, c.num_vars) and not np.isnan(s).any()
    np.testing.assert_array_equal(s[0, 1:], row[1:])


# ---- sampling -------------------------------------------------------------------------------


def _chi_square(samples: np.ndarray, xs: np.ndarray, p: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic of samples against the exact distribution; cells with expected count
    below 5 are pooled into one (the usual validity rule)."""
    n = len(samples)
    index = {tuple(r): i for i, r in enumerate(xs)}
    counts = np.bincount([index[tuple(r)] for r in samples], minlength=len(xs))
    exp = p * n
    keep = exp >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    e = np.append(exp[keep], exp[~keep].sum())
    if e[-1] < 5:
        obs, e = obs[:-1], e[:-1]
    return float(((obs - e) ** 2 / e).sum()), len(obs) - 1


@pytest.mark.parametrize("seed", [0, 4, 9])
def test_unconditional_samples_chi_square(seed):
    # Fixed seeds make the test deterministic; the threshold is the 0.1% upper quantile, so a
    # correct sampler fails a given seed with probability 0.001 (checked once, then fixed).
    c = random_circuit(seed, num_vars=3)
    xs, p = joint(c)
    s = q.sample(c, 20000, seed=seed)
    stat, df = _chi_square(s, xs, p)
    assert stat < chi2_critical(df), (stat, df)


def test_sampling_is_not_trivially_passing():
    # the same statistic rejects samples from a different circuit: the test has power
    c = random_circuit(0, num_vars=3)
    reseeded = {
        k: Param(v.shape, v.dtype, None, v.init, v.seed + 1) if v.value is None else v for k, v in c.params.items()
    }
    other = c.replace(params=reseeded)
    xs, p = joint(c)
    stat, df = _chi_square(q.sample(other, 20000, seed=0), xs, p)
    assert stat > chi2_critical(df)


@pytest.mark.parametrize("seed", [2, 6])
def test_conditional_samples_chi_square(seed):
    c = random_circuit(seed, num_vars=4)
    xs, p = joint(c)
    rng = np.random.default_rng(seed)
    ref = xs[rng.choice(len(xs), p=p / p.sum())]
    ev = ref.copy()
    ev[[1, 3]] = np.nan  # sample x1, x3 given x0, x2
    s = q.sample(c, 20000, evidence=ev, seed=seed)
    np.testing.assert_array_equal(s[:, [0, 2]], np.broadcast_to(ref[[0, 2]], (20000, 2)))
    m = (xs[:, 0] == ref[0]) & (xs[:, 2] == ref[2])
    stat, df = _chi_square(s, xs[m], p[m] / p[m].sum())
    assert stat < chi2_critical(df), (stat, df)


def test_sampling_is_seeded_and_batched_evidence_rows_differ():
    c = random_circuit(8)
    np.testing.assert_array_equal(q.sample(c, 50, seed=3), q.sample(c, 50, seed=3))
    assert not np.array_equal(q.sample(c, 50, seed=3), q.sample(c, 50, seed=4))
    xs, _ = joint(c)
    ev = xs[[0, -1]].copy()
    miss = np.zeros_like(ev, dtype=bool)
    miss[:, 2] = True
    s = q.sample(c, evidence=ev, missing=miss, seed=0)
    np.testing.assert_array_equal(s[:, [0, 1, 3]], ev[:, [0, 1, 3]])


def test_sampling_impossible_evidence_names_the_row():
    c = _two_var_circuit()
    with pytest.raises(DataError, match="row 1 has probability 0"):
        q.sample(c, evidence=np.array([[0.0, np.nan], [2.0, np.nan]]))


def test_sampling_a_root_of_several_units_is_refused():
    b = CircuitBuilder()
    (x0,) = b.variables(1, Domain.binary())
    b.root(b.input(x0, 2, Dist.make("bernoulli")))
    with pytest.raises(PcirError, match="root of one unit"):
        q.sample(verify(b.build()), 3)


# ---- MAP ------------------------------------------------------------------------------------


def brute_map(c, row):
    xs, p = joint(c)
    m = np.ones(len(xs), dtype=bool)
    for v in range(c.num_vars):
        if not np.isnan(row[v]):
            m &= xs[:, v] == row[v]
    lp = np.where(m, np.log(np.maximum(p, 1e-300)), -np.inf)
    return lp.max()


@pytest.mark.parametrize("seed", range(16))
def test_map_exact_on_deterministic_circuits(seed):
    c = deterministic_circuit(seed)
    xs, p = joint(c)
    rng = np.random.default_rng(seed)
    rows = xs[rng.choice(len(xs), size=5, p=p / p.sum())].copy()
    rows[rng.random(rows.shape) < 0.5] = np.nan
    rows[0] = np.nan  # MPE with no evidence
    got, val = q.map_assignment(c, rows, return_log_prob=True)
    assert not np.isnan(got).any()
    observed = ~np.isnan(rows)
    np.testing.assert_array_equal(got[observed], rows[observed])
    lp = complete_ll(c, got)
    for b in range(len(rows)):
        best = brute_map(c, rows[b])
        assert lp[b] == pytest.approx(best, abs=1e-10)  # an argmax (ties allowed)
        assert val[b] == pytest.approx(best, abs=1e-10)


@pytest.mark.parametrize("seed", range(8))
def test_map_on_general_circuits_is_a_lower_bound(seed):
    # not deterministic: max-product is the best induced tree, below the true MAP, and the
    # returned assignment is at least as likely as that tree says
    c = random_circuit(seed)
    row = np.full(c.num_vars, np.nan)
    got, val = q.map_assignment(c, row, return_log_prob=True)
    lp = complete_ll(c, got)[0]
    assert val[0] <= brute_map(c, row) + 1e-10
    assert lp >= val[0] - 1e-10


def test_map_without_data_and_impossible_evidence():
    c = _two_var_circuit()
    np.testing.assert_array_equal(q.map_assignment(c), [[0.0, 2.0]])
    with pytest.raises(DataError, match="row 0 has probability 0"):
        q.map_assignment(c, np.array([[1.0, np.nan]]))


def test_map_gaussian_leaves_take_the_mean():
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.real())
    g0 = b.input(x0, 2, Dist.make("gaussian"), params=[[1.0, 1.0], [-3.0, 0.5]])
    g1 = b.input(x1, 2, Dist.make("gaussian"), params=[[2.0, 1.0], [7.0, 0.5]])
    b.root(b.sum([b.product([g0, g1])], 1, weights=[[0.5, 0.5]]))
    c = verify(b.build())
    np.testing.assert_allclose(q.map_assignment(c), [[-3.0, 7.0]])
    np.testing.assert_allclose(q.map_assignment(c, np.array([[1.0, np.nan]])), [[1.0, 2.0]])
