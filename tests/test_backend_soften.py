"""Data softening (``model.soften``): ``forward_backward`` treats each observed discrete value as
soft evidence. Checked against a brute-force reference: the soft likelihood of x is
sum_y p(y) prod_i q(x_i | y_i), and the flows are those of the hard assignments y weighted by
their posterior given the soft evidence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_backend_helpers import CASES

from pcir.backend import compile as pc_compile
from pcir.ir import InputGroup, PcirError
from pcir.ir import evaluator as ev


def _soft_reference(c, xs, beta):
    """(soft log-likelihoods [N], sum-parameter flows, leaf counts {param: (units, k)})."""
    ks = [v.domain.k for v in c.variables]
    ys = np.array(list(itertools.product(*[range(k) for k in ks])), dtype=np.int64)
    logp_y = ev.log_likelihood(c, ys)
    lls, pflows, counts = [], {}, {}
    leaves = [g for g in c if isinstance(g, InputGroup)]
    per_y = [ev.flows(c, y[None]) for y in ys]
    for x in xs:
        q = np.where(ys == x[None, :], beta, (1 - beta) / (np.array(ks)[None, :] - 1)).prod(axis=1)
        w = np.exp(logp_y) * q
        lls.append(np.log(w.sum()))
        w = w / w.sum()
        for wy, y, fl in zip(w, ys, per_y, strict=True):
            for name, pf in fl.param.items():
                pflows[name] = pflows.get(name, 0.0) + wy * pf
            for g in leaves:
                k = ks[g.var]
                cnt = counts.setdefault(g.params, np.zeros((c.params[g.params].shape[0], k)))
                cnt[np.arange(g.units), y[g.var]] += wy * fl.node[g.name][0]
    return np.array(lls), pflows, counts


@pytest.mark.parametrize("case", ["tied_bernoulli", "product_root", "scratch_chain"])
@pytest.mark.parametrize("beta", [0.8, 0.97])
def test_softened_flows_match_the_soft_evidence_reference(case, beta, engine, device):
    c = CASES[case]()
    if any(not v.domain.is_discrete for v in c.variables):
        pytest.skip("discrete variables only")
    rng = np.random.default_rng(7)
    xs = np.stack([rng.integers(0, v.domain.k, 3) for v in c.variables], axis=1)
    m = pc_compile(c, device=device, engine=engine, precision="fp32")
    m.soften = beta
    ll = m.forward_backward(xs).cpu().double().numpy().reshape(len(xs), -1)[:, 0]
    want_ll, want_pf, want_counts = _soft_reference(c, xs, beta)
    root_units = m.plan.root_units
    if root_units == 1:
        np.testing.assert_allclose(ll, want_ll, rtol=1e-5, atol=1e-6)
    for name, pf in want_pf.items():
        if root_units == 1:
            np.testing.assert_allclose(m.param_flows(name).cpu().double().numpy(), pf, rtol=2e-4, atol=1e-5)
    for name, cnt in want_counts.items():
        slot = m.plan.params[name]
        got = m.param_flows(name).cpu().double().numpy()
        if slot.kind == "bernoulli":
            got = got.reshape(cnt.shape)
        if root_units == 1:
            np.testing.assert_allclose(got, cnt, rtol=2e-4, atol=1e-5, err_msg=name)
    # the model itself is not softened: its likelihood is the hard one
    np.testing.assert_allclose(
        m(xs).detach().cpu().double().numpy().reshape(len(xs), -1)[:, 0],
        ev.log_likelihood(c, xs).reshape(len(xs), -1)[:, 0],
        rtol=1e-5,
    )


def test_soften_one_is_hard_data_and_bad_values_are_refused(device):
    c = CASES["tied_bernoulli"]()
    xs = np.array([[0, 1, 1, 0], [1, 1, 0, 0]])
    a = pc_compile(c, device=device, engine="torch")
    b = pc_compile(c, device=device, engine="torch")
    b.soften = 1.0
    a.forward_backward(xs)
    b.forward_backward(xs)
    for name in a.plan.params:
        if a.plan.params[name].kind != "indicator":
            np.testing.assert_array_equal(a.param_flows(name).cpu().numpy(), b.param_flows(name).cpu().numpy())
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(PcirError, match="soften"):
            b.soften = bad
