"""The `.pc` language feature by feature: each program is compared with the builder's circuit."""

from __future__ import annotations

import numpy as np
import pytest

from pcir.frontend import load_pc, parse_pc
from pcir.ir import CircuitBuilder, Dist, Domain, InputGroup, PcSyntaxError, SumGroup, log_likelihood, verify
from pcir.ir import distributions as dists
from pcir.ir.evaluator import enumerate_assignments


def lower(src: str, **kw):
    return parse_pc(src, filename="t.pc", **kw)


def assert_same(pc, built, x=None):
    """Same circuit (names, structure, seeded parameters) and the same log-likelihoods."""
    verify(pc)
    if x is None:
        x = enumerate_assignments(pc)
    np.testing.assert_allclose(log_likelihood(pc, x), log_likelihood(built, x), rtol=1e-12)
    assert pc == built


def test_mixture_with_inline_weights_and_params():
    pc = lower("""
var x[2]: binary
A = bernoulli(x[0], units=2, params=[0.1, 0.8])
B = bernoulli(x[1], 2, params=[0.5, 0.3])
S = sum(A * B, weights=[[0.25, 0.75]])
""")
    b = CircuitBuilder()
    x = b.variables(2, Domain.binary())
    a = b.input(x[0], 2, Dist.make("bernoulli"), params=[0.1, 0.8], name="A")
    c = b.input(x[1], 2, Dist.make("bernoulli"), params=[0.5, 0.3], name="B")
    p = b.product([a, c], name="S.p0")
    b.root(b.sum([p], 1, weights=[[0.25, 0.75]], name="S"))
    assert_same(pc, b.build())
    assert abs(np.exp(log_likelihood(pc, enumerate_assignments(pc))).sum() - 1) < 1e-12


def test_variables_domains_and_names():
    pc = lower("""
var a: binary
var c[3]: categorical(4)
var r: real
var img[2, 3]: categorical(256)
S = sum(categorical(c[2], units=2) * gaussian(r, units=2) * bernoulli(a, units=2) * categorical(img[1, 2], units=2))
""")
    names = [v.name for v in pc.variables]
    assert names == ["a", "c0", "c1", "c2", "r"] + [f"img{i}" for i in range(6)]
    assert pc.variables[1].domain == Domain.categorical(4)
    assert pc.variables[4].domain == Domain.real()
    var_of = {g.name: pc.variables[g.var].name for g in pc if isinstance(g, InputGroup)}
    assert sorted(var_of.values()) == ["a", "c2", "img5", "r"]
    verify(pc)


@pytest.mark.parametrize("kind", dists.names())
def test_every_registered_distribution_is_usable(kind):
    """No grammar change is needed for a family: its name is looked up in the registry."""
    dt = dists.get(kind)
    for decl, dom in (("binary", Domain.binary()), ("categorical(4)", Domain.categorical(4)), ("real", Domain.real())):  # noqa: B007
        args = {}
        if hasattr(dt, "default_args"):
            args = dict(dt.default_args(dom))
        elif "k" in dt.arg_names and dom.is_discrete:
            args = {"k": dom.k}
        for a in dt.arg_names:
            args.setdefault(a, {"n": 3, "value": 1}.get(a, 1))
        d = Dist.make(kind, **{k: v for k, v in args.items() if k in dt.arg_names})
        try:
            if dt.check_dist(d) is None and dt.accepts(d, dom):
                break
        except Exception:  # noqa: BLE001 - a probe with unsuitable defaults just tries the next domain
            continue
    else:
        pytest.skip(f"no probe domain for {kind}")
    extra = "".join(f", {k}={v}" for k, v in d.args if not (k == "k" and dom.is_discrete and v == dom.k))
    pc = lower(f"var v: {decl}\nS = sum({kind}(v, units=2{extra}))\n")
    verify(pc)
    g = pc.group("S.in0")
    assert isinstance(g, InputGroup) and g.dist == d


def test_loops_arrays_and_anonymous_names():
    pc = lower("""
N = 3
var x[N]: binary
for i in 0..N {
  L[i] = bernoulli(x[i], units=2)
}
P = prod([L[i] for i in 0..N])
root sum(P, sum(P, units=2), units=1)
""")
    b = CircuitBuilder()
    x = b.variables(3, Domain.binary())
    L = [b.input(x[i], 2, Dist.make("bernoulli"), name=f"L[{i}]") for i in range(3)]
    p = b.product(L, name="P")
    s = b.sum([p], 2, name="root.s0")
    b.root(b.sum([p, s], 1, name="root"))
    assert_same(pc, b.build())


def test_two_dimensional_arrays_views_and_len():
    pc = lower("""
var x[4]: binary
for i in 0..2 {
  for j in 0..2 {
    L[i, j] = bernoulli(x[2 * i + j], units=2)
  }
}
row = L[1]
n = len(row)
P = prod(L[0][0], L[0, 1], row[0], row[n - 1])
root sum(P)
""")
    assert [c for c in pc.group("P").children] == ["L[0][0]", "L[0][1]", "L[1][0]", "L[1][1]"]
    verify(pc)


def test_plain_names_in_loops_get_loop_values():
    pc = lower("""
var x[2]: binary
for i in 0..2 {
  A = bernoulli(x[i], units=2)
  S[i] = sum(A)
}
root sum(S[0] * S[1])
""")
    assert {"A.0", "A.1", "S[0]", "S[1]"} <= set(pc.groups)
    verify(pc)


def test_templates_keyword_arguments_recursion_and_conditionals():
    pc = lower("""
N = 4
var x[N]: binary
def tree(vs, k) {
  if len(vs) == 1 {
    return bernoulli(x[vs[0]], units=k)
  }
  h = len(vs) // 2
  return sum(tree(vs[:h], k) * tree(vs[h:], k), units=k)
}
T = tree(0..N, k=2)
root sum(T)
""")
    b = CircuitBuilder()
    x = b.variables(4, Domain.binary())

    def tree(vs, name):
        if len(vs) == 1:
            return b.input(x[vs[0]], 2, Dist.make("bernoulli"), name=name)
        h = len(vs) // 2
        left = tree(vs[:h], f"{name}.tree0")
        right = tree(vs[h:], f"{name}.tree1")
        p = b.product([left, right], name=f"{name}.p0")
        return b.sum([p], 2, name=name)

    t = tree(list(range(4)), "T")
    b.root(b.sum([t], 1, name="root"))
    assert_same(pc, b.build())


def test_expressions_and_builtins():
    pc = lower("""
a = 7 // 2 + 2 ** 3 - 10 % 4
b = -a if a > 5 and not false else a
c = [v * 2 for v in reversed(1..4) if v != 2]
d = min(c) + max(3, 9) + abs(-2) + int(2.9) + len(range(1, 10, 3))
e = permutation(5, seed=1)
f = children([-1, 0, 0, 1], 0)
g = [1, 2] + [3]
ok = 3 in g
var x[d]: binary
root sum(bernoulli(x[0], units=2))
""")
    # a = 3 + 8 - 2 = 9; b = -9; c = [6, 2]; d = 2 + 9 + 2 + 2 + 3 = 18
    assert pc.num_vars == 18


def test_block_sparse_sum_inferred_and_explicit_block():
    pc = lower("""
var x[2]: binary
A = bernoulli(x[0], units=4)
B = bernoulli(x[1], units=4)
P = A * B
S = sum(P, units=4, mask=[[1, 0], [0, 1]])
T = sum(P, units=4, mask=[[1, 1, 0, 0], [0, 0, 1, 1]], block=[2, 1])
root sum(S, T, units=1)
""")
    s, t = pc.group("S"), pc.group("T")
    assert isinstance(s, SumGroup) and s.pattern == "block" and s.block == (2, 2)
    assert isinstance(t, SumGroup) and t.block == (2, 1)
    verify(pc)
    assert abs(np.exp(log_likelihood(pc, enumerate_assignments(pc))).sum() - 1) < 1e-9


def test_explicit_edges_for_sums_and_products():
    pc = lower("""
var x[2]: binary
A = bernoulli(x[0], units=2)
B = bernoulli(x[1], units=2)
P = prod(A, B, edges=[[0, 1], [1, 0], [1, 1]])
S = sum(P, units=2, edges=[[0, 0], [0, 2], [1, 1]], weights=[0.5, 0.5, 1.0])
root sum(S)
""")
    b = CircuitBuilder()
    x = b.variables(2, Domain.binary())
    a = b.input(x[0], 2, Dist.make("bernoulli"), name="A")
    c = b.input(x[1], 2, Dist.make("bernoulli"), name="B")
    p = b.product([a, c], edges=[[0, 1], [1, 0], [1, 1]], name="P")
    s = b.sum([p], 2, edges=[[0, 0], [0, 2], [1, 1]], weights=[0.5, 0.5, 1.0], name="S")
    b.root(b.sum([s], 1, name="root"))
    assert_same(pc, b.build())


def test_outer_product_and_tying():
    pc = lower("""
var x[4]: binary
A = bernoulli(x[0], units=2)
B = bernoulli(x[1], units=2, tie=A)
C = bernoulli(x[2], units=2)
D = bernoulli(x[3], units=2)
S = sum(outer(A, B), units=2)
T = sum(outer(C, D), units=2, tie=S)
root sum(S * T)
""")
    assert pc.group("A").params == pc.group("B").params
    assert pc.group("S").params == pc.group("T").params
    assert pc.group("S.p0").units == 4
    verify(pc)


def test_declared_parameters_with_values_and_seeds():
    pc = lower("""
var x[2]: binary
param p = [0.2, 0.9]
A = bernoulli(x[0], units=2, params=p)
B = bernoulli(x[1], units=2, params=p)
S = sum(A * B, init="uniform", seed=42)
""")
    assert pc.group("A").params == "p" == pc.group("B").params
    np.testing.assert_array_equal(pc.params["p"].value, [0.2, 0.9])
    w = pc.params[pc.group("S").params]
    assert w.value is None and w.init == "uniform" and w.seed == 42


def test_group_attributes_and_block_hint():
    pc = lower("""
attr block_hint = 32
attr note = "hello"
var x[2]: binary
A = bernoulli(x[0], units=2) with bs=2
B = bernoulli(x[0], units=2)
P = A * B with waive="decomposable", tag=[1, 2]
root sum(P)
""")
    assert pc.attr("block_hint") == 32 and pc.attr("note") == "hello"
    assert pc.group("A").attr("bs") == 2
    assert pc.group("P").attr("tag") == (1, 2)
    verify(pc)  # decomposability waived on P


def test_spans_point_at_the_source():
    pc = lower("var x: binary\n\nA = bernoulli(x, units=2)\nroot sum(A)\n")
    sp = pc.group("A").span
    assert (sp.file, sp.line, sp.col) == ("t.pc", 3, 5)
    assert sp.source_line == "A = bernoulli(x, units=2)"
    assert pc.group("root").span.line == 4


def test_several_roots_and_default_root():
    pc = lower("var x: binary\nA = bernoulli(x, units=2)\nroot sum(A), sum(A, units=1)\n")
    assert pc.roots == ("root", "root~2")
    pc2 = lower("var x: binary\nA = bernoulli(x, units=2)\nS = sum(A)\n")
    assert pc2.roots == ("S",)


def test_newlines_inside_brackets_semicolons_and_continuations():
    pc = lower("""
var x[2]: binary; A = bernoulli(x[0],
    units=2)
W = [[0.5,
      0.5]]
if true {
  B = 1
}
else {
  B = 2
}
root sum(A,
         weights=W)
""")
    verify(pc)


def test_include_import_and_weight_files(tmp_path):
    import safetensors.numpy

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "templates.pc").write_text("K = 2\ndef mix(a, b) {\n  return sum(a * b, units=K)\n}\n")
    (lib / "vars.pc").write_text('var x[2]: binary\nA = bernoulli(x[0], units=2, params=load("p.npy"))\n')
    np.save(lib / "p.npy", np.array([0.3, 0.6]))
    np.savez(tmp_path / "w.npz", S=np.array([[0.1, 0.9]]), other=np.zeros(2))
    safetensors.numpy.save_file({"B": np.array([0.2, 0.7])}, str(tmp_path / "b.safetensors"))
    main = tmp_path / "main.pc"
    main.write_text("""
include "lib/vars.pc"
import "lib/templates.pc"
B = bernoulli(x[1], units=K, params=load("b.safetensors", "B"))
M = mix(A, B)
root sum(M, weights=load("w.npz", "S"))
""")
    pc = load_pc(main)
    verify(pc)
    np.testing.assert_array_equal(pc.params["A.w"].value, [0.3, 0.6])
    np.testing.assert_array_equal(pc.params["B.w"].value, [0.2, 0.7])
    np.testing.assert_array_equal(pc.params["root.w"].value, [[0.1, 0.9]])
    assert pc.group("A").span.file == str(tmp_path / "lib" / "vars.pc")
    # the same program given as text with base_dir finds the same files
    assert parse_pc(main.read_text(), base_dir=tmp_path) == pc


def test_import_brings_only_definitions(tmp_path):
    (tmp_path / "lib.pc").write_text("N = 3\ndef leaf(v) {\n  return bernoulli(v, units=N)\n}\n")
    pc = parse_pc('import "lib.pc"\nimport "lib.pc"\nvar x: binary\nroot sum(leaf(x))\n', base_dir=tmp_path)
    assert pc.group("root.leaf0").units == 3


def test_errors_are_pc_syntax_errors_with_spans():
    with pytest.raises(PcSyntaxError) as e:
        lower("var x: binary\nA = bernoulli(x, units=2)\nB = A * C\n")
    assert e.value.span.line == 3 and e.value.span.col == 9


def test_step_budget_stops_runaway_loops():
    from pcir.frontend.lower import lower_module
    from pcir.frontend.parser import parse_module

    m = parse_module("for i in 0..100000000 {\n  a = i\n}\n")
    with pytest.raises(PcSyntaxError, match="runs too long"):
        lower_module(m, max_steps=10_000)
