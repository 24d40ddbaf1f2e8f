"""Circuits whose every sum parameter entry is an edge (HCLT, PD, HMM, RAT-SPN) keep no per-entry
edge mask: ``em_sum_rows`` runs with ``ALL`` and reads none, and the runtime builds ``sum_edge``
only when a path that needs it runs (the torch fallbacks, entropy, an error's rebuild). The EM step
must be the one the mask gives, bit for bit, and a training step must not build the mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_gathers import CIRCUITS
from test_backend_helpers import data_for

from pcir import knobs
from pcir.backend import compile as pc_compile


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _pair(c, device):
    a = pc_compile(c, engine="triton", device=device, precision="fp32")
    b = pc_compile(c, engine="triton", device=device, precision="fp32")
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("name", ["hclt", "hmm", "pd", "mixed", "block_sparse", "tied_bernoulli"])
def test_em_without_the_mask_equals_em_with_it(name, triton_device):
    c = CIRCUITS[name]()
    a, b = _pair(c, triton_device)
    edges = bool(a.plan.sum_edge.all())
    assert a._tab().all_edges == edges
    assert edges == (name not in ("block_sparse", "tied_bernoulli"))  # their block-sparse sums have holes
    b._tab().all_edges = False  # b reads the mask, as every circuit did before
    x, _ = data_for(c, 33, seed=7)
    for step in range(2):
        a.forward_backward(x)
        b.forward_backward(x)
        # the same flows for both: atomic adds sum them in any order on a GPU (and under
        # --program-order shuffle), and this test is about the EM update, bit for bit
        for fa, fb in zip(a.flow_tensors(), b.flow_tensors(), strict=True):
            fb.copy_(fa)
        a.em_step(0.6, 0.2)
        b.em_step(0.6, 0.2)
        for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=f"{n} after step {step + 1}")
    assert (a._tab()._sum_edge is None) == edges  # built only where some entry is not an edge


@pytest.mark.parametrize("name", ["hclt", "pd"])
def test_a_training_step_builds_no_edge_mask(name, triton_device):
    c = CIRCUITS[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, _ = data_for(c, 20, seed=1)
    m.train_step(x, 0.5, 0.1)
    m.train_step(x, 0.5, 0.1)
    assert m._tab()._sum_edge is None
    # the mask, when a path asks for it, is the plan's
    assert np.array_equal(m._tab().sum_edge.cpu().numpy(), m.plan.sum_edge)
