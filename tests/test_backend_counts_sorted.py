"""The categorical counts over each variable's batch sorted by value (``triton_engine.COUNTS_SORTED``,
``codegen._sorted_span``): a category tile multiplies only the batch tiles that hold its
categories, and the fused EM reads its rows' totals from a row-sum launch.

Oracle: the same model with the counts over the whole batch (the default, tested against the
reference evaluator elsewhere). The counts of ``forward_backward`` and every parameter after
``train_step`` must agree to float rounding (the sums run in another order), on the gather
circuits, on tables of 2-40 categories in one block and on 256-category tables, at batches of
several batch tiles with missing values, with category tiles small enough that each visits only
part of the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_gathers import CIRCUITS
from test_backend_helpers import data_for
from test_backend_leaf_rows import mixed_lengths
from test_backend_trainstep import _assert_same_params

from pcir import knobs, structures
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te
from pcir.ir import Domain


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def hclt256():
    data = np.random.default_rng(0).integers(0, 256, (300, 5))
    return structures.hclt(data, num_latents=16, domain=Domain.categorical(256))


CASES = {**CIRCUITS, "mixed_lengths": mixed_lengths, "hclt256": hclt256}


def _sorted(monkeypatch, on: bool) -> None:
    monkeypatch.setattr(te, "COUNTS_SORTED", on)


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(te, "COUNTS_SORTED_BC", 16)  # (tl.dot needs 16)
    monkeypatch.setattr(te, "COUNT_BU", 16)


def _spy(monkeypatch, eng) -> list:
    launched, real = [], eng.k

    class Spy:
        def __getattr__(self, name):
            launched.append(name)
            return getattr(real, name)

    monkeypatch.setattr(eng, "k", Spy())
    return launched


@pytest.mark.parametrize("name", sorted(CASES))
def test_sorted_counts_equal_the_whole_batch_counts(name, triton_device, monkeypatch, small_tiles):
    c = CASES[name]()
    ref, m = (pc_compile(c, engine="triton", device=triton_device, precision="fp32") for _ in range(2))
    if not m.plan.cat_size:
        pytest.skip("no categorical tables")
    x, miss = data_for(c, 150, seed=3, p_missing=0.2)
    _sorted(monkeypatch, False)
    ref.forward_backward(x, miss)
    _sorted(monkeypatch, True)
    launched = _spy(monkeypatch, m._engine())
    m.forward_backward(x, miss)
    assert "input_categorical_counts" in launched
    want, got = ref.cat_flows.detach().cpu().numpy(), m.cat_flows.detach().cpu().numpy()
    assert want.any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_sorted_train_step_equals_the_whole_batch_step(name, triton_device, monkeypatch, small_tiles):
    c = CASES[name]()
    ref, m = (pc_compile(c, engine="triton", device=triton_device, precision="fp32") for _ in range(2))
    if not m.plan.cat_size:
        pytest.skip("no categorical tables")
    for step, (s, pc) in enumerate([(0.3, 0.1), (1.0, 0.0), (0.5, 1.0)]):
        x, miss = data_for(c, 150, seed=20 + step, p_missing=0.2)
        _sorted(monkeypatch, False)
        ll_ref = ref.train_step(x, s, pc, miss)
        _sorted(monkeypatch, True)
        ll = m.train_step(x, s, pc, miss)
        np.testing.assert_allclose(ll.cpu().numpy(), ll_ref.cpu().numpy(), rtol=1e-5, atol=1e-5)
        _assert_same_params(m, ref, f"{name}, step {step}")


def test_the_sorted_spans(triton_device):
    """PERM orders each variable's samples by value with the missing ones last; BND counts the
    observed samples below each category."""
    c = mixed_lengths()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    eng = m._engine()
    x, miss = data_for(c, 90, seed=5, p_missing=0.3)
    xT = torch.as_tensor(np.where(miss, np.nan, x).T.copy(), dtype=torch.float32, device=triton_device)
    perm, bnd, kb = eng._sorted_batch(xT)
    assert kb == 41 and perm.dtype == bnd.dtype == torch.int32
    for v in range(xT.shape[0]):
        col = xT[v].cpu().numpy()
        vals = col[perm[v].long().cpu().numpy()]
        obs = ~np.isnan(col)
        assert np.all(np.isnan(vals[obs.sum() :])) and np.all(np.diff(vals[: obs.sum()]) >= 0)
        want = [(col[obs] < k).sum() for k in range(kb)]
        assert bnd[v].cpu().tolist() == want


def test_a_step_with_the_sorted_counts_launches_them(triton_device, monkeypatch, small_tiles):
    c = hclt256()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, _ = data_for(c, 150, seed=1)
    _sorted(monkeypatch, True)
    launched = _spy(monkeypatch, m._engine())
    m.train_step(x, 0.5, 0.1)
    assert {"input_categorical_em", "input_categorical_rowsum"} <= set(launched)
