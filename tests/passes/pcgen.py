"""Random small circuits that exercise the passes, and structure-shaped circuits for statistics.

``random_circuit(seed)`` builds a smooth, decomposable, normalised circuit with the shapes the
passes rewrite: sums of sums, products of products, single-child products (identity and
gathers), identity sums, duplicate groups, duplicate sum children, explicit and block sums with
permuted block structure, tied parameters, lazy parameters. ``hclt``, ``pd``,
``rat_spn`` and ``hmm`` build circuits shaped like those structures with :class:`CircuitBuilder`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from pcir.ir import Circuit, CircuitBuilder, Dist, Domain, verify


def _normalise_rows(w: np.ndarray) -> np.ndarray:
    return w / w.sum(axis=-1, keepdims=True)


class _Gen:
    def __init__(self, seed: int, max_vars: int = 4, max_units: int = 4, lazy: bool = True):
        self.rng = np.random.default_rng(seed)
        self.b = CircuitBuilder(seed=seed % 1000)
        self.max_units = max_units
        self.lazy = lazy
        n = int(self.rng.integers(1, max_vars + 1))
        self.vars = []
        self.ks: dict[int, int] = {}
        for _ in range(n):
            k = int(self.rng.choice([2, 3]))
            v = self.b.variable(Domain.categorical(k))
            self.vars.append(v)
            self.ks[v] = k
        self.cache: dict[frozenset, list[str]] = {}
        self.sums_by_key: dict[tuple, str] = {}

    def coin(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)

    def units(self) -> int:
        return int(self.rng.integers(1, self.max_units + 1))

    def leaf(self, v: int) -> str:
        k = self.ks[v]
        u = self.units()
        kind = self.rng.choice(["categorical", "bernoulli", "indicator"] if k == 2 else ["categorical", "indicator"])
        if kind == "categorical":
            params = None if self.lazy and self.coin() else _normalise_rows(self.rng.uniform(0.1, 1, (u, k)))
            return self.b.input(v, u, Dist.make("categorical", k=k), params)
        if kind == "bernoulli":
            params = None if self.lazy and self.coin() else self.rng.uniform(0.1, 0.9, u)
            return self.b.input(v, u, Dist.make("bernoulli"), params)
        return self.b.input(v, k, Dist.make("indicator"), np.arange(k))

    def weights(self, units: int, k: int):
        if self.lazy and self.coin(0.3):
            return None
        return _normalise_rows(self.rng.uniform(0.05, 1, (units, k)))

    def sum_over(self, children: list[str], units: int | None = None) -> str:
        units = units or self.units()
        k = sum(self.b.units(c) for c in children)
        key = (tuple(children), units)
        if key in self.sums_by_key and self.coin(0.2):
            return self.b.sum(children, units, tie=self.sums_by_key[key])
        r = self.rng.random()
        if r < 0.5:
            name = self.b.sum(children, units, self.weights(units, k))
        elif r < 0.8:
            # explicit: every node gets at least one edge
            m = self.rng.random((units, k)) < 0.5
            m[np.arange(units), self.rng.integers(0, k, units)] = True
            rows, cols = np.nonzero(m)
            edges = np.stack([rows, cols], axis=1)
            w = self.rng.uniform(0.05, 1, len(edges))
            w = w / np.bincount(rows, weights=w)[rows]
            name = self.b.sum(children, units, None if self.lazy and self.coin(0.3) else w, edges=edges)
        else:
            bm = int(self.rng.choice([d for d in range(1, units + 1) if units % d == 0]))
            bk = int(self.rng.choice([d for d in range(1, k + 1) if k % d == 0]))
            mask = self.rng.random((units // bm, k // bk)) < 0.6
            mask[np.arange(units // bm), self.rng.integers(0, k // bk, units // bm)] = True
            dense = np.kron(mask, np.ones((bm, bk)))
            w = _normalise_rows(self.rng.uniform(0.05, 1, (units, k)) * dense)
            name = self.b.sum(children, units, None if self.lazy and self.coin(0.3) else w, mask=mask, block=(bm, bk))
        self.sums_by_key.setdefault(key, name)
        return name

    def product_of(self, parts: list[str]) -> str:
        us = [self.b.units(c) for c in parts]
        r = self.rng.random()
        if len(set(us)) == 1 and r < 0.5:
            return self.b.product(parts, "aligned")
        if int(np.prod(us)) <= 16 and r < 0.8:
            return self.b.product(parts, "outer")
        n = self.units()
        edges = np.stack([self.rng.integers(0, u, n) for u in us], axis=1)
        return self.b.product(parts, edges=edges)

    def region(self, scope: tuple[int, ...], depth: int = 0) -> str:
        key = frozenset(scope)
        if key in self.cache and self.coin(0.4):
            return str(self.rng.choice(self.cache[key]))
        if len(scope) == 1:
            g = self.leaf(scope[0])
            if self.coin(0.5):
                g = self.sum_over([g] + ([self.leaf(scope[0])] if self.coin(0.3) else []))
        else:
            n_prod = int(self.rng.integers(1, 3))
            prods = []
            for _ in range(n_prod):
                perm = list(self.rng.permutation(scope))
                cut = int(self.rng.integers(1, len(perm)))
                left, right = tuple(sorted(perm[:cut])), tuple(sorted(perm[cut:]))
                if len(right) >= 2 and self.coin(0.3):
                    # product of products: split the right part again without a sum in between
                    rp = list(right)
                    c2 = int(self.rng.integers(1, len(rp)))
                    inner = self.product_of(
                        [self.region(tuple(rp[:c2]), depth + 2), self.region(tuple(rp[c2:]), depth + 2)]
                    )
                    parts = [self.region(left, depth + 1), inner]
                else:
                    parts = [self.region(left, depth + 1), self.region(right, depth + 1)]
                prods.append(self.product_of(parts))
            g = self.sum_over(prods)
            if self.coin(0.3):  # sum of a sum
                g = self.sum_over([g])
        g = self.decorate(g)
        self.cache.setdefault(key, []).append(g)
        return g

    def decorate(self, g: str) -> str:
        """Sometimes wrap a group in identities, gathers or duplicates (all the same function)."""
        r = self.rng.random()
        u = self.b.units(g)
        if r < 0.1:
            return self.b.product([g])  # identity product
        if r < 0.2:
            return self.b.product([g], edges=self.rng.integers(0, u, (self.units(), 1)))  # gather
        if r < 0.27:
            return self.b.sum([g], u, np.ones(u), edges=np.stack([np.arange(u)] * 2, axis=1))  # identity sum
        if r < 0.35 and isinstance(self.b.group(g).children, tuple) and self.b.group(g).kind == "product":
            gg = self.b.group(g)
            return self.b.add_group(gg.renamed(g + "_dup"))  # an exact duplicate (hash-consing)
        if r < 0.4 and self.b.group(g).kind != "input":
            return self.sum_over([g, g])  # a sum that lists a child twice
        return g


def random_circuit(seed: int, max_vars: int = 4, max_units: int = 4, lazy: bool = True) -> Circuit:
    gen = _Gen(seed, max_vars, max_units, lazy)
    scope = tuple(gen.vars)
    root = gen.region(scope)
    if gen.b.units(root) != 1 and gen.coin(0.7):
        root = gen.sum_over([root], units=1)
    gen.b.root(root)
    return verify(gen.b.build())


@st.composite
def circuits(draw, max_vars: int = 4, max_units: int = 4, lazy: bool = True):
    """A random circuit from :func:`random_circuit` (shrinks by seed)."""
    return random_circuit(draw(st.integers(0, 2**31 - 1)), max_vars, max_units, lazy)


# ---- structure-shaped circuits ---------------------------------------------------------------


def _chain_tree(n: int, rng: np.random.Generator) -> list[int]:
    """Parent of each variable in a random tree rooted at 0 (parent[v] < v)."""
    return [-1] + [int(rng.integers(max(0, v - 3), v)) for v in range(1, n)]


def hclt(num_vars: int, units: int, k: int = 2, seed: int = 0, lazy: bool = True) -> Circuit:
    """Hidden Chow-Liu tree shape: per tree node, product(input, child sums) then a dense sum."""
    rng = np.random.default_rng(seed)
    parent = _chain_tree(num_vars, rng)
    b = CircuitBuilder(seed=seed)
    xs = b.variables(num_vars, Domain.categorical(k))
    inputs = [b.input(x, units, Dist.make("categorical", k=k), name=f"in{x}") for x in xs]
    children: dict[int, list[int]] = {v: [] for v in range(num_vars)}
    for v in range(1, num_vars):
        children[parent[v]].append(v)
    out: dict[int, str] = {}
    for v in reversed(range(num_vars)):
        if not children[v]:
            out[v] = inputs[v]
            continue
        p = b.product([inputs[v]] + [out[c] for c in children[v]], name=f"p{v}")
        out[v] = b.sum([p], 1 if v == 0 else units, name=f"s{v}")
    b.root(out[0])
    return b.build()


def pd(size: int, units: int, seed: int = 0) -> Circuit:
    """Poon-Domingos shape on a 1 x size line of binary pixels: every split of every interval."""
    b = CircuitBuilder(seed=seed)
    xs = b.variables(size, Domain.binary())
    region: dict[tuple[int, int], str] = {}
    for i in range(size):
        region[(i, i + 1)] = b.input(xs[i], units, Dist.make("bernoulli"))
    for length in range(2, size + 1):
        for a in range(0, size - length + 1):
            z = a + length
            prods = [b.product([region[(a, m)], region[(m, z)]]) for m in range(a + 1, z)]
            region[(a, z)] = b.sum(prods, 1 if length == size else units)
    b.root(region[(0, size)])
    return b.build()


def rat_spn(num_vars: int, units: int, depth: int, repetitions: int, seed: int = 0) -> Circuit:
    """RAT-SPN shape: random balanced binary region trees, repeated, mixed at the root."""
    rng = np.random.default_rng(seed)
    b = CircuitBuilder(seed=seed)
    xs = b.variables(num_vars, Domain.binary())
    roots = []
    for _ in range(repetitions):

        def build(vs: list[int], d: int) -> str:
            if d == 0 or len(vs) == 1:
                leaves = [b.input(v, units, Dist.make("bernoulli")) for v in vs]
                return leaves[0] if len(leaves) == 1 else b.sum([b.product(leaves, "aligned")], units)
            half = len(vs) // 2
            left, right = build(vs[:half], d - 1), build(vs[half:], d - 1)
            return b.sum([b.product([left, right], "outer")], units)

        perm = [int(v) for v in rng.permutation(xs)]
        roots.append(build(perm, depth))
    b.root(b.sum(roots, 1))
    return b.build()


def hmm(length: int, hidden: int, k: int = 4, seed: int = 0) -> Circuit:
    """HMM as a PC: a chain of product(emission, previous sum) -> sum with tied transitions."""
    b = CircuitBuilder(seed=seed)
    xs = b.variables(length, Domain.categorical(k))
    emit = b.input(xs[length - 1], hidden, Dist.make("categorical", k=k), name=f"e{length - 1}")
    prev = emit
    first_sum = None
    for t in range(length - 2, -1, -1):
        e = b.input(xs[t], hidden, Dist.make("categorical", k=k), tie=emit)
        tr = b.sum([prev], hidden, tie=first_sum) if first_sum else b.sum([prev], hidden)
        first_sum = first_sum or tr
        prev = b.product([e, tr])
    b.root(b.sum([prev], 1))
    return b.build()


def random_data(circuit: Circuit, n: int, rng: np.random.Generator):
    """``(x, missing)`` of ``n`` random rows for a circuit of discrete or real variables."""
    x = np.empty((n, circuit.num_vars))
    for v, var in enumerate(circuit.variables):
        x[:, v] = rng.integers(0, var.domain.k, size=n) if var.domain.is_discrete else rng.normal(0, 1.5, size=n)
    return x, np.zeros(x.shape, dtype=bool)
