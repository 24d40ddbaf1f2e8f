"""The sum layers' two backward forms agree: one fused kernel (``sum_bwd``: column and parameter
flows per column tile and batch tile) and two kernels (``sum_bwd_cols`` + ``sum_bwd_params``),
on circuits whose column tiles see several node tiles and whose batches span several tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcir import knobs
from pcir import structures as st
from pcir.backend import compile as pc_compile
from pcir.ir import PcirError


@pytest.fixture
def triton_ok(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")


def _flows(model, x, mode):
    eng = model._engine()
    eng.sum_bwd = mode
    model.zero_flows()
    model.forward_backward(x)
    out = [t.detach().cpu().double().numpy().copy() for t in model.flow_tensors()]
    model.zero_flows()
    return out


@pytest.mark.parametrize("latents,batch", [(100, 5), (70, 70)])
def test_fused_and_split_backward_agree(latents, batch, device, triton_ok):
    tree = [(0, 1), (1, 2), (1, 3), (3, 4), (4, 5)]
    c = st.hclt(tree=tree, num_vars=6, root=1, num_latents=latents, input_dist="categorical(k=5)")
    m = pc_compile(c, device=device, engine="triton", precision="fp32")
    eng = m._engine()
    sums = [L for L in eng.layers if hasattr(L, "col_list")]
    # several node tiles per column tile somewhere (the fused kernel's inner loop runs more than once)
    assert any(int(L.col.view(-1, 9)[:, 7].max()) > 1 for L in sums)
    x = torch.as_tensor(np.random.default_rng(0).integers(0, 5, (batch, 6)))
    fused = _flows(m, x, "fused")
    split = _flows(m, x, "split")
    assert any(np.abs(f).sum() > 0 for f in fused)
    for f, s in zip(fused, split, strict=True):
        np.testing.assert_allclose(f, s, rtol=2e-5, atol=1e-6)


def test_auto_picks_by_atomic_adds(device, triton_ok, monkeypatch):
    from pcir.backend import triton_engine as te

    c = st.hclt(tree=[(0, 1), (1, 2)], num_vars=3, root=1, num_latents=16, input_dist="categorical(k=3)")
    m = pc_compile(c, device=device, engine="triton")
    eng = m._engine()
    L = next(L for L in eng.layers if hasattr(L, "col_list"))
    assert eng.sum_bwd == "auto" and eng._fused_bwd(L, 1)
    monkeypatch.setattr(te, "FUSED_BWD_ATOMICS", L.weights - 1)
    assert not eng._fused_bwd(L, 1)


def test_bad_knob_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PCIR_SUM_BWD", "both")
    with pytest.raises(PcirError, match="PCIR_SUM_BWD='both' is not one of: auto, fused, split"):
        knobs.get()
