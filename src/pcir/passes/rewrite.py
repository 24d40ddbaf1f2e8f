"""Small whole-graph helpers shared by the passes (pure functions over circuits)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..ir.circuit import Circuit, Group, Param, ProductGroup, SumGroup
from ..ir.evaluator import dense_sum_weights


def parent_map(circuit: Circuit) -> dict[str, list[str]]:
    """Group name -> names of the groups that read it (each parent once, topological order)."""
    parents: dict[str, list[str]] = {n: [] for n in circuit.topo_order()}
    for g in circuit:
        for c in dict.fromkeys(g.children):
            parents[c].append(g.name)
    return parents


def live_groups(groups: dict[str, Group], roots: Iterable[str]) -> set[str]:
    """Names reachable from the roots."""
    live: set[str] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack.extend(groups[n].children)
    return live


def param_users(circuit: Circuit) -> dict[str, list[str]]:
    """Parameter name -> groups that use it (tying: several)."""
    users: dict[str, list[str]] = {}
    for g in circuit:
        p = getattr(g, "params", None)
        if p:
            users.setdefault(p, []).append(g.name)
    return users


def fresh_name(base: str, taken: set[str] | dict) -> str:
    """``base`` or ``base.1``, ``base.2``... whichever is not taken."""
    if base not in taken:
        return base
    i = 1
    while f"{base}.{i}" in taken:
        i += 1
    return f"{base}.{i}"


def sum_weights_dense(circuit: Circuit, g: SumGroup) -> np.ndarray:
    """Dense (units, K) float64 weights of a sum (zeros off the edge pattern)."""
    return dense_sum_weights(circuit, g)


def sum_edges(circuit: Circuit, g: SumGroup) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every edge of a sum, row-major order (no weights needed)."""
    if g.pattern == "explicit":
        assert g.edges is not None
        e = g.edges
        order = np.lexsort((e[:, 1], e[:, 0]))
        return e[order, 0], e[order, 1]
    m = g.edge_mask(circuit.num_columns(g.name))
    r, c = np.nonzero(m)
    return r, c


def sum_edge_weights(circuit: Circuit, g: SumGroup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, weights) of every edge of a sum, row-major order."""
    w = np.asarray(circuit.param_value(g.params), dtype=np.float64)
    if g.pattern == "explicit":
        assert g.edges is not None
        e = g.edges
        order = np.lexsort((e[:, 1], e[:, 0]))
        return e[order, 0], e[order, 1], w[order]
    r, c = sum_edges(circuit, g)
    return r, c, w[r, c]


def make_sum(
    name: str,
    units: int,
    children: tuple[str, ...],
    k: int,
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray | None,
    pname: str,
    dtype: str,
    attrs,
    span,
    prefer_dense: bool = True,
) -> tuple[SumGroup, Param]:
    """A sum over ``children`` (K columns) with the given edges, merging duplicate edges.

    Dense when every (node, column) pair carries an edge and ``prefer_dense``; explicit otherwise.
    ``weights=None`` leaves the parameter lazy (seeded random init), for structure-only rewrites.
    """
    key = rows.astype(np.int64) * k + cols.astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    r, c = uniq // k, uniq % k
    w = None
    if weights is not None:
        w = np.zeros(len(uniq))
        np.add.at(w, inv, weights)
    if prefer_dense and len(uniq) == units * k:
        val = None if w is None else w.reshape(units, k)
        g = SumGroup(name, units, children, "dense", pname, attrs=attrs, span=span)
        return g, _param((units, k), dtype, val)
    edges = np.stack([r, c], axis=1)
    g = SumGroup(name, units, children, "explicit", pname, edges=edges, attrs=attrs, span=span)
    return g, _param((len(uniq),), dtype, w)


def _param(shape, dtype, value) -> Param:
    if value is None:
        return Param(shape, dtype, None, "random", 0)
    return Param(shape, dtype, value)


def product_index(circuit: Circuit, g: ProductGroup) -> np.ndarray:
    return g.child_index(circuit.child_units(g.name))


def make_product(
    name: str, children: tuple[str, ...], child_units: list[int], index: np.ndarray, attrs, span
) -> ProductGroup:
    """A product with the given (units, m) child index, in the most specific pattern that fits."""
    units = int(index.shape[0])
    m = len(children)
    if (
        m
        and all(cu == units for cu in child_units)
        and np.array_equal(index, np.repeat(np.arange(units)[:, None], m, axis=1))
    ):
        return ProductGroup(name, children, "aligned", units, attrs=attrs, span=span)
    if m and units == int(np.prod(child_units)):
        grids = np.meshgrid(*[np.arange(n) for n in child_units], indexing="ij")
        outer = np.stack([gr.reshape(-1) for gr in grids], axis=1)
        if np.array_equal(index, outer):
            return ProductGroup(name, children, "outer", units, attrs=attrs, span=span)
    return ProductGroup(name, children, "explicit", units, edges=index, attrs=attrs, span=span)
