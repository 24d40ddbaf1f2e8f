"""The categorical leaves' forward from whole table rows (``codegen.input_categorical_rows``,
``triton_engine.LEAF_ROWS``): each program reads its unit tile's table rows once and gathers every
sample's value on chip, where ``input_categorical`` reads one value per (leaf, sample).

Both forms pick the same table entries, so the leaf rows of the value buffer must agree bit for bit
(missing values, -inf entries, tables of different lengths in one block, batches that split over
programs or not); the form is chosen per block by the tables' length and by the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_gathers import CIRCUITS
from test_backend_helpers import data_for

from pcir import knobs, structures
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te
from pcir.ir import CircuitBuilder, Dist, Domain, verify


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def mixed_lengths():
    """One categorical block with tables of 2, 5, 17 and 40 categories, groups of 70 units (several
    unit tiles, the last one partial), one table tied across two variables."""
    b = CircuitBuilder(seed=5)
    xs = [b.variable(Domain.categorical(k)) for k in (2, 5, 17, 40, 40)]
    a = b.input(xs[0], 70, Dist.make("bernoulli"))
    c = b.input(xs[1], 70, Dist.make("categorical", k=5))
    d = b.input(xs[2], 70, Dist.make("categorical", k=17))
    e = b.input(xs[3], 70, Dist.make("categorical", k=40))
    e2 = b.input(xs[4], 70, Dist.make("categorical", k=40), tie=e)
    s1 = b.sum([b.product([a, c])], 70)
    s2 = b.sum([b.product([d, e, e2])], 70)
    b.root(b.sum([b.product([s1, s2])], 1))
    return verify(b.build())


def _leaf_values(m, x, miss, *, rows: bool, monkeypatch, programs: int | None = None):
    """(the value buffer's leaf rows, which blocks ran input_categorical_rows)."""
    monkeypatch.setattr(te, "LEAF_ROWS", rows)
    xf, _ = m._prepare(x, miss, defer=True)
    m._normalised_cached()
    _, _, logp, W = m._cache
    eng = m._engine()
    if programs is not None:
        monkeypatch.setattr(eng, "target_programs", programs)
    launched = []
    real = eng.k

    class Spy:
        def __getattr__(self, name):
            if name.startswith("input_categorical"):
                launched.append(name)
            return getattr(real, name)

    monkeypatch.setattr(eng, "k", Spy())
    with torch.no_grad():
        V, _ = eng.forward(W, logp, m.gauss, xf, precompile=False)
    monkeypatch.setattr(eng, "k", real)
    end = max(b.row + b.count for b in m.plan.inputs)
    return V[:end].cpu(), launched


CASES = {**CIRCUITS, "mixed_lengths": mixed_lengths}


@pytest.mark.parametrize("batch", [32, 70])
@pytest.mark.parametrize("name", sorted(CASES))
def test_rows_form_reads_the_same_values(name, batch, triton_device, monkeypatch):
    c = CASES[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, batch, seed=7, p_missing=0.25)
    want, old = _leaf_values(m, x, miss, rows=False, monkeypatch=monkeypatch)
    assert "input_categorical_rows" not in old
    for programs in (1, 10_000):  # one batch chunk per unit tile, or the batch split over programs
        got, new = _leaf_values(m, x, miss, rows=True, monkeypatch=monkeypatch, programs=programs)
        has_cat = any(b.family == "categorical" and b.count for b in m.plan.inputs)
        assert ("input_categorical_rows" in new) == has_cat
        assert "input_categorical" not in new  # every table here is short: no block keeps the old form
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.equal(got.nan_to_num(), want.nan_to_num()), (name, batch, programs)


def test_the_cases_cover_what_the_rows_form_must_handle(triton_device, monkeypatch):
    """Tables of several lengths in one block, a tied table and groups of several unit tiles
    (mixed_lengths); -inf entries (zero_probs); missing values are in every case's data."""
    m = pc_compile(mixed_lengths(), engine="triton", device=triton_device, precision="fp32")
    (tab, n, _bu, kp) = next(iter(m._engine().leaf_rows.values()))
    ents = tab.view(-1, 6).cpu().numpy()
    assert kp == 64 and sorted(set(ents[:, 4].tolist())) == [2, 5, 17, 40]
    assert n == len(ents) > len(set(ents[:, 0].tolist()))  # groups span several unit tiles
    assert len(set(ents[:, 3].tolist())) < len(set(ents[:, 0].tolist()))  # a table read by two groups
    c = CASES["zero_probs"]()
    zp = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, 40, seed=2)
    got, launched = _leaf_values(zp, x, miss, rows=True, monkeypatch=monkeypatch)
    assert launched == ["input_categorical_rows"] and torch.isneginf(got).any()


def test_small_batches_and_long_tables_keep_the_lookup(triton_device, monkeypatch):
    c = mixed_lengths()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, miss = data_for(c, te.LEAF_ROWS_MIN_BATCH - 1, seed=1)
    _, launched = _leaf_values(m, x, miss, rows=True, monkeypatch=monkeypatch)
    assert launched == ["input_categorical"]
    monkeypatch.setattr(te, "LEAF_ROWS_MAX_K", 32)  # the block has a table of 40 categories
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    assert m._engine().leaf_rows == {}
    x, miss = data_for(c, 40, seed=1)
    _, launched = _leaf_values(m, x, miss, rows=True, monkeypatch=monkeypatch)
    assert launched == ["input_categorical"]


def test_hclt_with_256_categories(triton_device, monkeypatch):
    """MNIST-shaped tables (256 categories): unit tiles of 16 rows, values bit for bit."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (300, 6))
    c = structures.hclt(data, num_latents=20, domain=Domain.categorical(256))
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    (_tab, _n, bu, kp) = next(iter(m._engine().leaf_rows.values()))
    assert (bu, kp) == (16, 256)
    x = data[:40].astype(np.float64)
    miss = rng.random(x.shape) < 0.1
    want, _ = _leaf_values(m, x, miss, rows=False, monkeypatch=monkeypatch)
    got, launched = _leaf_values(m, x, miss, rows=True, monkeypatch=monkeypatch)
    assert launched == ["input_categorical_rows"]
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
