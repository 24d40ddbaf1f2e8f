"""The `.pcir` text form: printer and parser are exact inverses; dumps and errors are golden.

Golden files live in tests/golden/ir/: ``<example>.pcir`` (print_ir of the hand-built examples
below) and ``parse_errors.txt`` (the rendered diagnostic of each malformed text in
``PARSE_ERRORS``). After an intended change of the format or of a message, regenerate them with::

    PYTHONPATH=src python tests/test_ir_text.py --regen

and review the diff.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import at_least, circuits

from pcir.ir import (
    Circuit,
    CircuitBuilder,
    Dist,
    Domain,
    InputGroup,
    IRParseError,
    Param,
    PcirError,
    Variable,
    parse_ir,
    print_ir,
    verify,
)
from pcir.ir.printer import INLINE_LIMIT

GOLDEN = Path(__file__).parent / "golden" / "ir"


# ---- hand-built examples --------------------------------------------------------------------
def mixture() -> Circuit:
    """Two categorical variables, a 3-component mixture, concrete parameters."""
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.categorical(3))
    a = b.input(x0, 3, Dist.make("categorical", k=3), params=[[0.5, 0.25, 0.25], [0.125, 0.75, 0.125], [0.0, 0.5, 0.5]])
    c = b.input(x1, 3, Dist.make("categorical", k=3), params=[[0.25, 0.25, 0.5], [1.0, 0.0, 0.0], [0.375, 0.375, 0.25]])
    b.root(b.sum([b.product([a, c])], 1, weights=[[0.5, 0.25, 0.25]]))
    return b.build()


def patterns() -> Circuit:
    """Every edge pattern, tying, lazy parameters, attributes, quoted names and two roots."""
    b = CircuitBuilder(seed=3)
    x0 = b.variable(Domain.binary(), "x0")
    x1 = b.variable(Domain.categorical(3), "pixel (1)")
    x2 = b.variable(Domain.real(), "x2")
    ia = b.input(x0, 2, Dist.make("bernoulli"), params=[0.25, 0.75], attrs={"bs": 2, "layer": 0})
    ib = b.input(x1, 2, Dist.make("indicator"), params=[0, 2], name="lit b")
    ic = b.input(x2, 2, Dist.make("gaussian", min_std=0.01), params=[[0.0, 1.0], [-1.5, 0.5]])
    p_al = b.product([ia, ib], "aligned", attrs={"fuse": "fused", "slot": 1})
    p_ex = b.product([ia, ib], edges=[[0, 1], [1, 0], [1, 1]])
    s_ab = b.sum([p_al, p_ex], 2, edges=[[0, 0], [0, 2], [1, 1], [1, 3], [1, 4]], weights=[0.5, 0.5, 0.25, 0.25, 0.5])
    s_tied = b.sum(
        [p_al, p_ex], 2, edges=[[0, 0], [0, 2], [1, 1], [1, 3], [1, 4]], tie=s_ab, attrs={"note": 'a "tied" copy'}
    )
    p_out = b.product([s_ab, ic], "outer")
    p_out2 = b.product([s_tied, ic], "outer")
    s_blk = b.sum([p_out, p_out2], 2, mask=[[True, False], [True, True]], block=(1, 4), init="uniform")
    s_dense = b.sum([p_out], 1, attrs={"layer": 3, "ratio": 0.5, "shape": (4, 4)})
    b.root(b.sum([s_blk], 1, weights=[[0.25, 0.75]]), s_dense)
    b.attrs["pipeline"] = "collapse-nodes"
    return b.build()


def large() -> Circuit:
    """Arrays larger than the inline limit, written as b64z in the exact dump."""
    b = CircuitBuilder()
    xs = b.variables(2, Domain.categorical(8))
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.1, 1.0, size=(16, 8))
    a = b.input(xs[0], 16, Dist.make("categorical", k=8), params=probs / probs.sum(axis=1, keepdims=True))
    c = b.input(xs[1], 16, Dist.make("categorical", k=8))
    p = b.product([a, c], edges=np.stack([np.arange(40) % 16, (np.arange(40) * 7) % 16], axis=1))
    mask = rng.random((40, 10)) < 0.5
    mask[:, 0] = True
    s = b.sum([p], 40, mask=mask, block=(1, 4))
    b.root(b.sum([s], 1))
    return b.build()


EXAMPLES = {"mixture": mixture, "patterns": patterns}
SUMMARIZED = {"large_summarized": large}


def golden_text(name: str) -> str:
    return (GOLDEN / f"{name}.pcir").read_text()


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_golden_dump(name):
    c = verify(EXAMPLES[name]())
    assert print_ir(c) == golden_text(name)
    assert parse_ir(golden_text(name), f"{name}.pcir") == c


def test_golden_summarized_dump():
    c = large()
    text = print_ir(c, summarize=True)
    assert text == golden_text("large_summarized")
    assert "sha1=" in text and "b64z" not in text
    with pytest.raises(IRParseError, match="summarized array, which is not parseable") as info:
        parse_ir(text)
    assert info.value.hint and "summarize" in info.value.hint


def test_large_arrays_round_trip_exactly():
    c = verify(large()).materialized()
    text = print_ir(c)
    assert text.count('b64z"') >= 3  # the categorical params, the product edges, the mask
    assert parse_ir(text) == c


def test_extreme_values_round_trip_exactly():
    values = np.array([0.0, -0.0, 5e-324, 1e-300, 1e300, np.inf, -np.inf, np.nan, 0.1, 1 / 3])
    big = np.linspace(-1, 1, INLINE_LIMIT + 1)
    params = {
        "f64": Param.of(values),
        "f32": Param.of(np.array([0.0, -0.0, 1e-45, 3e38, np.inf, -np.inf, np.nan, 0.1], dtype=np.float32)),
        "i64": Param.of(np.array([-(2**63), 2**63 - 1, 0])),
        "big32": Param.of(big.astype(np.float32)),
        "scalar": Param((), "f64", np.array(2.5)),
        "empty": Param((0, 3), "f64", np.zeros((0, 3))),
    }
    c = Circuit(
        [Variable("x", Domain.real())],
        [InputGroup("g", 0, 1, Dist.make("gaussian"), "lazy")],
        {**params, "lazy": Param((1, 2))},
        ["g"],
    )
    text = print_ir(c)
    back = parse_ir(text)
    assert back == c
    assert print_ir(back) == text
    for k in params:
        np.testing.assert_array_equal(back.params[k].value, params[k].value)
        assert back.params[k].value.dtype == params[k].value.dtype


@at_least(200)
@given(circuits(f32=True))
def test_round_trip_generated(c):
    text = print_ir(c)
    back = parse_ir(text)
    assert back == c
    assert print_ir(back) == text
    assert print_ir(c) == text  # deterministic


@at_least(20)
@given(circuits(max_units=8, max_vars=4, f32=True))
def test_round_trip_generated_after_materialising(c):
    m = c.materialized()
    assert parse_ir(print_ir(m)) == m


def test_parsed_groups_carry_their_source_lines():
    text = golden_text("patterns")
    c = parse_ir(text, "patterns.pcir")
    lines = text.splitlines()
    for g in c:
        assert g.span is not None and g.span.file == "patterns.pcir"
        assert lines[g.span.line - 1] == g.span.source_line
        assert g.span.source_line.startswith("%")


def test_lenient_whitespace_and_comments():
    text = golden_text("mixture")
    lines = text.splitlines()
    noisy = ["# a comment before the header", ""] + [lines[0]] + ["", "   # indented comment"]
    for ln in lines[1:]:
        noisy.append("  " + ln.replace("=", " = ").replace(",", " , ").replace("(", " ( ") + "   ")
    assert parse_ir("\r\n".join(noisy)) == mixture()
    assert parse_ir("\ufeff" + text) == mixture()


def test_load_pcir_file(tmp_path):
    from pcir.api import load

    p = tmp_path / "m.pcir"
    p.write_text(print_ir(mixture()))
    assert load(p) == mixture()
    bad = tmp_path / "bad.pcir"
    bad.write_text(print_ir(mixture()).replace("units=1", "units=one"))
    with pytest.raises(IRParseError) as info:
        load(bad)
    assert info.value.span.file == str(bad)


# ---- malformed text: golden diagnostics -----------------------------------------------------
def _mix(old: str, new: str) -> str:
    text = print_ir(mixture())
    assert old in text, old
    return text.replace(old, new, 1)


def _pat(old: str, new: str) -> str:
    text = print_ir(patterns())
    assert old in text, old
    return text.replace(old, new, 1)


PARSE_ERRORS: dict[str, str] = {
    "empty": "",
    "no_header": "var x : binary\n",
    "bad_version": "pcir 2\n",
    "second_header": _mix("var x0", "pcir 1\nvar x0"),
    "unknown_keyword": _mix("var x0", "variable x0"),
    "unknown_domain": _mix("x0 : categorical(3)", "x0 : categorial(3)"),
    "duplicate_variable": _mix("var x1", "var x0"),
    "unknown_dtype": _mix("f64[3,3]", "f16[3,3]"),
    "shape_mismatch": _mix("f64[1,3]", "f64[1,4]"),
    "ragged_array": _mix("[[0.5, 0.25, 0.25]]", "[[0.5, 0.25], [0.25]]"),
    "int_param_float_value": _pat("i64[2] = [0, 2]", "i64[2] = [0, 2.5]"),
    "bool_in_float_array": _mix("[[0.5, 0.25, 0.25]]", "[[true, 0.25, 0.25]]"),
    "unterminated_list": _mix("[[0.5, 0.25, 0.25]]", "[[0.5, 0.25, 0.25]"),
    "unknown_init": _pat("init(uniform", "init(zeros"),
    "bad_b64z": _mix("[[0.5, 0.25, 0.25]]", 'b64z"eJzLSM3JyVcozy/KSQEAGgQEXQ=="'),
    "b64z_wrong_size": _mix("[[0.5, 0.25, 0.25]]", 'b64z"eJxjYGBgAAAABAAB"'),
    "summarized": _mix("[[0.5, 0.25, 0.25]]", "<f64[1,3] sha1=0123456789ab>"),
    "unknown_variable": _mix("input x1", "input x7"),
    "unknown_distribution": _mix("dist=categorical(k=3) params=in1.w", "dist=categorial(k=3) params=in1.w"),
    "unknown_parameter": _mix("params=in1.w", "params=in2.w"),
    "unknown_child": _mix("product(%in0, %in1)", "product(%in0, %in2)"),
    "forward_reference": _mix("%p0 = product(%in0, %in1)", "%p0 = product(%in0, %s0)"),
    "duplicate_group": _mix("%in1 = input", "%in0 = input"),
    "unknown_group_kind": _mix("%p0 = product", "%p0 = prod"),
    "unknown_product_pattern": _mix(") aligned", ") elementwise"),
    "unknown_sum_pattern": _mix("units=1 dense", "units=1 full"),
    "missing_units": _mix("units=1 dense", "dense"),
    "float_units": _mix("units=1 dense", "units=1.5 dense"),
    "explicit_product_shape": _pat("edges=[[0, 1], [1, 0], [1, 1]]", "edges=[[0, 1], [1, 0]]"),
    "explicit_sum_shape": _pat(
        "edges=[[0, 0], [0, 2], [1, 1], [1, 3], [1, 4]] params=s0.w", "edges=[[0, 0, 1]] params=s0.w"
    ),
    "mask_not_bool": _pat("mask=[[true, false], [true, true]]", "mask=[[1, 0], [1, 1]]"),
    "mask_shape": _pat("mask=[[true, false], [true, true]]", "mask=[[true, false, true], [true, true, true]]"),
    "block_does_not_tile": _pat("block=(1, 4)", "block=(1, 3)"),
    "unterminated_string": _pat('var "pixel (1)"', 'var "pixel (1)'),
    "bad_escape": _pat('var "pixel (1)"', 'var "pixel \\q"'),
    "unclosed_attrs": _pat('{fuse="fused", slot=1}', '{fuse="fused", slot=1'),
    "duplicate_attr": _pat('{fuse="fused", slot=1}', '{fuse="fused", fuse=1}'),
    "trailing_garbage": _mix("root %s0", "root %s0 extra"),
    "huge_integer": _mix("units=1 dense", "units=" + "9" * 50 + " dense"),
    "out_of_range_var_index": _mix("input x1", "input #5"),
}


def rendered_errors() -> str:
    out = []
    for case, text in PARSE_ERRORS.items():
        try:
            parse_ir(text, "t.pcir")
        except IRParseError as e:
            out.append(f"=== {case}\n{e.render()}\n")
        else:
            raise AssertionError(f"{case}: parsed without error")
    return "".join(out)


def test_parse_error_messages_golden():
    assert rendered_errors() == (GOLDEN / "parse_errors.txt").read_text()


@pytest.mark.parametrize("case", list(PARSE_ERRORS))
def test_parse_errors_are_located(case):
    with pytest.raises(IRParseError) as info:
        parse_ir(PARSE_ERRORS[case], "t.pcir")
    span = info.value.span
    assert span is not None and span.file == "t.pcir" and span.line >= 1 and span.col >= 1
    if PARSE_ERRORS[case]:
        assert span.source_line == PARSE_ERRORS[case].split("\n")[span.line - 1]


# ---- garbage never escapes as anything but PcirError ---------------------------------------
PCIR_ALPHABET = st.sampled_from(
    list('%=[](){},:"#<>\\ \n\t0123456789.-+eE_abcdefgilmnoprstuwxyzT')
    + ["pcir 1\n", "b64z", "inf", "nan", "units=", "%s0"]
)


def _parse_and_verify(text: str) -> None:
    try:
        verify(parse_ir(text))
    except PcirError as e:
        e.render()


@at_least(200)
@given(st.text(max_size=200))
def test_random_text_raises_only_pcir_errors(text):
    _parse_and_verify(text)
    _parse_and_verify("pcir 1\n" + text)


@at_least(200)
@given(st.lists(PCIR_ALPHABET, max_size=80).map("".join))
def test_pcir_like_garbage_raises_only_pcir_errors(text):
    _parse_and_verify("pcir 1\n" + text)


@at_least(150)
@given(circuits(max_vars=3, f32=True), st.data())
def test_mutated_dumps_raise_only_pcir_errors(c, data):
    text = print_ir(c)
    for _ in range(5):
        i = data.draw(st.integers(0, len(text) - 1))
        op = data.draw(st.sampled_from(["replace", "delete", "insert", "swap_lines", "drop_line"]))
        if op in ("replace", "insert"):
            ch = data.draw(PCIR_ALPHABET)
            mutated = text[:i] + ch + text[i + (op == "replace") :]
        elif op == "delete":
            mutated = text[:i] + text[i + 1 :]
        else:
            lines = text.split("\n")
            j = data.draw(st.integers(0, len(lines) - 1))
            k = data.draw(st.integers(0, len(lines) - 1))
            if op == "drop_line":
                del lines[j]
            else:
                lines[j], lines[k] = lines[k], lines[j]
            mutated = "\n".join(lines)
        _parse_and_verify(mutated)


def test_non_string_input():
    with pytest.raises(IRParseError, match="expected .pcir text"):
        parse_ir(b"pcir 1\n")  # type: ignore[arg-type]


if __name__ == "__main__" and "--regen" in sys.argv:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, make in EXAMPLES.items():
        (GOLDEN / f"{name}.pcir").write_text(print_ir(verify(make())))
    for name, make in SUMMARIZED.items():
        (GOLDEN / f"{name}.pcir").write_text(print_ir(make(), summarize=True))
    (GOLDEN / "parse_errors.txt").write_text(rendered_errors())
    print(f"wrote goldens under {GOLDEN}")
