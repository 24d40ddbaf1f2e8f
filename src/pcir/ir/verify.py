"""Structural verifier. Each problem names the group (and its source span when known).

Rules: roots exist; no dangling groups (every group reaches a root); variables and distributions
exist and fit (known distribution arguments); edge patterns have consistent shapes and in-range
indices; every sum node has an edge; parameters exist with the shape their users need and valid
values; tied users (groups naming one parameter) are of one kind and read it alike (same leaf
distribution, or the same sum pattern, block mask or edge list);
**smoothness** (all children of a sum share one scope) and **decomposability** (children of a
product have pairwise disjoint scopes). Smoothness and decomposability can be waived for the whole
check (``verify(c, smooth=False)``) or per group with the attribute ``waive="smooth"`` /
``waive="decomposable"``; the reference evaluator still computes what such a circuit says.
"""

from __future__ import annotations

import numpy as np

from . import distributions as dists
from .circuit import NP_DTYPES, Circuit, InputGroup, ProductGroup, SumGroup
from .diagnostics import VerifyError, suggest


def problems(circuit: Circuit, *, smooth: bool = True, decomposable: bool = True) -> list[VerifyError]:
    """Every rule violation found, in topological order of the groups."""
    errs: list[VerifyError] = []

    def err(g, msg: str, hint: str | None = None) -> None:
        errs.append(VerifyError(f"group '{g.name}': {msg}", getattr(g, "span", None), hint))

    names = [v.name for v in circuit.variables]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        errs.append(VerifyError(f"duplicate variable name '{dup}'"))
    if not circuit.roots:
        errs.append(VerifyError("circuit has no root"))
    for r in circuit.roots:
        if r not in circuit:
            errs.append(VerifyError(f"unknown root '{r}'"))
    if errs:
        return errs

    # reachability from the roots
    live: set[str] = set()
    stack = list(circuit.roots)
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack.extend(circuit.children(n))
    for g in circuit:
        if g.name not in live:
            err(g, "dangling group: not reachable from any root")

    first_user: dict[str, tuple[str, tuple[int, ...], object]] = {}

    def check_param(g, pname: str, shape: tuple[int, ...], dtype: str) -> bool:
        if pname not in circuit.params:
            err(g, f"unknown parameter '{pname}'")
            return False
        p = circuit.params[pname]
        other = first_user.get(pname)
        if other is not None and other[1] != tuple(shape):
            err(g, f"tied parameter '{pname}' needs shape {list(shape)} here but {list(other[1])} in '{other[0]}'")
            return False
        if p.shape != tuple(shape):
            err(g, f"parameter '{pname}' has shape {list(p.shape)}, expected {list(shape)}")
            return False
        # Tied groups must read the parameter the same way: same leaf family, or the same edges.
        key = _tie_key(g)
        if other is not None and other[2] != key:
            what = "distribution" if isinstance(g, InputGroup) else "edge structure"
            if type(g) is not type(circuit.group(other[0])):
                what = "group kind"
            err(g, f"tied parameter '{pname}' is used with another {what} by '{other[0]}'")
            return False
        first_user.setdefault(pname, (g.name, tuple(shape), key))
        if p.dtype not in NP_DTYPES or (dtype == "i64") != (p.dtype == "i64"):
            err(g, f"parameter '{pname}' has dtype {p.dtype}, expected {dtype}")
            return False
        return True

    scope = circuit.scope()
    for g in circuit:
        if g.units < 1:
            err(g, f"units must be >= 1, got {g.units}")
            continue
        if isinstance(g, InputGroup):
            if not 0 <= g.var < circuit.num_vars:
                err(g, f"variable index {g.var} out of range (circuit has {circuit.num_vars} variables)")
                continue
            if g.dist.kind not in dists.names():
                known = dists.names()
                err(
                    g,
                    f"unknown distribution '{g.dist.kind}'",
                    suggest(g.dist.kind, known) or f"known distributions: {', '.join(known)}",
                )
                continue
            dt = dists.get(g.dist.kind)
            unknown = [k for k, _ in g.dist.args if k not in dt.arg_names]
            if unknown:
                known = ", ".join(dt.arg_names) or "none"
                err(g, f"distribution {g.dist.kind} has no argument '{unknown[0]}' (known: {known})")
                continue
            msg = dt.check_dist(g.dist)
            if msg:
                err(g, msg)
                continue
            dom = circuit.variables[g.var].domain
            if not dt.accepts(g.dist, dom):
                err(g, f"distribution {g.dist} does not fit variable '{circuit.variables[g.var].name}' of domain {dom}")
            shape = dt.param_shape(g.dist, g.units)
            if check_param(g, g.params, shape, dt.param_dtype(g.dist)):
                p = circuit.params[g.params]
                if p.value is not None:
                    msg = dt.check_params(g.dist, np.asarray(p.value))
                    if msg:
                        err(g, msg)
            continue
        if not g.children:
            err(g, "has no children")
            continue
        cu = circuit.child_units(g.name)
        if isinstance(g, ProductGroup):
            if g.pattern == "aligned":
                if len(set(cu)) != 1 or cu[0] != g.units:
                    err(g, f"aligned product needs children of {g.units} units each, got {cu}")
            elif g.pattern == "outer":
                if int(np.prod(cu)) != g.units:
                    err(g, f"outer product of {cu} has {int(np.prod(cu))} units, not {g.units}")
            elif g.pattern == "explicit":
                e = g.edges
                if e is None or e.shape != (g.units, len(g.children)):
                    got = None if e is None else list(e.shape)
                    err(g, f"explicit product edges must have shape [{g.units}, {len(g.children)}], got {got}")
                else:
                    for j, n in enumerate(cu):
                        bad = (e[:, j] < 0) | (e[:, j] >= n)
                        if bad.any():
                            v = int(e[:, j][bad][0])
                            err(g, f"edge index {v} out of range for child '{g.children[j]}' ({n} units)")
                            break
            else:
                err(g, f"unknown product pattern '{g.pattern}'")
            if decomposable and g.attr("waive") != "decomposable":
                seen: set[int] = set()
                for c in g.children:
                    if seen & scope[c]:
                        err(
                            g,
                            f"product is not decomposable: child '{c}' shares variables {sorted(seen & scope[c])[:5]} with an earlier child",
                        )
                        break
                    seen |= scope[c]
            continue
        assert isinstance(g, SumGroup)
        k = sum(cu)
        if g.pattern == "dense":
            check_param(g, g.params, (g.units, k), "f64")
        elif g.pattern == "block":
            if g.block is None or g.mask is None:
                err(g, "block-sparse sum needs block and mask")
                continue
            bm, bk = g.block
            if bm < 1 or bk < 1 or g.units % bm or k % bk:
                err(g, f"block {list(g.block)} does not tile [{g.units}, {k}]")
                continue
            if g.mask.shape != (g.units // bm, k // bk):
                err(g, f"mask has shape {list(g.mask.shape)}, expected {[g.units // bm, k // bk]}")
                continue
            if not g.mask.any(axis=1).all():
                err(g, "a block row of the mask has no edge (a sum node without children)")
            check_param(g, g.params, (g.units, k), "f64")
        elif g.pattern == "explicit":
            e = g.edges
            if e is None or e.ndim != 2 or e.shape[1] != 2 or e.shape[0] == 0:
                err(g, "explicit sum edges must have shape [E, 2] with E >= 1")
                continue
            bad = (e[:, 0] < 0) | (e[:, 0] >= g.units)
            if bad.any():
                err(g, f"edge node index {int(e[bad][0, 0])} out of range ({g.units} units)")
                continue
            bad = (e[:, 1] < 0) | (e[:, 1] >= k)
            if bad.any():
                err(g, f"edge column index {int(e[bad][0, 1])} out of range ({k} child units in all)")
                continue
            flat = e[:, 0] * k + e[:, 1]
            uniq, counts = np.unique(flat, return_counts=True)
            if len(uniq) != len(e):
                dup = int(uniq[counts > 1][0])
                err(g, f"duplicate edge ({dup // k}, {dup % k})")
            if len(np.unique(e[:, 0])) != g.units:
                missing = sorted(set(range(g.units)) - set(np.unique(e[:, 0]).tolist()))
                err(g, f"sum node {missing[0]} has no edge")
            check_param(g, g.params, (len(e),), "f64")
        else:
            err(g, f"unknown sum pattern '{g.pattern}'")
            continue
        p = circuit.params.get(g.params)
        if p is not None and p.value is not None and p.shape == circuit.params[g.params].shape:
            v = np.asarray(p.value)
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                err(g, "sum weights must be finite and non-negative")
        if smooth and g.attr("waive") != "smooth":
            s0 = scope[g.children[0]]
            for c in g.children[1:]:
                if scope[c] != s0:
                    diff = sorted(s0 ^ scope[c])[:5]
                    err(
                        g,
                        f"sum is not smooth: children '{g.children[0]}' and '{c}' have different scopes (differ on {diff})",
                    )
                    break
    return errs


def _tie_key(g) -> object:
    if isinstance(g, InputGroup):
        return ("input", g.dist)
    if isinstance(g, SumGroup):
        arr = lambda a: None if a is None else (a.shape, a.tobytes())
        return ("sum", g.pattern, g.block, arr(g.mask), arr(g.edges))
    return (g.kind,)


def verify(circuit: Circuit, *, smooth: bool = True, decomposable: bool = True) -> Circuit:
    """Raise the first :class:`VerifyError` found; return the circuit unchanged when valid."""
    errs = problems(circuit, smooth=smooth, decomposable=decomposable)
    if errs:
        raise errs[0]
    return circuit
