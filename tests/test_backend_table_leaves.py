"""Table leaf families (binomial, discrete_logistic, literal) on the categorical kernel path:
the (units, k) log-probability table is computed in torch from the family's parameters, EM uses
the per-value flow counts. Forward, marginals, EM steps and autograd against the reference
evaluator, on both engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_helpers import data_for

from pcir.backend import compile as pc_compile
from pcir.ir import evaluator as ev
from pcir.ir.builder import CircuitBuilder
from pcir.ir.distributions import Dist, Domain
from pcir.ir.verify import verify


def _circuit(family: str):
    """Two variables of 5 values; a mixture of products of the family's leaves with categoricals
    (so that flows differ per unit)."""
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.categorical(5))
    dist = {
        "binomial": Dist.make("binomial", n=6),
        "discrete_logistic": Dist.make("discrete_logistic", n=5),
        "literal": Dist.make("literal", value=3),
    }[family]
    a = b.input(x0, 3, dist)
    c1 = b.input(x1, 3, Dist.make("categorical", k=5))
    a2 = b.input(x1, 3, Dist.make("categorical", k=5))
    c0 = b.input(x0, 3, Dist.make("categorical", k=5))
    p1 = b.product([a, c1])
    p2 = b.product([c0, a2])
    b.root(b.sum([p1, p2], 1))
    return verify(b.build())


FAMILIES = ["binomial", "discrete_logistic", "literal"]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_marginals_match_reference(family, engine, device):
    c = _circuit(family)
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x, miss = data_for(c, 9, seed=3, p_missing=0.3)
    for mm in (None, miss):
        ll = m(x, mm).detach().cpu().double().numpy()
        ref = ev.log_likelihood(c, x, mm)
        fin = np.isfinite(ref)
        assert np.array_equal(fin, np.isfinite(ll)), (ll, ref)
        np.testing.assert_allclose(ll[fin], ref[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("step,pc", [(1.0, 0.0), (0.5, 0.3)])
def test_em_step_matches_reference(family, step, pc, engine, device):
    c = _circuit(family)
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x, miss = data_for(c, 12, seed=5, p_missing=0.2)
    if family == "literal":  # keep some probability: x0 = 3 in half the rows
        x[::2, 0] = 3
    m.forward_backward(x[:6], miss[:6])
    m.forward_backward(x[6:], miss[6:])  # full-batch EM accumulates
    m.em_step(step, pc)
    new = ev.em_step(c, x, miss, step, pc)
    for p, slot in m.plan.params.items():
        if slot.kind in ("indicator", "literal"):
            continue
        np.testing.assert_allclose(
            m.get_param(p).cpu().double().numpy(), new.param_value(p), rtol=2e-4, atol=1e-5, err_msg=p
        )
    # the concrete circuit written back evaluates like the module
    ll = m(x).detach().cpu().double().numpy()
    ref = ev.log_likelihood(m.to_circuit(), x)
    fin = np.isfinite(ref)
    np.testing.assert_allclose(ll[fin], ref[fin], rtol=1e-4, atol=1e-4)


def test_tied_table_parameters_accumulate_together(engine, device):
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.categorical(4))
    dist = Dist.make("binomial", n=3)
    a = b.input(x0, 2, dist)
    a2 = b.input(x1, 2, dist, tie=a)
    b.root(b.sum([b.product([a, a2])], 1))
    c = verify(b.build())
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x, _ = data_for(c, 10, seed=7)
    np.testing.assert_allclose(m(x).detach().cpu().double().numpy(), ev.log_likelihood(c, x), rtol=1e-5)
    m.forward_backward(x)
    m.em_step(1.0, 0.1)
    new = ev.em_step(c, x, None, 1.0, 0.1)
    p = m.plan.group_param[a]
    assert m.plan.group_param[a2] == p
    np.testing.assert_allclose(m.get_param(p).cpu().double().numpy(), new.param_value(p), rtol=1e-4)


@pytest.mark.parametrize("family", ["binomial", "discrete_logistic"])
def test_autograd_reaches_family_parameters(family, engine, device):
    c = _circuit(family)
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x, _ = data_for(c, 6, seed=11)
    m(x).sum().backward()
    g = m.leaf_params.grad.detach().cpu().double()
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # finite differences of the reference log-likelihood in the IR parameters
    name = m.plan.group_param[next(g.name for g in c if getattr(g, "dist", None) and g.dist.kind == family)]
    slot = m.plan.params[name]
    base = np.asarray(c.param_value(name), dtype=np.float64)
    flat = base.reshape(-1)
    eps = 1e-5
    for i in range(flat.size):
        up, dn = flat.copy(), flat.copy()
        up[i] += eps
        dn[i] -= eps
        lu = ev.log_likelihood(c.with_params(**{name: up.reshape(base.shape)}), x).sum()
        ld = ev.log_likelihood(c.with_params(**{name: dn.reshape(base.shape)}), x).sum()
        np.testing.assert_allclose(g[slot.poff + i].item(), (lu - ld) / (2 * eps), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_queries_match_reference(family, engine, device):
    from pcir.ir import queries as q

    c = _circuit(family)
    m = pc_compile(c, engine=engine, device=device, precision="fp32")
    x = np.array([[3.0, np.nan], [np.nan, 2.0], [1.0, np.nan]])
    got = m.conditional(x, targets=[0, 1])
    ref = q.conditional(c, x, targets=[0, 1])
    for v in (0, 1):
        a, r = got[v].detach().cpu().double().numpy(), ref[v]
        assert np.array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_allclose(a[~np.isnan(r)], r[~np.isnan(r)], rtol=1e-4, atol=1e-6)
