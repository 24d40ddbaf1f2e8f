"""`pcir fmt` (canonical formatting) and the IR -> `.pc` emitter (round trips)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import circuits, random_data

from pcir.frontend import emit_pc, format_pc, load_pc, parse_module, parse_pc, save_pc
from pcir.ir import Circuit, CircuitBuilder, Dist, Domain, Variable, log_likelihood

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.pc"))


# ---- formatter ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_canonically_formatted(path):
    text = path.read_text()
    assert format_pc(text) == text


MESSY = """# head


var x[2]:categorical( 3 )   # vars
A=categorical(x[0],units=4);B = categorical(x[1], units=4) # b
for i in 0..3 {S[i]=1
# inside
}  # after
if a==b { c = 1 }
else if d {
  e = 2
} else {
  # only a comment
}
def f(a,b){
  return a*(b*c)+-1**2 - (2 - 3) - [1,2][0]
}
W = sum(P, units=4, weights=[[0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4]],
  # about the mask
  mask=[[1]])
Y = x[1:] ; Z = x[:2] ; Q = (1..3) ; R = 1..n+1
T = not (a or b) and c
V = [k for k in 0..10 if k % 2 == 0] with bs=2

# end
"""

EXPECTED = """# head

var x[2]: categorical(3)        # vars
A = categorical(x[0], units=4)  # b
B = categorical(x[1], units=4)
for i in 0..3 {
  S[i] = 1
  # inside
}  # after
if a == b {
  c = 1
} else if d {
  e = 2
} else {
  # only a comment
}
def f(a, b) {
  return a * (b * c) + -1 ** 2 - (2 - 3) - [1, 2][0]
}
# about the mask
W = sum(
  P,
  units=4,
  weights=[[0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4]],
  mask=[[1]]
)
Y = x[1:]
Z = x[:2]
Q = 1..3
R = 1 .. n + 1
T = not (a or b) and c
V = [k for k in 0..10 if k % 2 == 0] with bs=2

# end
"""


def test_format_messy_program():
    out = format_pc(MESSY)
    assert out == EXPECTED
    assert format_pc(out) == out
    assert parse_module(out) == parse_module(MESSY)


def test_format_keeps_every_comment():
    out = format_pc(MESSY)
    for line in MESSY.splitlines():
        if "#" in line:
            assert line[line.index("#") :].strip() in out


def test_fmt_cli_check_and_in_place(tmp_path, capsys):
    from pcir.cli import main

    f = tmp_path / "m.pc"
    f.write_text("var x: binary\nA=bernoulli(x,units=2)\nroot sum(A)\n")
    assert main(["fmt", "--check", str(f)]) == 1
    assert "+A = bernoulli(x, units=2)" in capsys.readouterr().out
    assert main(["fmt", "-i", str(f)]) == 0
    assert f.read_text() == "var x: binary\nA = bernoulli(x, units=2)\nroot sum(A)\n"
    assert main(["fmt", "--check", str(f)]) == 0
    assert main(["fmt", str(f)]) == 0 and capsys.readouterr().out == f.read_text()
    bad = tmp_path / "bad.pc"
    bad.write_text("A = (1\n")
    assert main(["fmt", str(bad)]) == 1
    assert "bad.pc:1:5: error: '(' is never closed" in capsys.readouterr().err


# ---- emitter ----------------------------------------------------------------------------------
def canonical(c: Circuit) -> Circuit:
    """Rename variables, groups and parameters by position (emit may rename unrepresentable names)."""
    gmap = {n: f"g{i}" for i, n in enumerate(c.groups)}
    pmap: dict[str, str] = {}
    for g in c:
        pn = getattr(g, "params", None)
        if pn is not None and pn not in pmap:
            pmap[pn] = f"w{len(pmap)}"
    groups = []
    for g in c:
        kw = {"name": gmap[g.name]}
        if g.children:
            kw["children"] = tuple(gmap[ch] for ch in g.children)
        if getattr(g, "params", None) is not None:
            kw["params"] = pmap[g.params]
        groups.append(replace(g, **kw))
    return Circuit(
        [Variable(f"v{i}", v.domain) for i, v in enumerate(c.variables)],
        groups,
        {pmap[k]: p for k, p in c.params.items() if k in pmap},
        [gmap[r] for r in c.roots],
        c.attrs,
    )


def builder_circuit() -> Circuit:
    b = CircuitBuilder()
    x = b.variables(3, Domain.categorical(3))
    r = b.variable(Domain.real(), name="r")
    a = b.input(x[0], 2, Dist.make("categorical", k=3))
    c_ = b.input(x[1], 2, Dist.make("indicator"), params=[0, 2])
    g = b.input(r, 2, Dist.make("gaussian"), params=[[0.0, 1.0], [-1.5, 0.5]])
    t = b.input(x[2], 2, Dist.make("categorical", k=3), tie=a)
    p = b.product([a, c_, g], "aligned")
    q = b.product([a, c_], "outer")
    e = b.product([t, g], edges=[[0, 1], [1, 0]])
    s1 = b.sum([q], 4, mask=[[1, 0], [0, 1]])
    s2 = b.sum([p, e], 2, edges=[[0, 0], [0, 3], [1, 1]], weights=[0.5, 0.5, 1.0])
    s3 = b.sum([p], 2, init="uniform", attrs={"bs": 2, "layer": 3})
    s4 = b.sum([s1], 2, tie=None)
    b.root(s2, s3, s4)
    b.attrs["block_hint"] = 16
    return b.build()


def test_emit_round_trip_is_exact_for_builder_circuits():
    c = builder_circuit()
    text = emit_pc(c)
    assert "var x[3]: categorical(3)" in text and "tie=in0" in text and "with bs=2, layer=3" in text
    assert parse_pc(text) == c


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_emit_round_trip_of_examples(path):
    c = load_pc(path)
    c2 = parse_pc(emit_pc(c))
    assert canonical(c2) == canonical(c)
    x = random_data(c, 5, np.random.default_rng(0))[0]
    np.testing.assert_allclose(log_likelihood(c2, x), log_likelihood(c, x), rtol=1e-12)


def test_emitted_text_is_canonical_and_readable():
    c = load_pc(ROOT / "examples" / "hmm.pc")
    text = emit_pc(c, header="")
    assert format_pc(text) == text
    assert text.startswith("var x[8]: categorical(5)\nparam emission\nparam transition\n")
    assert "Z[2] = E[2] * Z_2_s0" in text


def test_save_pc_puts_large_arrays_in_npz(tmp_path):
    b = CircuitBuilder()
    x = b.variables(2, Domain.binary())
    rng = np.random.default_rng(0)
    a = b.input(x[0], 16, Dist.make("bernoulli"), params=rng.uniform(0.1, 0.9, 16))
    c = b.input(x[1], 16, Dist.make("bernoulli"), params=rng.uniform(0.1, 0.9, 16))
    w = rng.uniform(0.1, 1, (8, 16))
    s = b.sum([b.product([a, c])], 8, weights=w / w.sum(1, keepdims=True))
    b.root(b.sum([s], 1, weights=[[1 / 8] * 8]))
    circ = b.build()
    path = save_pc(circ, tmp_path / "model.pc")
    text = path.read_text()
    assert 'load("model.npz", "s0.w")' in text
    assert (tmp_path / "model.npz").exists()
    assert load_pc(path) == circ


@settings(max_examples=25)
@given(circuits(max_vars=4))
def test_emit_round_trip_of_random_circuits(c):
    c2 = parse_pc(emit_pc(c))
    expected = canonical(c)
    # float32 parameters come back as float64 (the language has one float type)
    expected = expected.replace(
        params={
            k: replace(p, dtype="f64", value=None if p.value is None else p.value.astype(np.float64))
            if p.dtype == "f32"
            else p
            for k, p in expected.params.items()
        }
    )
    assert canonical(c2) == expected


def test_cli_ir_and_check_on_examples(capsys):
    from pcir.cli import main

    mixture = str(ROOT / "examples" / "mixture.pc")
    assert main(["ir", mixture]) == 0
    assert "%P = product(%A, %B) aligned units=4" in capsys.readouterr().out
    assert main(["check", mixture]) == 0
    assert "ok" in capsys.readouterr().out
