"""binomial, discrete_logistic and literal leaves: normalisation, EM, sampling, mode, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pcir.ir import CircuitBuilder, Dist, Domain, em_step, log_likelihood, print_ir, verify
from pcir.ir import distributions as dists
from pcir.ir.diagnostics import VerifyError
from pcir.ir.evaluator import enumerate_assignments

BIN = dists.get("binomial")
DL = dists.get("discrete_logistic")
LIT = dists.get("literal")


def chi2_critical(df: int, z: float = 3.29) -> float:
    """Wilson-Hilferty upper quantile of chi^2(df); z = 3.29 is the one-sided 0.05% point."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


# ---- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 40])
def test_binomial_sums_to_one(n):
    d = Dist.make("binomial", n=n)
    p = np.array([0.0, 1e-9, 0.3, 0.5, 0.97, 1.0])
    probs = np.exp(BIN.log_prob(d, p, np.arange(n + 1, dtype=float)))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-12)
    assert np.isfinite(BIN.log_prob(d, np.array([0.3]), np.array([0.0, float(n)]))).all()


@pytest.mark.parametrize("n", [2, 10, 256])
def test_discrete_logistic_sums_to_one(n):
    d = Dist.make("discrete_logistic", n=n)
    params = np.array(
        [[0.0, 0.0], [n / 2, math.log(n / 8)], [n - 1, -4.0], [3 * n, 0.5], [-2 * n, 1.0], [n / 3, 6.0], [n / 2, -30.0]]
    )
    lp = DL.log_prob(d, params, np.arange(n, dtype=float))
    assert not np.isnan(lp).any()
    np.testing.assert_allclose(np.exp(lp).sum(axis=0), 1.0, atol=1e-10)


def test_discrete_logistic_matches_sigmoid_differences():
    d = Dist.make("discrete_logistic", n=6)
    mu, log_s = 2.3, math.log(0.8)
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))
    expect = []
    for c in range(6):
        hi = 1.0 if c == 5 else sig((c + 0.5 - mu) / 0.8)
        lo = 0.0 if c == 0 else sig((c - 0.5 - mu) / 0.8)
        expect.append(math.log(hi - lo))
    got = DL.log_prob(d, np.array([[mu, log_s]]), np.arange(6, dtype=float))[:, 0]
    np.testing.assert_allclose(got, expect, rtol=1e-12)


def test_literal_log_prob_and_shape():
    d = Dist.make("literal", value=2)
    params = LIT.init_params(d, 3, np.random.default_rng(0), "random")
    assert params.shape == (3, 0)
    lp = LIT.log_prob(d, params, np.array([0.0, 2.0, 1.0]))
    assert lp.shape == (3, 3)
    assert (lp[1] == 0).all() and np.isneginf(lp[[0, 2]]).all()


# ---- EM -------------------------------------------------------------------------------------


def test_binomial_em_hand_computed():
    d = Dist.make("binomial", n=5)
    x = np.array([0.0, 3.0, 5.0])
    flows = np.array([[1.0, 0.5], [2.0, 0.0], [0.5, 1.0]])
    new = BIN.em_update(d, np.array([0.5, 0.5]), x, flows, pseudocount=0.4)
    # unit 0: sum f = 3.5, sum f x = 6 + 2.5 = 8.5 -> (8.5 + 0.4 * 5 / 2) / (5 * 3.9)
    # unit 1: sum f = 1.5, sum f x = 5 -> (5 + 1) / (5 * 1.9)
    np.testing.assert_allclose(new, [9.5 / 19.5, 6.0 / 9.5], rtol=1e-12)


def test_binomial_em_without_pseudocount_is_the_mle():
    d = Dist.make("binomial", n=9)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 10, 50).astype(float)
    f = rng.uniform(0.1, 1.0, (50, 1))
    p = BIN.em_update(d, np.array([0.5]), x, f, 0.0)
    ll = lambda q: float((f[:, 0] * BIN.log_prob(d, np.array([q]), x)[:, 0]).sum())
    assert ll(p[0]) >= max(ll(p[0] - 1e-4), ll(p[0] + 1e-4))


def test_discrete_logistic_em_moment_matching_hand_computed():
    d = Dist.make("discrete_logistic", n=64)
    x = np.array([10.0, 20.0, 30.0, 40.0])
    flows = np.array([[1.0], [1.0], [1.0], [0.0]])
    new = DL.em_update(d, np.array([[5.0, 0.0]]), x, flows, pseudocount=0.0)
    # mean 20, variance (100 + 0 + 100) / 3, scale = std * sqrt(3) / pi
    std = math.sqrt(200.0 / 3.0)
    np.testing.assert_allclose(new[0], [20.0, math.log(std * math.sqrt(3.0) / math.pi)], rtol=1e-12)


def test_discrete_logistic_em_pseudocount_and_floor():
    d = Dist.make("discrete_logistic", n=8, min_std=0.5)
    old = np.array([[2.0, math.log(1.0)], [4.0, 0.0]])
    x = np.array([3.0, 3.0])
    flows = np.array([[1.0, 0.0], [1.0, 0.0]])
    new = DL.em_update(d, old, x, flows, pseudocount=0.0)
    assert new[0, 0] == 3.0
    np.testing.assert_allclose(new[0, 1], math.log(0.5 * math.sqrt(3.0) / math.pi))  # floored std
    np.testing.assert_array_equal(new[1], old[1])  # no flow: unchanged
    # pseudocount: pc virtual samples with the old mean and variance
    sd0 = math.pi / math.sqrt(3.0)
    new2 = DL.em_update(d, old, x, flows, pseudocount=2.0)
    mu = (6.0 + 2.0 * 2.0) / 4.0
    var = (18.0 + 2.0 * (sd0**2 + 4.0)) / 4.0 - mu**2
    np.testing.assert_allclose(new2[0], [mu, math.log(math.sqrt(var) / sd0)], rtol=1e-12)


def test_em_step_through_evaluator_with_new_leaves():
    b = CircuitBuilder(seed=1)
    x0, x1, x2 = b.variables(3, Domain.categorical(4))
    a = b.input(x0, 2, Dist.make("binomial", n=3))
    c = b.input(x1, 2, Dist.make("discrete_logistic", n=4))
    lit = b.input(x2, 2, Dist.make("literal", value=1))
    ind = b.input(x2, 2, Dist.make("indicator"), params=[0, 2])
    s = b.sum([b.product([a, c, lit]), b.product([a, c, ind])], 1)
    b.root(s)
    circ = verify(b.build())
    assert "dist=literal(value=1)" in print_ir(circ)
    xs = enumerate_assignments(circ)
    assert abs(np.exp(log_likelihood(circ, xs)).sum() - 1.0) < 1e-10
    data = np.random.default_rng(0).integers(0, 4, (30, 3)).astype(float)
    data[:, 2] = np.where(data[:, 2] == 3, 1, data[:, 2])
    before = log_likelihood(circ, data).mean()
    after_c = em_step(circ, data, pseudocount=0.1)
    verify(after_c)
    assert log_likelihood(after_c, data).mean() > before
    assert abs(np.exp(log_likelihood(after_c, xs)).sum() - 1.0) < 1e-10


# ---- sampling -------------------------------------------------------------------------------


def test_binomial_sampling_moments():
    d = Dist.make("binomial", n=12)
    p = np.array([0.2, 0.7])
    units = np.repeat([0, 1], 20000)
    s = BIN.sample(d, p, units, np.random.default_rng(0))
    for u in (0, 1):
        v = s[units == u]
        # standard errors: mean sqrt(np(1-p)/N) ~ 0.01, so 0.05 is 5 of them
        assert abs(v.mean() - 12 * p[u]) < 0.05
        assert abs(v.var() - 12 * p[u] * (1 - p[u])) < 0.15


@pytest.mark.parametrize("params", [[7.3, math.log(1.5)], [0.4, math.log(0.3)], [15.2, math.log(4.0)]])
def test_discrete_logistic_sampling_chi_square(params):
    d = Dist.make("discrete_logistic", n=16)
    p = np.array([params])
    n = 20000
    s = DL.sample(d, p, np.zeros(n, dtype=np.int64), np.random.default_rng(1))
    probs = np.exp(DL.log_prob(d, p, np.arange(16, dtype=float))[:, 0])
    counts = np.bincount(s.astype(int), minlength=16)
    keep = probs * n >= 5  # the usual validity rule; pool the rest into one cell
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(probs[keep] * n, probs[~keep].sum() * n)
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    assert stat < chi2_critical(len(obs) - 1)


def test_literal_sampling_and_mode():
    d = Dist.make("literal", value=3)
    params = np.zeros((4, 0), dtype=np.int64)
    assert (LIT.sample(d, params, np.array([0, 2, 3]), np.random.default_rng(0)) == 3).all()
    assert (LIT.mode(d, params, Domain.categorical(5)) == 3).all()


def test_modes():
    rng = np.random.default_rng(0)
    d = Dist.make("binomial", n=10)
    p = np.array([0.05, 0.33, 0.5, 0.91])
    np.testing.assert_array_equal(BIN.mode(d, p, Domain.categorical(11)), np.floor(11 * p))
    d2 = Dist.make("discrete_logistic", n=32)
    params = np.array([[4.2, 0.0], [17.6, 1.0], [40.0, 0.0]])
    np.testing.assert_array_equal(DL.mode(d2, params, Domain.categorical(32)), [4, 18, 31])
    cat = dists.get("categorical")
    probs = cat.init_params(Dist.make("categorical", k=5), 3, rng, "random")
    np.testing.assert_array_equal(
        cat.mode(Dist.make("categorical", k=5), probs, Domain.categorical(5)), probs.argmax(1)
    )
    g = dists.get("gaussian")
    np.testing.assert_array_equal(g.mode(Dist.make("gaussian"), np.array([[1.5, 2.0]]), Domain.real()), [1.5])


# ---- checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dist, msg",
    [
        (Dist.make("binomial"), "binomial needs an integer argument n >= 1"),
        (Dist.make("binomial", n=0), "binomial needs an integer argument n >= 1"),
        (Dist.make("discrete_logistic", n=1), "discrete_logistic needs an integer argument n >= 2"),
        (Dist.make("discrete_logistic", n=4, min_std=0.0), "discrete_logistic's min_std must be a number > 0"),
        (Dist.make("literal"), "literal needs an integer argument value >= 0"),
    ],
)
def test_bad_arguments_are_reported(dist, msg):
    b = CircuitBuilder()
    (v,) = b.variables(1, Domain.categorical(4))
    b.root(b.sum([b.input(v, 2, dist, init="uniform")], 1))
    with pytest.raises(VerifyError, match="in0': " + msg):
        verify(b.build())


@pytest.mark.parametrize(
    "dist, domain",
    [
        (Dist.make("binomial", n=3), Domain.categorical(5)),
        (Dist.make("discrete_logistic", n=4), Domain.categorical(5)),
        (Dist.make("literal", value=5), Domain.categorical(5)),
        (Dist.make("binomial", n=3), Domain.real()),
    ],
)
def test_domain_mismatch_is_reported(dist, domain):
    b = CircuitBuilder()
    (v,) = b.variables(1, domain)
    b.root(b.sum([b.input(v, 1, dist)], 1))
    with pytest.raises(VerifyError, match="does not fit variable"):
        verify(b.build())


def test_bad_values_are_reported():
    b = CircuitBuilder()
    (v,) = b.variables(1, Domain.categorical(4))
    b.root(b.sum([b.input(v, 2, Dist.make("binomial", n=3), params=[0.5, 1.5])], 1))
    with pytest.raises(VerifyError, match=r"binomial probabilities must lie in \[0, 1\]"):
        verify(b.build())
    b = CircuitBuilder()
    (v,) = b.variables(1, Domain.categorical(4))
    b.root(b.sum([b.input(v, 1, Dist.make("discrete_logistic", n=4), params=[[1.0, np.nan]])], 1))
    with pytest.raises(VerifyError, match="discrete_logistic parameters must be finite"):
        verify(b.build())


def test_new_families_round_trip_through_pcir_text():
    from pcir.ir import parse_ir

    b = CircuitBuilder(seed=3)
    x0, x1, x2 = b.variables(3, Domain.categorical(4))
    a = b.input(x0, 2, Dist.make("binomial", n=3), params=[0.25, 0.75])
    c = b.input(x1, 2, Dist.make("discrete_logistic", n=4, min_std=0.5))
    lit = b.input(x2, 2, Dist.make("literal", value=1))
    lazy_lit = b.input(x2, 2, Dist.make("literal", value=3), params=np.zeros((2, 0)))
    b.root(b.sum([b.product([a, c, lit]), b.product([a, c, lazy_lit])], 1))
    circ = verify(b.build())
    back = parse_ir(print_ir(circ))
    assert back == circ
    concrete = circ.materialized()
    assert parse_ir(print_ir(concrete)) == concrete


@pytest.mark.parametrize(
    "dist",
    [
        Dist.make("categorical", k=4),
        Dist.make("bernoulli"),
        Dist.make("binomial", n=3),
        Dist.make("discrete_logistic", n=4),
    ],
)
def test_em_update_depends_on_flow_weighted_statistics_only(dist):
    # a kernel may accumulate per-value flows and call em_update once on the distinct values
    dt = dists.get(dist.kind)
    rng = np.random.default_rng(0)
    hi = 2 if dist.kind == "bernoulli" else 4
    x = rng.integers(0, hi, 40).astype(float)
    flows = rng.uniform(0.0, 1.0, (40, 3))
    params = dt.init_params(dist, 3, rng, "random")
    values = np.unique(x)
    summed = np.stack([flows[x == v].sum(axis=0) for v in values])
    np.testing.assert_allclose(
        dt.em_update(dist, params, x, flows, 0.3), dt.em_update(dist, params, values, summed, 0.3), rtol=1e-10
    )
