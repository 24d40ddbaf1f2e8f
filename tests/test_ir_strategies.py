"""The generated circuits are valid and normalised (the strategies' own contract)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from strategies import ALL_DISTS, EXTRA_DISTS, circuits, data_for, discrete_total

from pcir.ir import parse_ir, print_ir, verify
from pcir.ir.evaluator import check_data


@given(circuits(f32=True))
def test_generated_circuits_verify_and_normalise(c):
    verify(c)
    for r in c.roots:
        assert abs(discrete_total(c, r) - 1.0) < 1e-5


@given(circuits())
def test_float64_circuits_normalise_to_float64_precision(c):
    assert all(p.dtype != "f32" for p in c.params.values())
    for r in c.roots:
        assert abs(discrete_total(c, r) - 1.0) < 1e-12


@given(circuits(max_vars=3), st.data())
def test_data_for_is_valid(c, data):
    x, missing = data.draw(data_for(c, 4))
    check_data(c, x, missing)
    assert x.shape == missing.shape == (4, c.num_vars)


@given(circuits(dists=ALL_DISTS + EXTRA_DISTS))
def test_later_families_opt_in(c):
    verify(c)
    assert parse_ir(print_ir(c)) == c
    for r in c.roots:
        assert abs(discrete_total(c, r) - 1.0) < 1e-9
