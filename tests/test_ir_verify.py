"""Verifier negative tests: each rule broken once on an otherwise valid circuit.

Every case must produce exactly one problem, whose message is compared with the golden file
tests/golden/ir/verify_errors.txt (one ``case: message`` line each). After an intended change of
wording, regenerate it with::

    PYTHONPATH=src python tests/test_ir_verify.py --regen
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pcir.ir import (
    Circuit,
    Dist,
    Domain,
    InputGroup,
    Param,
    ProductGroup,
    SumGroup,
    Variable,
    VerifyError,
    make_attrs,
    parse_ir,
    print_ir,
    problems,
    verify,
)

GOLDEN = Path(__file__).parent / "golden" / "ir" / "verify_errors.txt"


def base() -> Circuit:
    """A valid circuit that uses every pattern: the canvas each case breaks once."""
    variables = [Variable("x0", Domain.binary()), Variable("x1", Domain.categorical(3)), Variable("x2", Domain.real())]
    groups = [
        InputGroup("a", 0, 2, Dist.make("bernoulli"), "a.w"),
        InputGroup("b", 1, 2, Dist.make("categorical", k=3), "b.w"),
        InputGroup("c", 2, 2, Dist.make("gaussian"), "c.w"),
        ProductGroup("ab", ("a", "b"), "aligned", 2),
        ProductGroup("ab2", ("a", "b"), "explicit", 3, np.array([[0, 1], [1, 0], [1, 1]])),
        SumGroup("s", 2, ("ab", "ab2"), "dense", "s.w"),
        ProductGroup("sc", ("s", "c"), "outer", 4),
        SumGroup("t", 2, ("sc",), "block", "t.w", mask=np.array([[True, False], [True, True]]), block=(1, 2)),
        SumGroup("r", 1, ("t",), "explicit", "r.w", edges=np.array([[0, 0], [0, 1]])),
    ]
    params = {
        "a.w": Param.of(np.array([0.2, 0.7])),
        "b.w": Param.of(np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])),
        "c.w": Param.of(np.array([[0.0, 1.0], [1.0, 2.0]])),
        "s.w": Param((2, 5)),
        "t.w": Param((2, 4)),
        "r.w": Param.of(np.array([0.4, 0.6])),
    }
    return Circuit(variables, groups, params, ["r"])


def regroup(c: Circuit, name: str, **changes) -> Circuit:
    return c.with_group(replace(c.group(name), **changes))


def reparam(c: Circuit, name: str, p: Param) -> Circuit:
    return c.replace(params={**c.params, name: p})


def add_groups(c: Circuit, *gs, params=None, roots=None) -> Circuit:
    return c.replace(groups=[*c, *gs], params={**c.params, **(params or {})}, roots=roots or c.roots)


CASES: dict[str, Callable[[Circuit], Circuit]] = {
    "duplicate_variable": lambda c: c.replace(variables=[*c.variables[:2], Variable("x0", Domain.real())]),
    "no_root": lambda c: c.replace(roots=[]),
    "unknown_root": lambda c: c.replace(roots=["nope"]),
    "dangling_group": lambda c: add_groups(
        c, InputGroup("lost", 0, 1, Dist.make("bernoulli"), "a2.w"), params={"a2.w": Param((1,))}
    ),
    "units_below_one": lambda c: regroup(c, "r", units=0),
    "variable_out_of_range": lambda c: regroup(c, "c", var=7),
    "unknown_distribution": lambda c: regroup(c, "c", dist=Dist.make("poisson")),
    "unknown_distribution_argument": lambda c: regroup(c, "c", dist=Dist.make("gaussian", sigma=2.0)),
    "bad_distribution_argument": lambda c: regroup(c, "b", dist=Dist.make("categorical", k=0)),
    "distribution_does_not_fit_domain": lambda c: regroup(c, "b", dist=Dist.make("bernoulli"), params="b1.w").replace(
        params={**c.params, "b1.w": Param((2,))}
    ),
    "unknown_parameter": lambda c: regroup(c, "a", params="nope.w"),
    "parameter_shape": lambda c: reparam(c, "s.w", Param((2, 4))),
    "tied_parameter_shape": lambda c: add_groups(
        c,
        SumGroup("s2", 3, ("ab", "ab2"), "dense", "s.w"),
        ProductGroup("top", ("s2", "c"), "outer", 6),
        roots=["r", "top"],
    ),
    "tied_parameter_structure": lambda c: add_groups(
        c,
        SumGroup("t2", 2, ("sc",), "block", "t.w", mask=np.array([[False, True], [True, True]]), block=(1, 2)),
        roots=["r", "t2"],
    ),
    "tied_parameter_kind": lambda c: add_groups(
        c, InputGroup("a2", 0, 2, Dist.make("indicator"), "r.w"), roots=["r", "a2"]
    ),
    "parameter_dtype": lambda c: reparam(c, "a.w", Param.of(np.array([0, 1]))),
    "bad_input_values": lambda c: reparam(c, "b.w", Param.of(np.array([[0.2, 0.3, 0.4], [0.6, 0.2, 0.2]]))),
    "no_children": lambda c: add_groups(c, ProductGroup("none", (), "aligned", 1), roots=["r", "none"]),
    "aligned_units": lambda c: reparam(regroup(c, "b", units=3), "b.w", Param((3, 3))),
    "outer_units": lambda c: reparam(
        regroup(regroup(c, "sc", units=6), "t", mask=np.ones((2, 3), bool)), "t.w", Param((2, 6))
    ),
    "explicit_product_shape": lambda c: regroup(c, "ab2", edges=np.array([[0, 1], [1, 0]])),
    "explicit_product_index": lambda c: regroup(c, "ab2", edges=np.array([[0, 1], [1, 0], [1, 2]])),
    "unknown_product_pattern": lambda c: regroup(c, "ab", pattern="zip"),
    "not_decomposable": lambda c: regroup(
        c, "ab2", children=("a", "b", "a"), edges=np.array([[0, 1, 0], [1, 0, 1], [1, 1, 0]])
    ),
    "block_without_mask": lambda c: regroup(c, "t", mask=None),
    "block_does_not_tile": lambda c: regroup(c, "t", block=(1, 3)),
    "mask_shape": lambda c: regroup(c, "t", mask=np.array([[True, False, True], [True, True, True]])),
    "mask_row_without_edge": lambda c: regroup(c, "t", mask=np.array([[True, False], [False, False]])),
    "explicit_sum_shape": lambda c: regroup(c, "r", edges=np.zeros((0, 2))),
    "explicit_sum_node_index": lambda c: regroup(c, "r", edges=np.array([[0, 0], [1, 1]])),
    "explicit_sum_column_index": lambda c: regroup(c, "r", edges=np.array([[0, 0], [0, 2]])),
    "explicit_sum_duplicate_edge": lambda c: regroup(c, "r", edges=np.array([[0, 1], [0, 1]])),
    "sum_node_without_edge": lambda c: regroup(c, "r", units=2, edges=np.array([[0, 0], [0, 1]])).replace(roots=["r"]),
    "unknown_sum_pattern": lambda c: regroup(c, "s", pattern="sparse"),
    "negative_weight": lambda c: reparam(c, "r.w", Param.of(np.array([-0.4, 1.4]))),
    "not_smooth": lambda c: add_groups(
        c, SumGroup("mix", 1, ("r", "a"), "dense", "mix.w"), params={"mix.w": Param((1, 3))}, roots=["mix"]
    ),
}


def messages() -> dict[str, str]:
    out = {}
    for case, make in CASES.items():
        errs = problems(make(base()))
        assert len(errs) == 1, f"{case}: expected exactly one problem, got {[e.message for e in errs]}"
        out[case] = errs[0].message
    return out


def read_golden() -> dict[str, str]:
    out = {}
    for line in GOLDEN.read_text().splitlines():
        case, _, msg = line.partition(": ")
        out[case] = msg
    return out


def test_base_circuit_is_valid():
    c = verify(base())
    assert parse_ir(print_ir(c)) == c


def test_every_rule_has_a_case():
    assert set(read_golden()) == set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_rule_violation_message(case):
    errs = problems(CASES[case](base()))
    assert [e.message for e in errs] == [read_golden()[case]]
    with pytest.raises(VerifyError) as info:
        verify(CASES[case](base()))
    assert info.value.message == read_golden()[case]


def test_errors_point_at_the_source_line():
    text = print_ir(CASES["not_smooth"](base()))
    err = problems(parse_ir(text, "bad.pcir"))[0]
    assert err.span is not None and err.span.file == "bad.pcir"
    assert text.splitlines()[err.span.line - 1].startswith("%mix = sum(%r, %a)")
    assert err.render().splitlines()[0] == f"bad.pcir:{err.span.line}:1: error: {err.message}"


def test_waivers():
    rough = CASES["not_smooth"](base())
    assert problems(rough, smooth=False) == []
    assert problems(regroup(rough, "mix", attrs=make_attrs(waive="smooth"))) == []
    tangled = CASES["not_decomposable"](base())
    assert problems(tangled, decomposable=False) == []
    assert problems(regroup(tangled, "ab2", attrs=make_attrs(waive="decomposable"))) == []


def test_construction_errors():
    c = base()
    with pytest.raises(VerifyError, match="duplicate group name 'a'"):
        Circuit(c.variables, [*c, c.group("a")], c.params, c.roots)
    with pytest.raises(VerifyError, match="group 'ab' has unknown child 'zz'"):
        regroup(c, "ab", children=("a", "zz"))
    with pytest.raises(VerifyError, match="circuit has a cycle: "):
        regroup(c, "ab", children=("a", "r"))
    with pytest.raises(VerifyError, match="unknown parameter dtype 'f16'"):
        Param((2,), "f16")
    with pytest.raises(VerifyError, match=r"parameter value has shape \(3,\), expected \(2,\)"):
        Param((2,), "f64", np.zeros(3))


if __name__ == "__main__" and "--regen" in sys.argv:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text("".join(f"{k}: {v}\n" for k, v in messages().items()))
    print(f"wrote {GOLDEN}")
