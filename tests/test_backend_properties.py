"""Hypothesis: on random valid circuits of each leaf family, the generated kernels (Triton under
TRITON_INTERPRET=1 on CPU, compiled with ``--device cuda``) agree with the reference evaluator on
forward values, marginals, parameter flows, one EM step and autograd gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ALL_DISTS, circuits, data_for
from test_backend_helpers import torch_reference_ll

from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.ir import evaluator as ev


def _engine(device: str) -> str:
    return "triton" if device == "cuda" or knobs.get().triton_interpret else "torch"


@pytest.mark.parametrize("dist", ALL_DISTS)
def test_kernels_agree_with_reference(dist, device):
    @settings(max_examples=15, deadline=None, derandomize=True)
    @given(circuits(max_vars=3, max_units=3, dists=(dist,)), st.data())
    def check(c, data):
        x, miss = data.draw(data_for(c, 5))
        m = pc_compile(c, engine=_engine(device), device=device, precision="fp32")
        # forward with marginals
        ll = m(x, miss).detach().cpu().double().numpy()
        ref = ev.log_likelihood(c, x, miss)
        fin = np.isfinite(ref)
        assert np.array_equal(fin, np.isfinite(ll))
        np.testing.assert_allclose(ll[fin], ref[fin], rtol=1e-4, atol=1e-4)
        if not fin.all():
            return  # flows of impossible samples are undefined
        # parameter flows
        m.forward_backward(x, miss)
        fl = ev.flows(c, x, miss)
        for pname, pf in fl.param.items():
            np.testing.assert_allclose(m.param_flows(pname).cpu().double().numpy(), pf, rtol=2e-4, atol=5e-5)
        # one EM step (flows already accumulated)
        m.em_step(step_size=0.5, pseudocount=0.1)
        new = ev.em_step(c, x, miss, step_size=0.5, pseudocount=0.1)
        for pname, p in c.params.items():
            if p.dtype == "i64" or pname not in m.plan.params:
                continue
            np.testing.assert_allclose(
                m.get_param(pname).cpu().double().numpy(), new.param_value(pname), rtol=1e-3, atol=1e-4, err_msg=pname
            )
        # autograd gradients vs a float64 torch evaluation
        m2 = pc_compile(c, engine=_engine(device), device=device, precision="fp32")
        m2(x, miss).double().reshape(len(x), -1)[:, 0].sum().backward()
        ref_ll, leaves = torch_reference_ll(m2, x, miss)
        ref_ll.reshape(len(x), -1)[:, 0].sum().backward()
        for name in ("sum_logits", "cat_logits", "gauss"):
            want = leaves[name].grad
            if want is None or want.numel() == 0:
                continue
            got = getattr(m2, name).grad.cpu().double()
            ok = torch.isfinite(leaves[name].detach())
            np.testing.assert_allclose(got[ok].numpy(), want[ok].numpy(), rtol=2e-3, atol=2e-4, err_msg=name)

    check()
