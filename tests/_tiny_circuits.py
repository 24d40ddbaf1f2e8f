"""Seeded random tiny circuits for brute-force query tests (smooth and decomposable, or
deterministic), mixing leaf families and edge patterns. Small enough to enumerate."""

from __future__ import annotations

import numpy as np

from pcir.ir import CircuitBuilder, Dist, Domain, verify

DOMAINS = [Domain.binary(), Domain.categorical(3), Domain.categorical(4)]


def _leaf_dist(rng: np.random.Generator, dom: Domain) -> Dist:
    options = [
        Dist.make("categorical", k=dom.k),
        Dist.make("binomial", n=dom.k - 1),
        Dist.make("discrete_logistic", n=dom.k),
    ]
    if dom.k == 2:
        options.append(Dist.make("bernoulli"))
    return options[int(rng.integers(len(options)))]


def random_circuit(seed: int, num_vars: int = 4) -> object:
    """A smooth, decomposable circuit with random structure, patterns and leaves."""
    rng = np.random.default_rng(seed)
    b = CircuitBuilder(seed=seed)
    doms = [DOMAINS[int(rng.integers(len(DOMAINS)))] for _ in range(num_vars)]
    for i, d in enumerate(doms):
        b.variable(d, f"v{i}")

    def leaves(v: int, units: int) -> str:
        dom = doms[v]
        kind = rng.integers(4)
        if kind == 0 and units <= dom.k:  # one-hot indicators under a dense sum
            ind = b.input(v, dom.k, Dist.make("indicator"))
            return b.sum([ind], units)
        if kind == 1:  # two leaf groups mixed
            a = b.input(v, 2, _leaf_dist(rng, dom))
            c = b.input(v, 1, _leaf_dist(rng, dom))
            return b.sum([a, c], units)
        return b.input(v, units, _leaf_dist(rng, dom))

    def region(vs: list[int], units: int) -> str:
        if len(vs) == 1:
            return leaves(vs[0], units)
        prods = []
        for _ in range(int(rng.integers(1, 3))):
            perm = rng.permutation(vs).tolist()
            cut = int(rng.integers(1, len(perm)))
            left, right = perm[:cut], perm[cut:]
            pattern = ["aligned", "outer", "explicit"][int(rng.integers(3))]
            if pattern == "aligned":
                u = int(rng.integers(1, 4))
                prods.append(b.product([region(left, u), region(right, u)], pattern="aligned"))
            elif pattern == "outer":
                prods.append(
                    b.product(
                        [region(left, int(rng.integers(1, 3))), region(right, int(rng.integers(1, 3)))], pattern="outer"
                    )
                )
            else:
                ul, ur = int(rng.integers(1, 4)), int(rng.integers(1, 4))
                m = int(rng.integers(1, 5))
                edges = np.stack([rng.integers(0, ul, m), rng.integers(0, ur, m)], axis=1)
                prods.append(b.product([region(left, ul), region(right, ur)], edges=edges))
        k = sum(b.units(p) for p in prods)
        style = int(rng.integers(3))
        if style == 1 and k >= 2 and units >= 1:
            # explicit: each node reads a random non-empty subset of columns
            edges = []
            for u in range(units):
                cols = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
                edges += [(u, int(c)) for c in cols]
            return b.sum(prods, units, edges=np.array(edges))
        if style == 2 and units % 1 == 0 and k >= 1:
            mask = rng.random((units, k)) < 0.6
            mask[np.arange(units), rng.integers(0, k, units)] = True
            return b.sum(prods, units, mask=mask, block=(1, 1))
        return b.sum(prods, units)

    b.root(region(list(range(num_vars)), 1))
    return verify(b.build())


def deterministic_circuit(seed: int, num_vars: int = 4) -> object:
    """A deterministic, smooth, decomposable circuit: every sum branches on the value of one
    variable (literal or indicator leaves), below it the remaining variables factorise."""
    rng = np.random.default_rng(seed)
    b = CircuitBuilder(seed=seed)
    doms = [DOMAINS[int(rng.integers(len(DOMAINS)))] for _ in range(num_vars)]
    for i, d in enumerate(doms):
        b.variable(d, f"v{i}")

    def region(vs: list[int]) -> str:
        if len(vs) == 1:
            return b.input(vs[0], 1, _leaf_dist(rng, doms[vs[0]]))
        d = vs[int(rng.integers(len(vs)))]
        rest = [v for v in vs if v != d]
        children = []
        values = [a for a in range(doms[d].k) if rng.random() < 0.8] or [0]
        for a in values:
            if rng.random() < 0.5:
                lit = b.input(d, 1, Dist.make("literal", value=a))
            else:
                lit = b.input(d, 1, Dist.make("indicator"), params=[a])
            if len(rest) > 1 and rng.random() < 0.5:
                cut = int(rng.integers(1, len(rest)))
                parts = [region(rest[:cut]), region(rest[cut:])]
            else:
                parts = [region(rest)]
            children.append(b.product([lit, *parts], pattern="aligned"))
        return b.sum(children, 1)

    b.root(region(list(rng.permutation(num_vars).tolist())))
    return verify(b.build())
