"""Queries on the compiled model (pcir.backend.queries) against the numpy reference
(pcir.ir.queries) and brute force on tiny circuits: conditionals, sampling, MAP; the torch leaves
of every distribution family against the IR registry.

Circuits are compiled on the ``device`` fixture (``pytest --device cuda`` runs everything on the
GPU with compiled Triton kernels); the hand-built cases run on both engines (the Triton kernels run
under TRITON_INTERPRET=1 on CPU), the seeded and hypothesis ones on the torch engine to keep CI
time small.

The seeded tiny circuits use every leaf family, binomial / discrete_logistic / literal included
(the kernels serve them as log-probability tables computed from the family's parameters).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _tiny_circuits import deterministic_circuit, random_circuit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst
from strategies import ALL_DISTS, circuits, data_for
from test_backend_helpers import CASES
from test_backend_helpers import data_for as case_data

from pcir.backend import compile as pc_compile
from pcir.backend import queries as bq
from pcir.ir import (
    BackendError,
    CircuitBuilder,
    DataError,
    Dist,
    Domain,
    Param,
    PcirError,
    verify,
)
from pcir.ir import distributions as dists
from pcir.ir import queries as q
from pcir.ir.evaluator import enumerate_assignments
from pcir.ir.evaluator import log_likelihood as complete_ll

TOL = 2e-5  # float32 kernels vs the float64 reference, on probabilities in [0, 1]


# ---- helpers --------------------------------------------------------------------------------
def compiled(c, device, engine="torch"):
    return pc_compile(c, device=device, engine=engine, precision="fp32")


def np_(t):
    return t.detach().cpu().double().numpy()


def joint(c) -> tuple[np.ndarray, np.ndarray]:
    """Every complete assignment and its probability (complete-data reference evaluation)."""
    xs = enumerate_assignments(c)
    return xs, np.exp(complete_ll(c, xs))


def brute_conditional(xs, p, row, evidence_vars, target, k):
    m = np.ones(len(xs), dtype=bool)
    for v in evidence_vars:
        m &= xs[:, v] == row[v]
    num = np.array([p[m & (xs[:, target] == a)].sum() for a in range(k)])
    return num / num.sum()


def random_query(c, rng, n_rows):
    """Rows drawn from the circuit, a random evidence mask and 1..V-1 random targets."""
    xs, p = joint(c)
    rows = xs[rng.choice(len(xs), size=n_rows, p=p / p.sum())]
    v = c.num_vars
    targets = sorted(rng.choice(v, size=int(rng.integers(1, v)), replace=False).tolist())
    missing = rng.random((n_rows, v)) < 0.3
    return rows, missing, targets


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi^2(df); z = 3.09 is the one-sided 0.1% point."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def chi_square(samples: np.ndarray, xs: np.ndarray, p: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic of samples against the exact distribution over the rows of ``xs``;
    cells with expected count below 5 are pooled (the usual validity rule)."""
    n = len(samples)
    index = {tuple(r): i for i, r in enumerate(xs)}
    counts = np.bincount([index[tuple(r)] for r in samples], minlength=len(xs))
    assert counts.sum() == n  # every sample is a valid assignment
    exp = p * n
    keep = exp >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    e = np.append(exp[keep], exp[~keep].sum())
    if e[-1] < 5:
        obs, e = obs[:-1], e[:-1]
    return float(((obs - e) ** 2 / e).sum()), len(obs) - 1


def brute_map(c, row):
    xs, p = joint(c)
    m = np.ones(len(xs), dtype=bool)
    for v in range(c.num_vars):
        if not np.isnan(row[v]):
            m &= xs[:, v] == row[v]
    return np.where(m, np.log(np.maximum(p, 1e-300)), -np.inf).max()


def impossible_circuit():
    """x0 = 1 has probability 0 (bernoulli p = 0); x1, x2 free."""
    b = CircuitBuilder(seed=0)
    x0, x1, x2 = b.variables(3, Domain.binary())
    a = b.input(x0, 2, Dist.make("bernoulli"), params=[0.0, 0.0])
    c1 = b.input(x1, 2, Dist.make("categorical", k=2), params=[[0.2, 0.8], [0.7, 0.3]])
    c2 = b.input(x2, 2, Dist.make("bernoulli"), params=[0.1, 0.6])
    b.root(b.sum([b.product([a, c1, c2])], 1, weights=[[0.4, 0.6]]))
    return verify(b.build())


# ---- torch leaves vs the IR registry --------------------------------------------------------
FAMILIES = [
    (Dist.make("categorical", k=4), Domain.categorical(3)),
    (Dist.make("bernoulli"), Domain.binary()),
    (Dist.make("gaussian"), Domain.real()),
    (Dist.make("indicator"), Domain.categorical(4)),
    (Dist.make("literal", value=2), Domain.categorical(3)),
    (Dist.make("binomial", n=5), Domain.categorical(6)),
    (Dist.make("discrete_logistic", n=7), Domain.categorical(7)),
]


def _leaf_params(dist, units, seed=0):
    dt = dists.get(dist.kind)
    p = np.asarray(dt.init_params(dist, units, np.random.default_rng(seed), "random"))
    if dist.kind == "indicator":
        p = np.array([0, 3, 1, 2, 3][:units], dtype=np.int64)
    t = torch.as_tensor(p.copy())
    return p, (t if dist.kind in ("indicator", "literal") else t.to(torch.float32))


@pytest.mark.parametrize("dist, dom", FAMILIES, ids=[d.kind for d, _ in FAMILIES])
def test_torch_leaves_match_the_registry(dist, dom):
    dt, leaf = dists.get(dist.kind), bq.get_leaf(dist.kind)
    p, pt = _leaf_params(dist, 5)
    xs = np.arange(dom.k, dtype=np.float64) if dom.is_discrete else np.linspace(-4, 4, 9)
    ref = np.asarray(dt.log_prob(dist, p, xs))  # [values, units]
    li = torch.arange(5).repeat_interleave(len(xs))
    got = leaf.log_prob(dist, pt, li, torch.as_tensor(xs, dtype=torch.float32).repeat(5)).reshape(5, len(xs))
    got = np_(got).T
    assert np.array_equal(np.isfinite(ref), np.isfinite(got))
    np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np_(leaf.mode(dist, pt, dom.k)), dt.mode(dist, p, dom), rtol=1e-6)


@pytest.mark.parametrize("dist, dom", FAMILIES, ids=[d.kind for d, _ in FAMILIES])
def test_torch_leaf_samples_follow_the_family(dist, dom):
    # 4000 draws of each of 3 leaves; discrete: chi-square at the 0.1% point (fixed seed, so
    # deterministic; a correct sampler fails a given seed with probability 0.001); gaussian: mean
    # and variance within 4.5 standard errors
    dt, leaf = dists.get(dist.kind), bq.get_leaf(dist.kind)
    p, pt = _leaf_params(dist, 3, seed=1)
    gen = torch.Generator().manual_seed(7)
    n = 4000
    for u in range(3):
        s = np_(leaf.sample(dist, pt, torch.full((n,), u, dtype=torch.long), gen))
        if not dom.is_discrete:
            mu, sd = p[u]
            assert abs(s.mean() - mu) < 4.5 * sd / math.sqrt(n)
            assert abs(s.var() / sd**2 - 1.0) < 4.5 * math.sqrt(2.0 / n)
            continue
        support = int(dist.arg("k")) if dist.kind == "categorical" else dom.k  # the family's, not the domain's
        probs = np.exp(np.asarray(dt.log_prob(dist, p, np.arange(support, dtype=np.float64)))[:, u])
        assert np.all(np.isin(s, np.nonzero(probs > 0)[0]))
        if (probs > 0).sum() > 1:
            stat, df = chi_square(s[:, None], np.arange(support)[:, None], probs)
            assert stat < chi2_critical(df), (dist, u, stat, df)


def test_unknown_leaf_family_is_a_clear_error():
    with pytest.raises(BackendError, match="'poisson' has no torch query code"):
        bq.get_leaf("poisson")


# ---- conditionals ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ["flows", "enumerate"])
def test_conditional_matches_reference_and_brute_force(seed, method, device):
    c = random_circuit(seed)
    m = compiled(c, device)
    rng = np.random.default_rng(100 + seed)
    rows, missing, targets = random_query(c, rng, 6)
    xs, p = joint(c)
    got = m.conditional(rows, missing, targets, method=method)
    ref = q.conditional(c, rows, missing, targets)
    assert sorted(got) == targets
    for t in targets:
        k = c.variables[t].domain.k
        g = np_(got[t])
        assert g.shape == (len(rows), k)
        np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(g, ref[t], atol=TOL)
        for b in range(len(rows)):
            ev = [v for v in range(c.num_vars) if v not in targets and not missing[b, v]]
            np.testing.assert_allclose(g[b], brute_conditional(xs, p, rows[b], ev, t, k), atol=TOL)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["flows", "enumerate"])
def test_conditional_hand_built_cases(case, method, engine, device):
    c = CASES[case]()
    m = pc_compile(c, device=device, engine=engine, precision="fp32")
    x, miss = case_data(c, 5, seed=3, p_missing=0.3)
    disc = [i for i, v in enumerate(c.variables) if v.domain.is_discrete]
    targets = disc[:2]
    got = m.conditional(x, miss, targets, method=method)
    ref = q.conditional(c, x, miss, targets)
    for t in targets:
        fin = ~np.isnan(ref[t])
        assert np.array_equal(fin, ~np.isnan(np_(got[t])))
        np.testing.assert_allclose(np_(got[t])[fin], ref[t][fin], atol=TOL)


def test_several_targets_at_once_equal_one_at_a_time(device):
    # each target's conditional sums the other targets out: asking for them together must give
    # what asking for each alone (with the others missing) gives -- and the rows are normalised
    c = random_circuit(11, num_vars=5)
    m = compiled(c, device)
    xs, p = joint(c)
    rows = xs[np.random.default_rng(0).choice(len(xs), size=4, p=p / p.sum())]
    targets = [0, 2, 3]
    together = m.conditional(rows, None, targets)
    for t in targets:
        miss = np.zeros_like(rows, dtype=bool)
        miss[:, [u for u in targets if u != t]] = True
        alone = m.conditional(rows, miss, [t])[t]
        np.testing.assert_allclose(np_(together[t]), np_(alone), atol=1e-6)
        ev = [v for v in range(c.num_vars) if v not in targets]
        for b in range(len(rows)):
            k = c.variables[t].domain.k
            np.testing.assert_allclose(np_(together[t])[b], brute_conditional(xs, p, rows[b], ev, t, k), atol=TOL)


def test_conditional_defaults_ignores_target_values_and_names(device):
    c = random_circuit(3)
    m = compiled(c, device)
    xs, p = joint(c)
    row = np.full(c.num_vars, np.nan)
    got = m.conditional(row)  # targets default to every missing variable: the marginals
    assert sorted(got) == list(range(c.num_vars))
    for v in range(c.num_vars):
        k = c.variables[v].domain.k
        np.testing.assert_allclose(np_(got[v])[0], [p[xs[:, v] == a].sum() for a in range(k)], atol=TOL)
    rows = xs[:3].copy()
    other = rows.copy()
    other[:, 1] = 99  # out of the domain: ignored, the target is summed out
    a = m.conditional(rows, targets=["v1"])
    b = m.conditional(torch.as_tensor(other), targets=[1])
    np.testing.assert_array_equal(np_(a[1]), np_(b[1]))
    with pytest.raises(DataError, match="unknown target variable 'v9'"):
        m.conditional(rows, targets=["v9"])
    with pytest.raises(DataError, match="out of range"):
        m.conditional(rows, targets=[17])


@pytest.mark.parametrize("method", ["flows", "enumerate"])
def test_conditional_zero_probability_evidence_is_nan(method, engine, device):
    c = impossible_circuit()
    m = pc_compile(c, device=device, engine=engine, precision="fp32")
    x = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, np.nan, 0.0]])
    got = m.conditional(x, None, [1], method=method)
    ref = q.conditional(c, x, None, [1])
    g = np_(got[1])
    assert np.isnan(g[0]).all() and np.isnan(g[2]).all()
    np.testing.assert_allclose(g[1], ref[1][1], atol=TOL)
    assert np.isnan(ref[1][0]).all()


def test_conditional_normalises_over_the_domain_only(device):
    b = CircuitBuilder()
    (x0,) = b.variables(1, Domain.categorical(2))
    a = b.input(x0, 2, Dist.make("categorical", k=4), params=[[0.1, 0.2, 0.3, 0.4], [0.4, 0.4, 0.1, 0.1]])
    b.root(b.sum([a], 1, weights=[[0.5, 0.5]]))
    c = verify(b.build())
    m = pc_compile(c, device=device, engine="torch")
    for method in ("flows", "enumerate"):
        got = m.conditional(np.array([np.nan]), targets=[0], method=method)
        np.testing.assert_allclose(np_(got[0])[0], [0.5 / 1.1, 0.6 / 1.1], atol=1e-6)


def test_conditional_of_a_real_variable_is_refused(device):
    c = CASES["mixed"]()
    m = pc_compile(c, device=device, engine="torch")
    real = next(i for i, v in enumerate(c.variables) if not v.domain.is_discrete)
    with pytest.raises(DataError, match="only discrete variables"):
        m.conditional(np.zeros((1, c.num_vars)), targets=[real])
    with pytest.raises(PcirError, match="unknown conditional method"):
        m.conditional(np.zeros((1, c.num_vars)), targets=[0], method="magic")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(circuits(max_vars=4, dists=ALL_DISTS, attrs=False, odd_names=False), hst.data())
def test_conditional_on_generated_circuits(device, c, data):
    disc = [i for i, v in enumerate(c.variables) if v.domain.is_discrete]
    if not disc:
        return
    x, miss = data.draw(data_for(c, 4))
    targets = data.draw(hst.lists(hst.sampled_from(disc), min_size=1, max_size=len(disc), unique=True))
    m = pc_compile(c, device=device, engine="torch")
    ref = q.conditional(c, x, miss, targets)
    for method in ("flows", "enumerate"):
        got = m.conditional(x, miss, targets, method=method)
        for t in targets:
            fin = ~np.isnan(ref[t])
            assert np.array_equal(fin, ~np.isnan(np_(got[t]))), (method, t)
            np.testing.assert_allclose(np_(got[t])[fin], ref[t][fin], atol=1e-4)


# ---- sampling -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 4, 9])
def test_unconditional_samples_chi_square(seed, device):
    # fixed seeds: deterministic; the threshold is the 0.1% upper quantile, so a correct sampler
    # fails a given seed with probability 0.001 (checked once, then fixed)
    c = random_circuit(seed, num_vars=3)
    m = compiled(c, device)
    xs, p = joint(c)
    s = np_(m.sample(20000, seed=seed))
    stat, df = chi_square(s, xs, p)
    assert stat < chi2_critical(df), (stat, df)


def test_sampling_is_not_trivially_passing(device):
    # the same statistic rejects samples of a different circuit: the test has power
    c = random_circuit(0, num_vars=3)
    reseeded = {
        k: Param(v.shape, v.dtype, None, v.init, v.seed + 1) if v.value is None else v for k, v in c.params.items()
    }
    other = c.replace(params=reseeded)
    xs, p = joint(c)
    stat, df = chi_square(np_(compiled(other, device).sample(20000, seed=0)), xs, p)
    assert stat > chi2_critical(df)


@pytest.mark.parametrize("seed", [2, 6])
def test_conditional_samples_chi_square(seed, device):
    c = random_circuit(seed, num_vars=4)
    m = compiled(c, device)
    xs, p = joint(c)
    rng = np.random.default_rng(seed)
    ref = xs[rng.choice(len(xs), p=p / p.sum())]
    ev = ref.copy()
    ev[[1, 3]] = np.nan  # sample x1, x3 given x0, x2
    s = np_(m.sample(20000, evidence=ev, seed=seed))
    np.testing.assert_array_equal(s[:, [0, 2]], np.broadcast_to(ref[[0, 2]], (20000, 2)))
    keep = (xs[:, 0] == ref[0]) & (xs[:, 2] == ref[2])
    stat, df = chi_square(s, xs[keep], p[keep] / p[keep].sum())
    assert stat < chi2_critical(df), (stat, df)


@pytest.mark.parametrize("case", ["tied_bernoulli", "zero_probs", "product_root", "scratch_chain"])
def test_samples_of_hand_built_cases(case, engine, device):
    # both engines give the upward pass the sampler conditions on; same chi-square test, with
    # fewer samples under the (slow) Triton interpreter: the pooling rule keeps it valid
    c = CASES[case]()
    m = pc_compile(c, device=device, engine=engine, precision="fp32")
    n = 1500 if (engine == "triton" and device == "cpu") else 8000
    xs, p = joint(c)
    stat, df = chi_square(np_(m.sample(n, seed=1)), xs, p)
    assert stat < chi2_critical(df), (stat, df)
    # conditional on the first variable's most likely value
    a = float(np.argmax([p[xs[:, 0] == v].sum() for v in range(c.variables[0].domain.k)]))
    ev = np.full(c.num_vars, np.nan)
    ev[0] = a
    s = np_(m.sample(n, evidence=ev, seed=2))
    keep = xs[:, 0] == a
    stat, df = chi_square(s, xs[keep], p[keep] / p[keep].sum())
    assert stat < chi2_critical(df), (stat, df)


def test_gaussian_samples_have_the_circuits_moments(device):
    # mixed: categorical, indicator and gaussian leaves; the discrete part by chi-square, the real
    # variable's mean and second moment against the reference density integrated on a grid
    c = CASES["mixed"]()
    m = pc_compile(c, device=device, engine="torch")
    n = 20000
    s = np_(m.sample(n, seed=5))
    real = 3
    disc = [0, 1, 2]
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    x = np.zeros((len(grid), 4))
    x[:, disc] = grid
    miss = np.zeros_like(x, dtype=bool)
    miss[:, real] = True
    p = np.exp(q.marginal(c, x, miss))
    stat, df = chi_square(s[:, disc], grid, p)
    assert stat < chi2_critical(df), (stat, df)
    r = np.linspace(-25, 25, 20001)
    xr = np.zeros((len(r), 4))
    xr[:, real] = r
    mr = np.ones_like(xr, dtype=bool)
    mr[:, real] = False
    dens = np.exp(q.marginal(c, xr, mr))
    dr = r[1] - r[0]
    assert abs(dens.sum() * dr - 1.0) < 1e-6
    mean = (dens * r).sum() * dr
    var = (dens * r * r).sum() * dr - mean**2
    assert abs(s[:, real].mean() - mean) < 4.5 * math.sqrt(var / n)
    m2 = (dens * r**2).sum() * dr
    m4 = (dens * r**4).sum() * dr
    assert abs((s[:, real] ** 2).mean() - m2) < 4.5 * math.sqrt((m4 - m2**2) / n)


def test_sampling_is_seeded_batched_and_keeps_evidence(device):
    c = random_circuit(8)
    m = compiled(c, device)
    np.testing.assert_array_equal(np_(m.sample(50, seed=3)), np_(m.sample(50, seed=3)))
    assert not np.array_equal(np_(m.sample(50, seed=3)), np_(m.sample(50, seed=4)))
    xs, _ = joint(c)
    ev = xs[[0, -1]].copy()
    miss = np.zeros_like(ev, dtype=bool)
    miss[:, 2] = True
    s = np_(m.sample(evidence=ev, missing=miss, seed=0))
    assert s.shape == (2, c.num_vars) and not np.isnan(s).any()
    np.testing.assert_array_equal(s[:, [0, 1, 3]], ev[:, [0, 1, 3]])
    with pytest.raises(DataError, match="n = 3 but the evidence has 2 rows"):
        m.sample(3, evidence=ev)
    with pytest.raises(PcirError, match="needs n"):
        m.sample()


def test_sampling_impossible_evidence_names_the_row(engine, device):
    m = pc_compile(impossible_circuit(), device=device, engine=engine)
    with pytest.raises(DataError, match="row 1 has probability 0"):
        m.sample(evidence=np.array([[0.0, np.nan, np.nan], [1.0, np.nan, np.nan]]))


def test_queries_refuse_a_root_of_several_units(device):
    b = CircuitBuilder()
    (x0,) = b.variables(1, Domain.binary())
    b.root(b.input(x0, 2, Dist.make("bernoulli")))
    m = pc_compile(verify(b.build()), device=device, engine="torch")
    for call in (lambda: m.sample(3), lambda: m.map(), lambda: m.conditional(np.zeros((1, 1)), targets=[0])):
        with pytest.raises(PcirError, match="root of one unit"):
            call()


# ---- MAP ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(10))
def test_map_exact_on_deterministic_circuits(seed, device):
    c = deterministic_circuit(seed)
    m = compiled(c, device)
    xs, p = joint(c)
    rng = np.random.default_rng(seed)
    rows = xs[rng.choice(len(xs), size=5, p=p / p.sum())].copy()
    rows[rng.random(rows.shape) < 0.5] = np.nan
    rows[0] = np.nan  # MPE with no evidence
    got, val = m.map(rows, return_log_prob=True)
    got, val = np_(got), np_(val)
    assert not np.isnan(got).any()
    observed = ~np.isnan(rows)
    np.testing.assert_array_equal(got[observed], rows[observed])
    lp = complete_ll(c, got)
    for b in range(len(rows)):
        best = brute_map(c, rows[b])
        assert lp[b] == pytest.approx(best, abs=1e-5)  # an argmax (ties allowed)
        assert val[b] == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_map_on_general_circuits_matches_max_product(seed, device):
    # not deterministic: max-product is the best induced tree, a lower bound on the true MAP;
    # the value is the reference's, the assignment at least as likely as it
    c = random_circuit(seed)
    m = compiled(c, device)
    xs, p = joint(c)
    rows = xs[np.random.default_rng(seed).choice(len(xs), size=4, p=p / p.sum())].copy()
    rows[np.random.default_rng(seed + 1).random(rows.shape) < 0.5] = np.nan
    rows[0] = np.nan
    got, val = m.map(rows, return_log_prob=True)
    _ref, rval = q.map_assignment(c, rows, return_log_prob=True)
    np.testing.assert_allclose(np_(val), rval, atol=1e-5)
    lp = complete_ll(c, np_(got))
    for b in range(len(rows)):
        assert rval[b] <= brute_map(c, rows[b]) + 1e-10
        assert lp[b] >= rval[b] - 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_map_hand_built_cases(case, engine, device):
    c = CASES[case]()
    m = pc_compile(c, device=device, engine=engine, precision="fp32")
    x, miss = case_data(c, 5, seed=4, p_missing=0.5)
    if m.plan.root_units != 1:
        pytest.skip("root of several units")
    ref, rval = q.map_assignment(c, x, miss, return_log_prob=True)
    fin = np.isfinite(rval)
    if not fin.all():
        with pytest.raises(DataError, match="has probability 0"):
            m.map(x, miss)
        x, miss, ref, rval = x[fin], miss[fin], ref[fin], rval[fin]
    got, val = m.map(x, miss, return_log_prob=True)
    np.testing.assert_allclose(np_(val), rval, atol=1e-5)
    # the assignment reaches the max-product value (equal to the reference's up to ties)
    full = np_(got)
    np.testing.assert_allclose(full[~miss], x[~miss], rtol=1e-6)  # evidence kept (float32)
    np.testing.assert_allclose(q.map_assignment(c, full, np.zeros_like(miss), return_log_prob=True)[1], rval, atol=1e-5)


def test_map_without_data_gaussian_means_and_impossible_evidence(device):
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.real())
    g0 = b.input(x0, 2, Dist.make("gaussian"), params=[[1.0, 1.0], [-3.0, 0.5]])
    g1 = b.input(x1, 2, Dist.make("gaussian"), params=[[2.0, 1.0], [7.0, 0.5]])
    b.root(b.sum([b.product([g0, g1])], 1, weights=[[0.5, 0.5]]))
    m = pc_compile(verify(b.build()), device=device, engine="torch")
    np.testing.assert_allclose(np_(m.map()), [[-3.0, 7.0]])
    np.testing.assert_allclose(np_(m.map(np.array([[1.0, np.nan]]))), [[1.0, 2.0]])
    mi = pc_compile(impossible_circuit(), device=device, engine="torch")
    with pytest.raises(DataError, match="row 0 has probability 0"):
        mi.map(np.array([[1.0, np.nan, np.nan]]))
    np.testing.assert_array_equal(np_(mi.map()), q.map_assignment(impossible_circuit()))


# ---- batch size 1, single rows, marginals ---------------------------------------------------
def test_batch_of_one_and_single_rows(engine, device):
    c = CASES["tied_bernoulli"]()
    m = pc_compile(c, device=device, engine=engine, precision="fp32")
    row = enumerate_assignments(c)[5]
    assert m.marginal(row).shape == (1,)
    np.testing.assert_allclose(np_(m.marginal(row)), q.marginal(c, row), atol=1e-5)
    part = row.copy()
    part[[1, 2]] = np.nan
    np.testing.assert_allclose(np_(m.marginal(part)), q.marginal(c, part), atol=1e-5)
    for method in ("flows", "enumerate"):
        got = m.conditional(row, targets=[0], method=method)[0]
        assert got.shape == (1, 2)
        np.testing.assert_allclose(np_(got), q.conditional(c, row, targets=[0])[0], atol=TOL)
    assert m.map(row[None, :]).shape == (1, c.num_vars)
    assert m.map(part).shape == (1, c.num_vars)
    assert m.sample(1).shape == (1, c.num_vars)
    s = m.sample(evidence=part)
    assert s.shape == (1, c.num_vars) and not torch.isnan(s).any()
    assert m.sample(evidence=part, n=3).shape == (3, c.num_vars)
    assert str(s.device).startswith(device)


# ---- pcir query --compiled ------------------------------------------------------------------
def test_cli_compiled_queries_match_the_reference_path(tmp_path, capsys, device):
    from pcir.cli import main
    from pcir.ir import print_ir

    c = CASES["tied_bernoulli"]()
    model = tmp_path / "m.pcir"
    model.write_text(print_ir(c))
    data = tmp_path / "partial.csv"
    data.write_text("1,?,0,?\n0,1,?,1\n")

    def run(*argv):
        assert main(["query", *argv]) == 0
        return capsys.readouterr().out

    for kind, extra in (("conditional", ["--targets", "x1,x3"]), ("marginal", []), ("map", [])):
        ref = run(kind, str(model), "--data", str(data), *extra)
        got = run(kind, str(model), "--data", str(data), *extra, "--device", device)
        ref_lines, got_lines = ref.splitlines(), got.splitlines()
        assert len(ref_lines) == len(got_lines)
        for r, g in zip(ref_lines, got_lines, strict=True):
            rf, gf = r.split(","), g.split(",")
            assert len(rf) == len(gf)
            for a, b in zip(rf, gf, strict=True):
                try:
                    assert float(b) == pytest.approx(float(a), abs=1e-5), (kind, r, g)
                except ValueError:
                    assert a == b  # header and variable names
    out = run("sample", str(model), "--seed", "1", "--compiled", "--evidence", str(data))
    rows = np.array([[float(v) for v in line.split(",")] for line in out.splitlines()])
    assert rows.shape == (2, 4) and set(np.unique(rows)) <= {0.0, 1.0}
    np.testing.assert_array_equal(rows[0, [0, 2]], [1, 0])
    out = run("sample", str(model), "-n", "3", "--device", device)
    assert np.array([[float(v) for v in line.split(",")] for line in out.splitlines()]).shape == (3, 4)


def test_conditional_on_non_decomposable_circuit_uses_enumeration(device):
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.binary())
    a = b.input(x0, 1, Dist.make("bernoulli"), params=[0.3])
    a2 = b.input(x0, 1, Dist.make("bernoulli"), params=[0.8])
    c1 = b.input(x1, 1, Dist.make("bernoulli"), params=[0.6])
    p = b.product([a, a2, c1], attrs={"waive": "decomposable"})
    b.root(b.sum([p], 1))
    c = verify(b.build(), decomposable=False)
    m = pc_compile(c, device=device, engine="torch")
    xs, pj = joint(c)
    keep = xs[:, 1] == 1
    expect = np.array([pj[keep & (xs[:, 0] == a)].sum() for a in range(2)])
    got = m.conditional(np.array([0.0, 1.0]), targets=[0])  # auto: enumerate
    np.testing.assert_allclose(np_(got[0])[0], expect / expect.sum(), atol=1e-6)


def test_leaf_parameters_read_through_get_param(device, monkeypatch):
    # families the queries do not read from the flat tables go through model.get_param (the IR
    # format): forcing every bucket that way gives the same answers
    c = CASES["mixed"]()
    m = pc_compile(c, device=device, engine="torch", precision="fp32")
    x, miss = case_data(c, 4, seed=5, p_missing=0.4)
    before = (m.conditional(x, miss, [0, 1]), m.map(x, miss), m.sample(20, seed=3))
    for b in bq._tables(m).buckets:
        b.gather = None
    after = (m.conditional(x, miss, [0, 1]), m.map(x, miss), m.sample(20, seed=3))
    for v in (0, 1):
        np.testing.assert_allclose(np_(after[0][v]), np_(before[0][v]), atol=1e-6)
    np.testing.assert_allclose(np_(after[1]), np_(before[1]), atol=1e-6)
    np.testing.assert_allclose(np_(after[2]), np_(before[2]), atol=1e-5)


def test_queries_follow_parameter_updates(device):
    # the queries read the model's current parameters (after EM, set_param), not the circuit's
    c = CASES["tied_bernoulli"]()
    m = pc_compile(c, device=device, engine="torch", precision="fp32")
    xs, _ = joint(c)
    m.forward_backward(xs[:5])
    m.em_step(step_size=0.7)
    trained = m.to_circuit()
    row = np.array([1.0, np.nan, 0.0, np.nan])
    ref = q.conditional(trained, row, targets=[1, 3])
    got = m.conditional(row, targets=[1, 3])
    for v in (1, 3):
        np.testing.assert_allclose(np_(got[v]), ref[v], atol=TOL)
    np.testing.assert_allclose(
        np_(m.map(row, return_log_prob=True)[1]), q.map_assignment(trained, row, return_log_prob=True)[1], atol=1e-5
    )


def test_bad_evidence_names_the_column(device):
    c = CASES["tied_bernoulli"]()
    m = pc_compile(c, device=device, engine="torch")
    with pytest.raises(DataError, match=r"value 5 at row 0, column 2 \(x2\) is outside the domain"):
        m.sample(evidence=np.array([[1.0, np.nan, 5.0, np.nan]]))
    with pytest.raises(DataError, match="shape"):
        m.map(np.zeros((2, 3)))
    with pytest.raises(DataError, match="missing mask has shape"):
        m.conditional(np.zeros((2, 4)), np.zeros((3, 4), dtype=bool), targets=[0])
