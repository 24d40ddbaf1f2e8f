"""Run-time values of the `.pc` interpreter (what names are bound to while a file is lowered).

Numbers, strings, booleans and lists are plain Python values (ranges are Python ``range``s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import syntax as S


@dataclass(frozen=True)
class GroupVal:
    """A node group of the circuit being built (by its IR name)."""

    name: str
    units: int
    kind: str  # "input" | "product" | "sum"


@dataclass(frozen=True)
class VarVal:
    """One variable (its index in the circuit)."""

    index: int
    name: str


@dataclass(frozen=True)
class VarArray:
    """``var x[d0, d1, ...]``: variables base .. base+prod(dims)-1, row-major."""

    name: str
    dims: tuple[int, ...]
    base: int
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.dims)) if self.dims else 1

    def item(self, flat: int) -> VarVal:
        return VarVal(self.base + flat, self.names[flat])


@dataclass(eq=False)
class GroupArray:
    """An array of values indexed by integer tuples (``S[i] = ...`` creates one)."""

    name: str  # the IR prefix of its groups, e.g. "S" or "inst.S"
    items: dict[tuple[int, ...], Any] = field(default_factory=dict)
    positions: dict[tuple[int, ...], S.Pos | None] = field(default_factory=dict)
    display: str = ""  # the name the user wrote

    def keys_with_prefix(self, prefix: tuple[int, ...]) -> list[tuple[int, ...]]:
        n = len(prefix)
        return [k for k in self.items if len(k) > n and k[:n] == prefix]


@dataclass(frozen=True)
class ArrayView:
    """``S[i]`` of a 2-D array ``S[i, j]``: the items whose index starts with ``prefix``."""

    array: GroupArray
    prefix: tuple[int, ...]


@dataclass(eq=False)
class Template:
    """A ``def``: its syntax and the scope it was defined in (lexical scoping)."""

    node: S.Def
    scope: Any  # lower.Scope


@dataclass(eq=False)
class ParamVal:
    """``param NAME [= value]``: a named parameter array shared by every group that uses it."""

    name: str
    value: np.ndarray | None
    pos: S.Pos | None
    owner: str | None = None  # first group that used it (it holds the IR parameter)
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    ir_name: str | None = None


@dataclass(frozen=True, eq=False)
class ArrayVal:
    """An array loaded from a file with ``load(...)``."""

    value: np.ndarray
    desc: str


def type_name(v: Any) -> str:
    """How a value's type is named in messages."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, range):
        return "a range"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, GroupVal):
        return f"the {v.kind} group '{v.name}'"
    if isinstance(v, VarVal):
        return f"the variable '{v.name}'"
    if isinstance(v, VarArray):
        return f"the variable array '{v.name}'"
    if isinstance(v, (GroupArray, ArrayView)):
        return "an array"
    if isinstance(v, Template):
        return f"the template '{v.node.name}'"
    if isinstance(v, ParamVal):
        return f"the parameter '{v.name}'"
    if isinstance(v, ArrayVal):
        return "a loaded array"
    if v is None:
        return "nothing"
    return type(v).__name__
