"""The graph IR: a DAG of node *groups* with a parameter store.

One graph node stands for a whole group of PC nodes (``units`` of them), so a circuit with
hundreds of thousands of PC nodes is a few thousand graph nodes. Payloads are frozen; the networkx
graph is private; every transformation returns a new :class:`Circuit`.

Semantics (log space, per sample):

* ``InputGroup``: ``units`` leaves on variable ``var``; node u has log-density
  ``dist.log_prob(params)[u]``.
* ``ProductGroup`` over children ``c_0..c_{m-1}``; node u multiplies one unit of every child:
  ``aligned`` (all children have ``units`` nodes; node u takes unit u of each), ``outer``
  (Kronecker: units = prod(child units), row-major, the last child varies fastest) or
  ``explicit`` (``edges[u, j]`` = the unit of child j).
* ``SumGroup`` over children whose units are concatenated into K columns;
  node u = log sum_j W[u, j] exp(child[j]). ``dense``: W is (units, K). ``block``: W is
  (units, K) but only blocks where ``mask`` (shape (units/bm, K/bk), ``block=(bm, bk)``) is true
  carry edges. ``explicit``: ``edges`` is (E, 2) of (node, column) pairs and W is (E,).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import numpy as np

from . import distributions as dists
from .diagnostics import SourceSpan, VerifyError
from .distributions import Dist, Domain

AttrValue = int | float | str | bool | tuple
Attrs = tuple[tuple[str, AttrValue], ...]

PRODUCT_PATTERNS = ("aligned", "outer", "explicit")
SUM_PATTERNS = ("dense", "block", "explicit")


def make_attrs(mapping: Mapping[str, AttrValue] | None = None, **kw: AttrValue) -> Attrs:
    d = dict(mapping or {})
    d.update(kw)
    return tuple(sorted(d.items()))


def _freeze(a: np.ndarray | None, dtype: Any | None = None) -> np.ndarray | None:
    if a is None:
        return None
    a = np.array(a, dtype=dtype, copy=True) if dtype is not None else np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _arr_key(a: np.ndarray | None):
    if a is None:
        return None
    return (a.dtype.str, a.shape, a.tobytes())


class _Group:
    """Shared behaviour of the three group kinds (value equality, attributes)."""

    name: str
    attrs: Attrs
    span: SourceSpan | None

    kind = "?"

    def _key(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))

    def attr(self, key: str, default: AttrValue | None = None) -> AttrValue | None:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def with_attrs(self, **kw: AttrValue | None):
        """A copy with attributes set (a value of None removes the attribute)."""
        d = dict(self.attrs)
        for k, v in kw.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return replace(self, attrs=tuple(sorted(d.items())))

    def renamed(self, name: str):
        return replace(self, name=name)


@dataclass(frozen=True, eq=False)
class InputGroup(_Group):
    name: str
    var: int
    units: int
    dist: Dist
    params: str
    attrs: Attrs = ()
    span: SourceSpan | None = field(default=None, compare=False)

    kind = "input"

    @property
    def children(self) -> tuple[str, ...]:
        return ()

    def _key(self):
        return (self.name, self.var, self.units, self.dist, self.params, self.attrs)

    __hash__ = _Group.__hash__


@dataclass(frozen=True, eq=False)
class ProductGroup(_Group):
    name: str
    children: tuple[str, ...]  # type: ignore[assignment]
    pattern: str
    units: int
    edges: np.ndarray | None = None  # (units, len(children)) int64 for "explicit"
    attrs: Attrs = ()
    span: SourceSpan | None = field(default=None, compare=False)

    kind = "product"

    def __post_init__(self):
        object.__setattr__(self, "children", tuple(self.children))
        if self.edges is not None:
            object.__setattr__(self, "edges", _freeze(self.edges, np.int64))

    def _key(self):
        return (self.name, self.children, self.pattern, self.units, _arr_key(self.edges), self.attrs)

    __hash__ = _Group.__hash__

    def child_index(self, child_units: list[int]) -> np.ndarray:
        """(units, len(children)) unit index into each child, whatever the pattern."""
        m = len(self.children)
        if self.pattern == "explicit":
            assert self.edges is not None
            return np.asarray(self.edges)
        if self.pattern == "aligned":
            return np.repeat(np.arange(self.units)[:, None], m, axis=1)
        grids = np.meshgrid(*[np.arange(n) for n in child_units], indexing="ij")
        return np.stack([g.reshape(-1) for g in grids], axis=1)


@dataclass(frozen=True, eq=False)
class SumGroup(_Group):
    name: str
    units: int
    children: tuple[str, ...]  # type: ignore[assignment]
    pattern: str
    params: str
    mask: np.ndarray | None = None  # bool (units/bm, K/bk) for "block"
    block: tuple[int, int] | None = None  # (bm, bk) for "block"
    edges: np.ndarray | None = None  # (E, 2) int64 (node, column) for "explicit"
    attrs: Attrs = ()
    span: SourceSpan | None = field(default=None, compare=False)

    kind = "sum"

    def __post_init__(self):
        object.__setattr__(self, "children", tuple(self.children))
        if self.mask is not None:
            object.__setattr__(self, "mask", _freeze(self.mask, np.bool_))
        if self.edges is not None:
            object.__setattr__(self, "edges", _freeze(self.edges, np.int64))
        if self.block is not None:
            object.__setattr__(self, "block", tuple(int(b) for b in self.block))

    def _key(self):
        return (
            self.name,
            self.units,
            self.children,
            self.pattern,
            self.params,
            _arr_key(self.mask),
            self.block,
            _arr_key(self.edges),
            self.attrs,
        )

    __hash__ = _Group.__hash__

    def edge_mask(self, k: int) -> np.ndarray:
        """Dense bool (units, K) of which (node, column) pairs carry an edge."""
        if self.pattern == "dense":
            return np.ones((self.units, k), dtype=bool)
        if self.pattern == "block":
            assert self.mask is not None and self.block is not None
            bm, bk = self.block
            return np.kron(self.mask, np.ones((bm, bk), dtype=bool)).astype(bool)
        assert self.edges is not None
        m = np.zeros((self.units, k), dtype=bool)
        m[self.edges[:, 0], self.edges[:, 1]] = True
        return m

    def num_edges(self, k: int) -> int:
        if self.pattern == "dense":
            return self.units * k
        if self.pattern == "block":
            assert self.mask is not None and self.block is not None
            return int(self.mask.sum()) * self.block[0] * self.block[1]
        assert self.edges is not None
        return int(self.edges.shape[0])


Group = InputGroup | ProductGroup | SumGroup


@dataclass(frozen=True, eq=False)
class Param:
    """A parameter array in the store: a concrete ``value`` or a seeded ``init`` to materialise.

    ``init`` is ``"random"`` or ``"uniform"``; a lazily initialised parameter costs nothing until
    the reference evaluator or a backend asks for its value, so huge circuits build in seconds.
    """

    shape: tuple[int, ...]
    dtype: str = "f64"  # "f32" | "f64" | "i64"
    value: np.ndarray | None = None
    init: str = "random"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype not in NP_DTYPES:
            raise VerifyError(f"unknown parameter dtype '{self.dtype}' (expected f32, f64 or i64)")
        if self.value is not None:
            np_dtype = NP_DTYPES[self.dtype]
            object.__setattr__(self, "value", _freeze(self.value, np_dtype))
            if self.value.shape != self.shape:
                raise VerifyError(f"parameter value has shape {self.value.shape}, expected {self.shape}")

    def _key(self):
        return (
            self.shape,
            self.dtype,
            _arr_key(self.value),
            None if self.value is not None else (self.init, self.seed),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Param) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.shape)

    @staticmethod
    def of(value: np.ndarray, dtype: str | None = None) -> Param:
        value = np.asarray(value)
        if dtype is None:
            dtype = "i64" if np.issubdtype(value.dtype, np.integer) else ("f32" if value.dtype == np.float32 else "f64")
        return Param(tuple(value.shape), dtype, value)


NP_DTYPES = {"f32": np.float32, "f64": np.float64, "i64": np.int64}


@dataclass(frozen=True)
class Variable:
    name: str
    domain: Domain


class Circuit:
    """An immutable DAG of node groups, a parameter store, variables and roots.

    Build one with :class:`pcir.ir.builder.CircuitBuilder` or ``Circuit(...)``; read it through
    ``groups``, ``group(name)``, ``children``/``parents``, ``topo_order()``; change it with
    ``replace`` (returns a new circuit). Equality is structural and value-based.
    """

    def __init__(
        self,
        variables: Iterable[Variable],
        groups: Iterable[Group],
        params: Mapping[str, Param],
        roots: Iterable[str],
        attrs: Attrs = (),
    ):
        self._variables = tuple(variables)
        glist = list(groups)
        self._groups: dict[str, Group] = {}
        for g in glist:
            if g.name in self._groups:
                raise VerifyError(f"duplicate group name '{g.name}'", g.span)
            self._groups[g.name] = g
        self._params = dict(sorted(params.items()))
        self._roots = tuple(roots)
        self._attrs = tuple(sorted(attrs))
        graph = nx.DiGraph()
        for g in glist:
            graph.add_node(g.name)
        for g in glist:
            for c in g.children:
                if c not in self._groups:
                    raise VerifyError(f"group '{g.name}' has unknown child '{c}'", g.span)
                graph.add_edge(c, g.name)
        self._graph = graph
        try:
            order = list(nx.lexicographical_topological_sort(graph, key=self._order_key(glist)))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(graph)
            raise VerifyError(
                "circuit has a cycle: " + " -> ".join(e[0] for e in cycle) + f" -> {cycle[0][0]}",
                self._groups[cycle[0][0]].span,
            ) from None
        self._topo = tuple(order)
        self._pos = {n: i for i, n in enumerate(order)}
        self._param_cache: dict[str, np.ndarray] = {}
        self._users: dict[str, list[str]] | None = None

    @staticmethod
    def _order_key(glist: list[Group]):
        pos = {g.name: i for i, g in enumerate(glist)}
        return lambda n: pos[n]

    # ---- read-only API -------------------------------------------------------------------
    @property
    def variables(self) -> tuple[Variable, ...]:
        return self._variables

    @property
    def num_vars(self) -> int:
        return len(self._variables)

    @property
    def groups(self) -> Mapping[str, Group]:
        """Groups by name, in topological order (children before parents)."""
        return types.MappingProxyType({n: self._groups[n] for n in self._topo})

    @property
    def params(self) -> Mapping[str, Param]:
        return types.MappingProxyType(self._params)

    @property
    def roots(self) -> tuple[str, ...]:
        return self._roots

    @property
    def attrs(self) -> Attrs:
        return self._attrs

    def attr(self, key: str, default: AttrValue | None = None) -> AttrValue | None:
        return dict(self._attrs).get(key, default)

    def group(self, name: str) -> Group:
        return self._groups[name]

    def __contains__(self, name: str) -> bool:
        return name in self._groups

    def __iter__(self) -> Iterator[Group]:
        return (self._groups[n] for n in self._topo)

    def __len__(self) -> int:
        return len(self._groups)

    def topo_order(self) -> tuple[str, ...]:
        return self._topo

    def children(self, name: str) -> tuple[str, ...]:
        return self._groups[name].children

    def parents(self, name: str) -> tuple[str, ...]:
        return tuple(sorted(self._graph.successors(name), key=self._pos.__getitem__))

    def units(self, name: str) -> int:
        return self._groups[name].units

    def child_units(self, name: str) -> list[int]:
        return [self._groups[c].units for c in self._groups[name].children]

    def num_columns(self, name: str) -> int:
        """K: the concatenated child units of a sum group."""
        return sum(self.child_units(name))

    def users_of_param(self, pname: str) -> list[str]:
        if self._users is None:  # one pass for all parameters (a circuit is immutable)
            users: dict[str, list[str]] = {}
            for g in self:
                name = getattr(g, "params", None)
                if name is not None:
                    users.setdefault(name, []).append(g.name)
            self._users = users
        return list(self._users.get(pname, ()))

    def depth(self) -> dict[str, int]:
        """Longest path from any input group, per group (inputs are 0)."""
        d: dict[str, int] = {}
        for n in self._topo:
            ch = self._groups[n].children
            d[n] = 0 if not ch else 1 + max(d[c] for c in ch)
        return d

    def scope(self) -> dict[str, frozenset[int]]:
        sc: dict[str, frozenset[int]] = {}
        for g in self:
            if isinstance(g, InputGroup):
                sc[g.name] = frozenset((g.var,))
            else:
                s: frozenset[int] = frozenset()
                for c in g.children:
                    s = s | sc[c]
                sc[g.name] = s
        return sc

    def stats(self) -> dict[str, int]:
        """Sizes: groups, PC nodes, edges (sum edges + product edges), parameters."""
        nodes = edges = 0
        for g in self:
            nodes += g.units
            if isinstance(g, SumGroup):
                edges += g.num_edges(self.num_columns(g.name))
            elif isinstance(g, ProductGroup):
                edges += g.units * len(g.children)
        nparams = sum(int(np.prod(p.shape)) for p in self._params.values())
        return {"groups": len(self), "nodes": nodes, "edges": edges, "params": nparams}

    # ---- parameters ----------------------------------------------------------------------
    def param_value(self, pname: str) -> np.ndarray:
        """The concrete value of a parameter (materialising a seeded init, normalised)."""
        p = self._params[pname]
        if p.value is not None:
            return p.value
        if pname not in self._param_cache:
            self._param_cache[pname] = self._materialize(pname, p)
        return self._param_cache[pname]

    def _materialize(self, pname: str, p: Param) -> np.ndarray:
        users = self.users_of_param(pname)
        if not users:
            raise VerifyError(f"parameter '{pname}' has no user and no value")
        g = self._groups[users[0]]
        rng = np.random.default_rng(p.seed)
        if isinstance(g, InputGroup):
            v = dists.get(g.dist.kind).init_params(g.dist, g.units, rng, p.init)
        else:
            assert isinstance(g, SumGroup)
            k = self.num_columns(g.name)
            if g.pattern == "explicit":
                assert g.edges is not None
                raw = np.ones(len(g.edges)) if p.init == "uniform" else rng.uniform(0.05, 1.0, len(g.edges))
                tot = np.bincount(g.edges[:, 0], weights=raw, minlength=g.units)
                v = raw / tot[g.edges[:, 0]]
            else:
                raw = np.ones((g.units, k)) if p.init == "uniform" else rng.uniform(0.05, 1.0, (g.units, k))
                if g.pattern == "block":
                    raw = raw * g.edge_mask(k)
                s = raw.sum(axis=1, keepdims=True)
                v = raw / np.where(s > 0, s, 1.0)
        v = np.asarray(v, dtype=NP_DTYPES[p.dtype]).reshape(p.shape)
        v.setflags(write=False)
        return v

    def materialized(self) -> Circuit:
        """A copy whose parameters all hold concrete values."""
        params = {
            k: (p if p.value is not None else Param(p.shape, p.dtype, self.param_value(k)))
            for k, p in self._params.items()
        }
        return self.replace(params=params)

    # ---- transformation ------------------------------------------------------------------
    def replace(
        self,
        *,
        groups: Iterable[Group] | None = None,
        params: Mapping[str, Param] | None = None,
        roots: Iterable[str] | None = None,
        variables: Iterable[Variable] | None = None,
        attrs: Attrs | None = None,
    ) -> Circuit:
        return Circuit(
            self._variables if variables is None else variables,
            list(self) if groups is None else groups,
            self._params if params is None else params,
            self._roots if roots is None else roots,
            self._attrs if attrs is None else attrs,
        )

    def with_params(self, **values: np.ndarray) -> Circuit:
        """A copy with some parameters set to concrete values (same shapes)."""
        params = dict(self._params)
        for k, v in values.items():
            old = params[k]
            params[k] = Param(old.shape, old.dtype, np.asarray(v, dtype=NP_DTYPES[old.dtype]))
        return self.replace(params=params)

    def with_group(self, g: Group) -> Circuit:
        return self.replace(groups=[g if x.name == g.name else x for x in self])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return NotImplemented
        return (
            self._variables == other._variables
            and list(self) == list(other)
            and self._params == other._params
            and self._roots == other._roots
            and self._attrs == other._attrs
        )

    def __hash__(self) -> int:
        return hash((self._topo, self._roots))

    def __repr__(self) -> str:
        s = self.stats()
        return f"<Circuit vars={self.num_vars} groups={s['groups']} nodes={s['nodes']} edges={s['edges']} roots={list(self._roots)}>"
