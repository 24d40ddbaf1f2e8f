"""The shipped examples parse, verify, and equal the same structure built with the Python builder.

Each builder version below is written independently of the .pc file (same group names, same
creation order, so the seeded initial parameters coincide); the reference log-likelihood of a few
rows must agree, and so must the whole circuits (after naming parameters canonically: the .pc
files give tied parameters names such as ``transition``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pcir.frontend import load_pc
from pcir.ir import Circuit, CircuitBuilder, Dist, Domain, Param, log_likelihood, verify
from pcir.ir.evaluator import enumerate_assignments

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def canonical_params(c: Circuit) -> Circuit:
    """Rename parameters p0, p1, ... in order of first use (tying pattern and values kept)."""
    from dataclasses import replace

    names: dict[str, str] = {}
    for g in c:
        pn = getattr(g, "params", None)
        if pn is not None and pn not in names:
            names[pn] = f"p{len(names)}"
    groups = [replace(g, params=names[g.params]) if getattr(g, "params", None) else g for g in c]
    return c.replace(groups=groups, params={names[k]: v for k, v in c.params.items()})


def rows(c: Circuit, n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, v.domain.k, n) if v.domain.is_discrete else rng.normal(size=n) for v in c.variables]
    return np.stack(cols, axis=1).astype(np.float64)


def check_same(pc: Circuit, built: Circuit) -> None:
    verify(pc)
    verify(built)
    x = rows(pc)
    np.testing.assert_allclose(log_likelihood(pc, x), log_likelihood(built, x), rtol=1e-12, atol=1e-12)
    assert canonical_params(pc) == canonical_params(built)


# ---- builder versions --------------------------------------------------------------------------
def build_mixture() -> Circuit:
    b = CircuitBuilder()
    x = b.variables(2, Domain.categorical(3))
    a = b.input(x[0], 4, Dist.make("categorical", k=3), name="A")
    c = b.input(x[1], 4, Dist.make("categorical", k=3), name="B")
    p = b.product([a, c], name="P")
    s = b.sum([p], 1, weights=[[0.1, 0.2, 0.3, 0.4]], name="S")
    b.root(s)
    return b.build()


def build_hmm(T: int = 8, H: int = 4, V: int = 5) -> Circuit:
    b = CircuitBuilder()
    x = b.variables(T, Domain.categorical(V))
    E = [b.input(x[0], H, Dist.make("categorical", k=V), name="E[0]")]
    E += [b.input(x[t], H, Dist.make("categorical", k=V), name=f"E[{t}]", tie=E[0]) for t in range(1, T)]
    z = E[0]
    first = None
    for t in range(1, T):
        s = b.sum([z], H, name=f"Z[{t}].s0", tie=first)
        first = first or s
        z = b.product([E[t], s], name=f"Z[{t}]")
    b.root(b.sum([z], 1, name="S"))
    return b.build()


def build_hclt(parent: list[int], M: int) -> Circuit:
    b = CircuitBuilder()
    n = len(parent)
    x = b.variables(n, Domain.binary())
    L = [b.input(x[v], M, Dist.make("bernoulli"), name=f"L[{v}]") for v in range(n)]
    Z: dict[int, str] = {}
    for v in reversed(range(n)):
        kids = [c for c in range(n) if parent[c] == v]
        if not kids:
            Z[v] = L[v]
            continue
        msgs = [b.sum([Z[c]], M, name=f"Z[{v}].s{i}") for i, c in enumerate(kids)]
        Z[v] = b.product([L[v], *msgs], name=f"Z[{v}]")
    b.root(b.sum([Z[0]], 1, name="S"))
    return b.build()


def build_pd(H: int = 3, W: int = 3, K: int = 2, V: int = 4) -> Circuit:
    b = CircuitBuilder()
    x = b.variables(H * W, Domain.categorical(V))
    R: dict[tuple[int, int, int, int], str] = {}
    for h in range(1, H + 1):
        for w in range(1, W + 1):
            for r in range(H - h + 1):
                for c in range(W - w + 1):
                    name = f"R[{r}][{c}][{h}][{w}]"
                    if h == 1 and w == 1:
                        R[r, c, h, w] = b.input(x[r * W + c], K, Dist.make("categorical", k=V), name=name)
                        continue
                    parts = [(R[r, c, i, w], R[r + i, c, h - i, w]) for i in range(1, h)]
                    parts += [(R[r, c, h, j], R[r, c + j, h, w - j]) for j in range(1, w)]
                    prods = [b.product(list(p), "outer", name=f"{name}.p{k}") for k, p in enumerate(parts)]
                    R[r, c, h, w] = b.sum(prods, 1 if (h, w) == (H, W) else K, name=name)
    b.root(R[0, 0, H, W])
    return b.build()


def build_ratspn(N: int = 8, D: int = 2, R: int = 3, S: int = 2, I: int = 2) -> Circuit:  # noqa: E741
    b = CircuitBuilder()
    x = b.variables(N, Domain.binary())

    def split(vs: list[int], d: int, name: str) -> str:
        h = len(vs) // 2
        left = region(vs[:h], d - 1, f"{name}.region0")
        right = region(vs[h:], d - 1, f"{name}.region1")
        return b.product([left, right], "outer", name=name)

    def region(vs: list[int], d: int, name: str) -> str:
        if d == 0:
            leaves = [b.input(x[v], I, Dist.make("bernoulli"), name=f"{name}.in{k}") for k, v in enumerate(vs)]
            return b.product(leaves, name=name)
        return b.sum([split(vs, d, f"{name}.split0")], S, name=name)

    tops = [split([int(i) for i in np.random.default_rng(r).permutation(N)], D, f"root.split{r}") for r in range(R)]
    b.root(b.sum(tops, 1, name="root"))
    return b.build()


HEAP16 = [-1] + [(v - 1) // 2 for v in range(1, 16)]

CASES = {
    "mixture": build_mixture,
    "hmm": build_hmm,
    "hclt": lambda: build_hclt([-1, 0, 0, 1, 1, 2, 5, 5], 4),
    "nltcs_hclt": lambda: build_hclt(HEAP16, 16),
    "pd": build_pd,
    "ratspn": build_ratspn,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_matches_builder(name):
    pc = load_pc(EXAMPLES / f"{name}.pc")
    check_same(pc, CASES[name]())


def test_examples_all_covered():
    assert {p.stem for p in EXAMPLES.glob("*.pc")} == set(CASES)


@pytest.mark.parametrize("name", ["mixture", "hclt", "ratspn"])
def test_example_is_normalised(name):
    c = load_pc(EXAMPLES / f"{name}.pc")
    if c.num_vars > 8:
        pytest.skip("too many assignments")
    total = np.exp(log_likelihood(c, enumerate_assignments(c))).sum()
    assert abs(total - 1.0) < 1e-9


def test_hmm_ties_transitions_and_emissions():
    c = load_pc(EXAMPLES / "hmm.pc")
    assert set(c.params) >= {"emission", "transition"}
    assert len(c.users_of_param("transition")) == 7
    assert len(c.users_of_param("emission")) == 8
    assert isinstance(c.params["transition"], Param)


def test_nltcs_example_shape():
    c = load_pc(EXAMPLES / "nltcs_hclt.pc")
    assert [v.name for v in c.variables] == [f"x{i}" for i in range(16)]
    assert all(v.domain == Domain.binary() for v in c.variables)
    assert c.group("L[0]").units == 16
