"""A mutable scratch copy of a circuit, private to one pass run.

Rewrite rules edit it in place (cheap per match); :meth:`Workspace.build` turns it back into an
immutable :class:`Circuit` once per sweep. The input circuit is never touched: lazily
initialised parameters keep their seeded values by reading them from the original circuit, and
:meth:`Workspace.build` freezes a lazy parameter into a concrete one whenever the rewrite changed
the group that decides how it materialises (its first user).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir.circuit import Circuit, Group, InputGroup, Param, SumGroup
from .rewrite import fresh_name


class Workspace:
    def __init__(self, circuit: Circuit):
        self.original = circuit
        self.groups: dict[str, Group] = dict(circuit.groups)
        self.params: dict[str, Param] = dict(circuit.params)
        self.roots: list[str] = list(circuit.roots)
        self.changes = 0

    # ---- reading -------------------------------------------------------------------------
    def units(self, name: str) -> int:
        return self.groups[name].units

    def child_units(self, name: str) -> list[int]:
        return [self.groups[c].units for c in self.groups[name].children]

    def num_columns(self, name: str) -> int:
        return sum(self.child_units(name))

    def param_value(self, pname: str) -> np.ndarray:
        p = self.params[pname]
        if p.value is not None:
            return np.asarray(p.value)
        return np.asarray(self.original.param_value(pname))

    def parents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.groups}
        for g in self.groups.values():
            for c in dict.fromkeys(g.children):
                out[c].append(g.name)
        return out

    def param_users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        for g in self.groups.values():
            p = getattr(g, "params", None)
            if p:
                users.setdefault(p, []).append(g.name)
        return users

    def taken(self) -> set[str]:
        return set(self.groups) | set(self.params)

    # ---- editing -------------------------------------------------------------------------
    def put(self, g: Group) -> None:
        self.groups[g.name] = g
        self.changes += 1

    def new_param(self, base: str, param: Param) -> str:
        name = fresh_name(base, self.taken())
        self.params[name] = param
        return name

    def substitute(self, mapping: dict[str, str]) -> None:
        """Replace every reference to a key of ``mapping`` (children and roots) by its value."""
        if not mapping:
            return

        def res(n: str) -> str:
            while n in mapping:
                n = mapping[n]
            return n

        for name, g in list(self.groups.items()):
            if any(c in mapping for c in g.children):
                self.groups[name] = replace(g, children=tuple(res(c) for c in g.children))
        self.roots = [res(r) for r in self.roots]
        for k in mapping:
            self.groups.pop(k, None)
        self.changes += len(mapping)

    def remove_dead(self) -> int:
        live: set[str] = set()
        stack = list(self.roots)
        while stack:
            n = stack.pop()
            if n not in live:
                live.add(n)
                stack.extend(self.groups[n].children)
        dead = [n for n in self.groups if n not in live]
        for n in dead:
            del self.groups[n]
        used = {getattr(g, "params", None) for g in self.groups.values()}
        unused = [p for p in self.params if p not in used]
        for p in unused:
            del self.params[p]
        self.changes += len(dead) + len(unused)
        return len(dead) + len(unused)

    # ---- building ------------------------------------------------------------------------
    def build(self) -> Circuit:
        """The workspace as a Circuit (groups in an order the Circuit re-sorts topologically)."""
        order = {n: i for i, n in enumerate(self.original.topo_order())}
        names = sorted(self.groups, key=lambda n: order.get(n, len(order)))
        groups = [self.groups[n] for n in names]
        params = dict(self.params)
        self._freeze_moved_lazy_params(params)
        return Circuit(self.original.variables, groups, params, self.roots, self.original.attrs)

    def _freeze_moved_lazy_params(self, params: dict[str, Param]) -> None:
        orig = self.original
        first_orig = _first_users(orig.groups.values())
        first_new = _first_users(self.groups[n] for n in orig.topo_order() if n in self.groups)
        for pname, p in params.items():
            if p.value is not None or pname not in orig.params or orig.params[pname] != p:
                continue
            a, b = first_orig.get(pname), first_new.get(pname)
            if a is None or b is None:
                continue
            if _materialize_key(orig, orig.group(a)) != self._materialize_key(self.groups[b]):
                params[pname] = Param(p.shape, p.dtype, orig.param_value(pname))

    def _materialize_key(self, g: Group) -> tuple:
        if isinstance(g, InputGroup):
            return ("input", g.dist, g.units)
        assert isinstance(g, SumGroup)
        return ("sum", g.units, self.num_columns(g.name), g.pattern, _bytes(g.edges), _bytes(g.mask), g.block)


def _first_users(groups) -> dict[str, str]:
    out: dict[str, str] = {}
    for g in groups:
        p = getattr(g, "params", None)
        if p and p not in out:
            out[p] = g.name
    return out


def _materialize_key(c: Circuit, g: Group) -> tuple:
    if isinstance(g, InputGroup):
        return ("input", g.dist, g.units)
    assert isinstance(g, SumGroup)
    return ("sum", g.units, c.num_columns(g.name), g.pattern, _bytes(g.edges), _bytes(g.mask), g.block)


def _bytes(a) -> bytes | None:
    return None if a is None else np.ascontiguousarray(a).tobytes()
