"""Python builder API: construct circuits in code, inputs -> products -> sums.

>>> from pcir.ir import CircuitBuilder, Domain, Dist
>>> b = CircuitBuilder()
>>> x0, x1 = b.variables(2, Domain.binary())
>>> a = b.input(x0, units=2, dist=Dist.make("bernoulli"))
>>> c = b.input(x1, units=2, dist=Dist.make("bernoulli"))
>>> p = b.product([a, c], pattern="aligned")
>>> s = b.sum([p], units=1)
>>> b.root(s)
>>> circuit = b.build()
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import distributions as dists
from .circuit import AttrValue, Circuit, Group, InputGroup, Param, ProductGroup, SumGroup, Variable, make_attrs
from .diagnostics import SourceSpan, VerifyError
from .distributions import Dist, Domain


class CircuitBuilder:
    """Accumulates variables, groups and parameters; ``build()`` returns an immutable Circuit.

    Every method returns the new group's name, which later calls take as a child reference.
    Parameters default to a seeded random initialisation (``init="random"``), materialised only
    when needed; pass ``params=`` (inputs) or ``weights=`` (sums) to give values, or ``tie=`` to
    share another group's parameters.
    """

    def __init__(self, seed: int = 0):
        self._vars: list[Variable] = []
        self._groups: dict[str, Group] = {}
        self._params: dict[str, Param] = {}
        self._roots: list[str] = []
        self._counters: dict[str, int] = {}
        self._seed = seed
        self.attrs: dict[str, AttrValue] = {}

    # ---- variables -----------------------------------------------------------------------
    def variable(self, domain: Domain, name: str | None = None) -> int:
        idx = len(self._vars)
        self._vars.append(Variable(name or f"x{idx}", domain))
        return idx

    def variables(self, n: int, domain: Domain, prefix: str = "x") -> list[int]:
        return [self.variable(domain, f"{prefix}{len(self._vars)}") for _ in range(n)]

    # ---- groups --------------------------------------------------------------------------
    def _fresh(self, prefix: str) -> str:
        while True:
            i = self._counters.get(prefix, 0)
            self._counters[prefix] = i + 1
            name = f"{prefix}{i}"
            if name not in self._groups and name not in self._params:
                return name

    def _name(self, name: str | None, prefix: str, span: SourceSpan | None) -> str:
        if name is None:
            return self._fresh(prefix)
        if name in self._groups:
            raise VerifyError(f"duplicate group name '{name}'", span)
        return name

    def _new_param(self, base: str, shape: tuple[int, ...], dtype: str, value, init: str) -> str:
        pname = f"{base}.w" if f"{base}.w" not in self._params else self._fresh(f"{base}.w")
        if value is not None:
            arr = np.asarray(value, dtype=np.float64 if dtype != "i64" else np.int64).reshape(shape)
            self._params[pname] = Param(shape, dtype, arr)
        else:
            self._params[pname] = Param(shape, dtype, None, init, self._seed * 1_000_003 + len(self._params))
        return pname

    def group(self, name: str) -> Group:
        return self._groups[name]

    def units(self, name: str) -> int:
        return self._groups[name].units

    def input(
        self,
        var: int,
        units: int,
        dist: Dist,
        params=None,
        *,
        name: str | None = None,
        tie: str | None = None,
        init: str = "random",
        attrs: dict[str, AttrValue] | None = None,
        span: SourceSpan | None = None,
    ) -> str:
        """``units`` leaves of family ``dist`` on variable ``var``."""
        if not 0 <= var < len(self._vars):
            raise VerifyError(f"input on unknown variable {var}", span)
        gname = self._name(name, "in", span)
        dt = dists.get(dist.kind)
        if tie is not None:
            pname = self._tied_param(tie, span)
        else:
            pname = self._new_param(gname, dt.param_shape(dist, units), dt.param_dtype(dist), params, init)
        self._groups[gname] = InputGroup(gname, var, units, dist, pname, make_attrs(attrs), span)
        return gname

    def product(
        self,
        children: Sequence[str],
        pattern: str = "aligned",
        edges=None,
        *,
        name: str | None = None,
        attrs: dict[str, AttrValue] | None = None,
        span: SourceSpan | None = None,
    ) -> str:
        """Product group. ``pattern``: aligned (elementwise), outer (Kronecker) or explicit."""
        gname = self._name(name, "p", span)
        cu = [self._groups[c].units for c in children]
        if edges is not None:
            pattern = "explicit"
            edges = np.asarray(edges, dtype=np.int64)
            units = int(edges.shape[0])
        elif pattern == "aligned":
            units = cu[0] if cu else 0
        elif pattern == "outer":
            units = int(np.prod(cu))
        else:
            raise VerifyError(f"product pattern '{pattern}' needs explicit edges", span)
        self._groups[gname] = ProductGroup(gname, tuple(children), pattern, units, edges, make_attrs(attrs), span)
        return gname

    def sum(
        self,
        children: Sequence[str],
        units: int,
        weights=None,
        *,
        mask=None,
        block: tuple[int, int] | None = None,
        edges=None,
        name: str | None = None,
        tie: str | None = None,
        init: str = "random",
        attrs: dict[str, AttrValue] | None = None,
        span: SourceSpan | None = None,
    ) -> str:
        """Sum group: dense by default, ``mask``+``block`` for block-sparse, ``edges`` (E, 2) explicit."""
        gname = self._name(name, "s", span)
        k = sum(self._groups[c].units for c in children)
        if edges is not None:
            pattern = "explicit"
            edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
            shape: tuple[int, ...] = (int(edges.shape[0]),)
        elif mask is not None:
            pattern = "block"
            mask = np.asarray(mask, dtype=bool)
            if block is None:
                block = (units // mask.shape[0], k // mask.shape[1])
            shape = (units, k)
        else:
            pattern = "dense"
            shape = (units, k)
        if tie is not None:
            pname = self._tied_param(tie, span)
        else:
            pname = self._new_param(gname, shape, "f64", weights, init)
        self._groups[gname] = SumGroup(
            gname, units, tuple(children), pattern, pname, mask, block, edges, make_attrs(attrs), span
        )
        return gname

    def _tied_param(self, other: str, span: SourceSpan | None) -> str:
        if other not in self._groups:
            raise VerifyError(f"cannot tie to unknown group '{other}'", span)
        p = getattr(self._groups[other], "params", None)
        if not p:
            raise VerifyError(f"group '{other}' has no parameters to tie to", span)
        return p

    def root(self, *names: str) -> None:
        for n in names:
            if n not in self._groups:
                raise VerifyError(f"unknown root '{n}'")
            self._roots.append(n)

    def add_group(self, g: Group, param: tuple[str, Param] | None = None) -> str:
        """Low-level: insert a ready-made group (and optionally its parameter)."""
        if g.name in self._groups:
            raise VerifyError(f"duplicate group name '{g.name}'", g.span)
        if param is not None:
            self._params[param[0]] = param[1]
        self._groups[g.name] = g
        return g.name

    def build(self) -> Circuit:
        roots = self._roots or [n for n in self._groups if not any(n in g.children for g in self._groups.values())][-1:]
        return Circuit(self._vars, self._groups.values(), self._params, roots, make_attrs(self.attrs))
