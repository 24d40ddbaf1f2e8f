"""Reference queries on hypothesis-generated circuits (tests/strategies.py): brute force where
every variable is discrete, the two conditional algorithms against each other otherwise."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as hst
from strategies import circuits, random_data

from pcir.ir import queries as q
from pcir.ir.evaluator import enumerate_assignments
from pcir.ir.evaluator import log_likelihood as complete_ll

DISCRETE = dict(max_vars=3, max_units=3, allow_real=False, multi_root=False, attrs=False, odd_names=False)
MIXED = dict(max_vars=3, max_units=3, allow_real=True, multi_root=False, attrs=False, odd_names=False)


def _query(c, seed):
    rng = np.random.default_rng(seed)
    x, miss = random_data(c, 3, rng, missing_rate=0.3)
    targets = sorted(rng.choice(c.num_vars, size=int(rng.integers(1, c.num_vars + 1)), replace=False).tolist())
    return x, miss, targets


@given(circuits(**DISCRETE), hst.integers(0, 2**31))
def test_conditional_against_brute_force(c, seed):
    x, miss, targets = _query(c, seed)
    xs = enumerate_assignments(c)
    p = np.exp(complete_ll(c, xs))
    for method in ("flows", "enumerate"):
        got = q.conditional(c, x, miss, targets, method=method)
        for t in targets:
            k = c.variables[t].domain.k
            for b in range(len(x)):
                m = np.ones(len(xs), dtype=bool)
                for v in range(c.num_vars):
                    if v not in targets and not miss[b, v]:
                        m &= xs[:, v] == x[b, v]
                num = np.array([p[m & (xs[:, t] == a)].sum() for a in range(k)])
                if num.sum() <= 1e-300:
                    assert np.isnan(got[t][b]).all()
                else:
                    np.testing.assert_allclose(got[t][b], num / num.sum(), atol=1e-9)


@given(circuits(**MIXED), hst.integers(0, 2**31))
def test_conditional_algorithms_agree_with_real_evidence(c, seed):
    x, miss, targets = _query(c, seed)
    targets = [t for t in targets if c.variables[t].domain.is_discrete]
    if not targets:
        return
    a = q.conditional(c, x, miss, targets, method="flows")
    b = q.conditional(c, x, miss, targets, method="enumerate")
    for t in targets:
        np.testing.assert_allclose(a[t], b[t], atol=1e-9)


@given(circuits(**DISCRETE), hst.integers(0, 2**31))
def test_map_is_a_reachable_lower_bound(c, seed):
    rng = np.random.default_rng(seed)
    xs = enumerate_assignments(c)
    p = np.exp(complete_ll(c, xs))
    row = xs[rng.choice(len(xs), p=p / p.sum())].copy()
    row[rng.random(c.num_vars) < 0.5] = np.nan
    got, val = q.map_assignment(c, row, return_log_prob=True)
    keep = ~np.isnan(row)
    np.testing.assert_array_equal(got[0][keep], row[keep])
    m = np.all((xs == row) | np.isnan(row), axis=1)
    assert val[0] <= np.log(p[m].max()) + 1e-9
    assert complete_ll(c, got)[0] >= val[0] - 1e-9


@given(circuits(**MIXED), hst.integers(0, 2**31))
def test_samples_keep_evidence_and_have_positive_density(c, seed):
    rng = np.random.default_rng(seed)
    s0 = q.sample(c, 4, seed=seed)
    assert not np.isnan(s0).any()
    assert np.isfinite(complete_ll(c, s0)).all()
    ev = s0.copy()
    ev[rng.random(ev.shape) < 0.5] = np.nan
    s = q.sample(c, evidence=ev, seed=seed + 1)
    keep = ~np.isnan(ev)
    np.testing.assert_array_equal(s[keep], ev[keep])
    assert np.isfinite(complete_ll(c, s)).all()
