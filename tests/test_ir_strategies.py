"""The generated circuits are valid and normalised (the strategies' own contract)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from strategies import circuits, data_for, discrete_total

from pcir.ir import verify
from pcir.ir.evaluator import check_data


@given(circuits())
def test_generated_circuits_verify_and_normalise(c):
    verify(c)
    for r in c.roots:
        assert abs(discrete_total(c, r) - 1.0) < 1e-5


@given(circuits(max_vars=3), st.data())
def test_data_for_is_valid(c, data):
    x, missing = data.draw(data_for(c, 4))
    check_data(c, x, missing)
    assert x.shape == missing.shape == (4, c.num_vars)
