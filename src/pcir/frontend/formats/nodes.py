"""Scalar PCs (one record per PC node, as the file formats have them) and their conversion to and
from pcir's grouped IR.

Importing groups nodes by *scope class*: all sum nodes with the same scope (the same set of
variables) and the same "same-scope depth" form one sum group; product nodes additionally need
the same tuple of child groups (a product group reads one unit of each child group); leaves
group by variable and family. Because every group is homogeneous in scope, the verifier's
group-level smoothness and decomposability checks are exact: a sum group gets ``waive="smooth"``
only when its nodes really are not smooth (likewise ``waive="decomposable"`` for products). A
~60K-node PSDD becomes a few hundred groups (about one sum group and a few product groups per
vtree node), which the passes then pack into blocks.

Why the grouping is acyclic: along every child -> parent edge the scope grows, or stays the same
and the same-scope depth ``sd`` grows (``sd`` of a node = 1 + the largest ``sd`` of its children
of the same scope, 0 when none), and all nodes of a group share (scope, sd).

Exporting does the inverse: every unit of every group becomes one scalar node (only those
reachable from the root), children before parents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...ir.circuit import Circuit, InputGroup, Param, ProductGroup, SumGroup, Variable, make_attrs
from ...ir.diagnostics import SourceSpan
from ...ir.distributions import Dist, Domain
from ...ir.evaluator import dense_sum_weights as _sum_weights
from ._common import FormatError, span_at

INPUT, PRODUCT, SUM = 0, 1, 2

# Leaf families as the formats have them. value: indicator -> int value; bernoulli -> p;
# categorical -> tuple of probabilities; gaussian -> (mean, std); binomial -> (n, p).
LEAF_FAMILIES = ("indicator", "bernoulli", "categorical", "gaussian", "binomial")


def binomial_pmf(n: int, p: float, k: int | None = None) -> tuple[float, ...]:
    """P(x = 0..k-1) of Binomial(n, p) (k defaults to n + 1; values above n have probability 0)."""
    k = n + 1 if k is None else k
    out = [0.0] * k
    for x in range(min(k, n + 1)):
        if p in (0.0, 1.0):
            out[x] = 1.0 if x == (n if p == 1.0 else 0) else 0.0
        else:
            out[x] = math.exp(
                math.lgamma(n + 1)
                - math.lgamma(x + 1)
                - math.lgamma(n - x + 1)
                + x * math.log(p)
                + (n - x) * math.log1p(-p)
            )
    return tuple(out)


def categorical_row(leaf: tuple, k: int) -> tuple[float, ...]:
    """A discrete leaf (bernoulli, binomial or categorical) as k categorical probabilities."""
    fam, _, v = leaf
    row = [0.0] * k
    if fam == "bernoulli":
        row[0], row[1] = 1.0 - v, v
        return tuple(row)
    if fam == "binomial":
        return binomial_pmf(v[0], v[1], k)
    row[: len(v)] = v
    return tuple(row)


@dataclass
class VarUse:
    """What the leaves of one variable require of its domain (to infer it when the format
    does not declare domains)."""

    k: int = 0  # the smallest categorical domain that fits the discrete leaves (0: none)
    real: bool = False
    first_line: int = 0
    discrete_line: int = 0
    real_line: int = 0


@dataclass
class NodeGraph:
    """A PC as a list of scalar nodes, children before parents (node ids are list positions).

    ``line`` keeps each node's source line for diagnostics; ``vtree`` a vtree id (-1: none).
    """

    filename: str = "<input>"
    source: list[str] | None = None  # the file's lines, to show in diagnostics
    kind: list[int] = field(default_factory=list)
    leaf: list[tuple | None] = field(default_factory=list)  # (family, var, value)
    children: list[tuple[int, ...]] = field(default_factory=list)
    weights: list[tuple[float, ...] | None] = field(default_factory=list)
    line: list[int] = field(default_factory=list)
    vtree: list[int] = field(default_factory=list)
    var_use: dict[int, VarUse] = field(default_factory=dict)
    _indicators: dict[tuple[int, int], int] = field(default_factory=dict)
    _products: dict[tuple[int, ...], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kind)

    def _add(self, kind: int, leaf, children, weights, line: int, vtree: int) -> int:
        self.kind.append(kind)
        self.leaf.append(leaf)
        self.children.append(children)
        self.weights.append(weights)
        self.line.append(line)
        self.vtree.append(vtree)
        return len(self.kind) - 1

    def _use(self, var: int, line: int, *, k: int = 0, real: bool = False) -> None:
        u = self.var_use.get(var)
        if u is None:
            u = self.var_use[var] = VarUse(first_line=line)
        if real:
            u.real = True
            u.real_line = u.real_line or line
        else:
            u.k = max(u.k, k)
            u.discrete_line = u.discrete_line or line

    def indicator(self, var: int, value: int, line: int = 0, vtree: int = -1) -> int:
        """The leaf [x_var == value]; indicators are not learnable, so equal ones are merged."""
        key = (var, value)
        nid = self._indicators.get(key)
        if nid is None:
            self._use(var, line, k=max(2, value + 1))
            nid = self._indicators[key] = self._add(INPUT, ("indicator", var, value), (), None, line, vtree)
        return nid

    def bernoulli(self, var: int, p: float, line: int = 0, vtree: int = -1) -> int:
        self._use(var, line, k=2)
        return self._add(INPUT, ("bernoulli", var, float(p)), (), None, line, vtree)

    def categorical(self, var: int, probs, line: int = 0, vtree: int = -1) -> int:
        probs = tuple(float(p) for p in probs)
        self._use(var, line, k=max(2, len(probs)))
        return self._add(INPUT, ("categorical", var, probs), (), None, line, vtree)

    def binomial(self, var: int, n: int, p: float, line: int = 0, vtree: int = -1) -> int:
        self._use(var, line, k=n + 1)
        return self._add(INPUT, ("binomial", var, (int(n), float(p))), (), None, line, vtree)

    def gaussian(self, var: int, mean: float, std: float, line: int = 0, vtree: int = -1) -> int:
        self._use(var, line, real=True)
        return self._add(INPUT, ("gaussian", var, (float(mean), float(std))), (), None, line, vtree)

    def product(self, children, line: int = 0, vtree: int = -1, *, dedupe: bool = False) -> int:
        """A product node. ``dedupe`` merges it with an earlier product of the same children
        (PSDD elements, which are implicit in the file, are shared this way)."""
        ch = tuple(children)
        if dedupe:
            key = ch if len(ch) != 2 or ch[0] <= ch[1] else (ch[1], ch[0])
            if len(key) > 2:
                key = tuple(sorted(ch))
            nid = self._products.get(key)
            if nid is None:
                nid = self._products[key] = self._add(PRODUCT, None, ch, None, line, vtree)
            return nid
        return self._add(PRODUCT, None, ch, None, line, vtree)

    def sum(self, children, weights, line: int = 0, vtree: int = -1) -> int:
        """A sum node; a child listed twice gets one edge with the summed weight."""
        ch = [int(c) for c in children]
        ws = [float(w) for w in weights]
        if len(set(ch)) != len(ch):
            merged: dict[int, float] = {}
            for c, w in zip(ch, ws, strict=True):
                merged[c] = merged.get(c, 0.0) + w
            ch, ws = list(merged), list(merged.values())
        return self._add(SUM, None, tuple(ch), tuple(ws), line, vtree)

    # ---- variables -------------------------------------------------------------------------
    def infer_variables(self, num_vars: int | None = None, names: list[str] | None = None) -> list[Variable]:
        """Variables 0..n-1 (n = ``num_vars`` or one past the largest used), each with the
        smallest domain that fits its leaves (binary when unused)."""
        n = num_vars if num_vars is not None else (max(self.var_use) + 1 if self.var_use else 0)
        out = []
        for v in range(n):
            u = self.var_use.get(v)
            name = names[v] if names is not None else f"x{v}"
            if u is not None and u.real:
                if u.k:
                    raise FormatError(
                        f"variable {name} has both real-valued (gaussian) and discrete leaves",
                        self.span(max(u.real_line, u.discrete_line)),
                    )
                out.append(Variable(name, Domain.real()))
            else:
                out.append(Variable(name, Domain.categorical(max(2, u.k if u else 2))))
        return out

    def span(self, line: int) -> SourceSpan | None:
        if line <= 0:
            return None
        if self.source is not None and line <= len(self.source):
            text = self.source[line - 1]
            lead = len(text) - len(text.lstrip())
            return span_at(self.filename, line, text, lead + 1, len(text.rstrip()) + 1)
        return SourceSpan(self.filename, line, 1)


# ------------------------------------------------------------------------------------------------
# Scalar -> grouped


def to_circuit(
    g: NodeGraph,
    root: int,
    variables: list[Variable],
    *,
    attrs: dict | None = None,
    sum_attrs_from_vtree: bool = False,
) -> Circuit:
    """Group the nodes reachable from ``root`` into a :class:`Circuit` (see the module doc).

    ``sum_attrs_from_vtree`` keys sum groups by their nodes' vtree id as well and records it as
    the group attribute ``vtree`` (PSDD), so that an export can write it back.
    """
    n = len(g)
    live = bytearray(n)
    live[root] = 1
    for i in range(root, -1, -1):  # ids are topological: children have smaller ids
        if live[i]:
            for c in g.children[i]:
                live[c] = 1
    order = [i for i in range(root + 1) if live[i]]

    domains = [v.domain for v in variables]
    for i in order:
        leaf = g.leaf[i]
        if leaf is not None and leaf[1] >= len(variables):
            raise FormatError(f"variable {leaf[1] + 1} is out of range ({len(variables)} variables)", g.span(g.line[i]))

    # scope classes, interned; memo on the (sorted, distinct) child scope ids
    scope_sets: list[frozenset[int]] = []
    scope_ids: dict[frozenset[int], int] = {}
    union_memo: dict[tuple[int, ...], tuple[int, bool]] = {}

    def intern(s: frozenset[int]) -> int:
        sid = scope_ids.get(s)
        if sid is None:
            sid = scope_ids[s] = len(scope_sets)
            scope_sets.append(s)
        return sid

    sid = [-1] * n
    sd = [0] * n
    gid = [-1] * n  # group index of each node
    unit = [-1] * n  # unit index inside its group
    group_keys: dict[tuple, int] = {}
    members: list[list[int]] = []
    gkind: list[tuple] = []  # the key of each group

    def assign(i: int, key: tuple) -> None:
        k = group_keys.get(key)
        if k is None:
            k = group_keys[key] = len(members)
            members.append([])
            gkind.append(key)
        gid[i] = k
        unit[i] = len(members[k])
        members[k].append(i)

    for i in order:
        kind = g.kind[i]
        if kind == INPUT:
            fam, var, val = g.leaf[i]  # type: ignore[misc]
            sid[i] = intern(frozenset((var,)))
            fam = _family_for_domain(fam, val, domains[var])
            assign(i, ("in", var, fam, i == root))
            continue
        ch = g.children[i]
        if not ch:
            raise FormatError("a node without children", g.span(g.line[i]))
        cs = [sid[c] for c in ch]
        if len(cs) == 2:  # the common case (PSDD elements), without set/sort overhead
            a, b = cs
            distinct = (a,) if a == b else ((a, b) if a < b else (b, a))
        else:
            distinct = tuple(sorted(set(cs)))
        memo = union_memo.get(distinct)
        if memo is None:
            u: frozenset[int] = frozenset().union(*(scope_sets[s] for s in distinct))
            disjoint = sum(len(scope_sets[s]) for s in distinct) == len(u)
            memo = union_memo[distinct] = (intern(u), disjoint)
        s, disjoint = memo
        sid[i] = s
        depth = 0
        for c in ch:
            if sid[c] == s:
                depth = max(depth, sd[c] + 1)
        sd[i] = depth
        solo = i == root  # the root gets a group of its own (one unit: the output)
        if kind == PRODUCT:
            if len(ch) == 2:
                a, b = gid[ch[0]], gid[ch[1]]
                cg = (a, b) if a < b else (b, a)
            else:
                cg = tuple(sorted(gid[c] for c in ch))
            if len(set(cg)) != len(cg):
                raise FormatError(
                    "product node is not decomposable: two of its children are on the same variables",
                    g.span(g.line[i]),
                    "pcir imports products whose children have pairwise different scopes",
                )
            decomposable = disjoint and len(distinct) == len(cs)
            assign(i, ("p", s, depth, cg, decomposable, solo))
        else:
            smooth = len(distinct) == 1
            vt = g.vtree[i] if sum_attrs_from_vtree else -1
            assign(i, ("s", s, depth, smooth, vt, solo))

    # ---- order and name the groups --------------------------------------------------------------
    # Names, group order, child order and the unit order of product groups are canonical: they
    # depend on the circuit's structure, not on the order of the file's lines. Re-importing an
    # export (whose line order differs, and whose PSDD products are implicit) then gives exactly
    # the same circuit.
    gchildren: list[list[int]] = []
    for k, key in enumerate(gkind):
        if key[0] == "in":
            gchildren.append([])
        elif key[0] == "p":
            gchildren.append(list(key[3]))
        else:
            gchildren.append(sorted({gid[c] for i in members[k] for c in g.children[i]}))
    crank = _canonical_rank(gkind, gchildren, scope_sets)
    by_rank = sorted(range(len(gkind)), key=crank.__getitem__)
    names: list[str] = [""] * len(gkind)
    counters = {"in": 0, "p": 0, "s": 0}
    for k in by_rank:
        pre = gkind[k][0]
        names[k] = f"{pre}{counters[pre]}"
        counters[pre] += 1
    _canonical_units(g, order, members, gkind, gid, crank, unit, domains)

    groups = []
    params: dict[str, Param] = {}
    for k in by_rank:
        key = gkind[k]
        name = names[k]
        nodes = members[k]
        span = g.span(g.line[nodes[0]])
        if key[0] == "in":
            _, var, fam, _ = key
            dist, value = _input_params(g, nodes, fam, domains[var])
            pname = f"{name}.w"
            params[pname] = Param.of(value, "i64" if fam == "indicator" else "f64")
            groups.append(InputGroup(name, var, len(nodes), dist, pname, (), span))
        elif key[0] == "p":
            child_groups = sorted(key[3], key=crank.__getitem__)
            col = {cgk: j for j, cgk in enumerate(child_groups)}
            edges = np.empty((len(nodes), len(child_groups)), dtype=np.int64)
            for u_, i in enumerate(nodes):
                for c in g.children[i]:
                    edges[u_, col[gid[c]]] = unit[c]
            attrs_ = make_attrs() if key[4] else make_attrs(waive="decomposable")
            groups.append(
                ProductGroup(name, tuple(names[c] for c in child_groups), "explicit", len(nodes), edges, attrs_, span)
            )
        else:
            child_groups = sorted(gchildren[k], key=crank.__getitem__)
            offset = {}
            off = 0
            for cgk in child_groups:
                offset[cgk] = off
                off += len(members[cgk])
            kcols = off
            rows: list[int] = []
            cols: list[int] = []
            ws: list[float] = []
            for u_, i in enumerate(nodes):
                for c, w in zip(g.children[i], g.weights[i], strict=True):  # type: ignore[arg-type]
                    rows.append(u_)
                    cols.append(offset[gid[c]] + unit[c])
                    ws.append(w)
            ad: dict = {}
            if not key[3]:
                ad["waive"] = "smooth"
            if key[4] >= 0:
                ad["vtree"] = key[4]
            pname = f"{name}.w"
            units = len(nodes)
            child_names = tuple(names[c] for c in child_groups)
            if len(ws) == units * kcols:
                # every node reaches every column: a dense weight matrix
                dense = np.zeros((units, kcols))
                dense[rows, cols] = ws
                params[pname] = Param.of(dense, "f64")
                groups.append(SumGroup(name, units, child_names, "dense", pname, attrs=make_attrs(ad), span=span))
            else:
                e = np.stack([np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)], axis=1)
                perm = np.lexsort((e[:, 1], e[:, 0]))
                params[pname] = Param.of(np.asarray(ws, dtype=np.float64)[perm], "f64")
                groups.append(
                    SumGroup(
                        name, units, child_names, "explicit", pname, edges=e[perm], attrs=make_attrs(ad), span=span
                    )
                )
    return Circuit(variables, groups, params, [names[gid[root]]], make_attrs(attrs or {}))


def _canonical_rank(gkind: list[tuple], gchildren: list[list[int]], scope_sets: list[frozenset[int]]) -> list[int]:
    """A canonical topological position of each group: by level (longest path from the
    inputs), then by a structural key (kind, variables, same-scope depth, children's positions,
    flags) that is unique among the groups (each was made from a distinct key)."""
    n = len(gkind)
    level = [-1] * n

    def lev(k: int) -> int:
        stack = [k]
        while stack:
            t = stack[-1]
            pending = [c for c in gchildren[t] if level[c] < 0]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            level[t] = 1 + max((level[c] for c in gchildren[t]), default=-1)
        return level[k]

    for k in range(n):
        if level[k] < 0:
            lev(k)
    crank = [-1] * n
    pos = 0
    by_level: dict[int, list[int]] = {}
    for k in range(n):
        by_level.setdefault(level[k], []).append(k)
    for lv in sorted(by_level):

        def key(k: int) -> tuple:
            kd = gkind[k]
            if kd[0] == "in":  # ("in", var, family, solo)
                return (0, (kd[1],), 0, (), kd[2], kd[3])
            scope = tuple(sorted(scope_sets[kd[1]]))
            kids = tuple(sorted(crank[c] for c in gchildren[k]))
            if kd[0] == "p":  # ("p", scope, sd, child groups, decomposable, solo)
                return (1, scope, kd[2], kids, str(kd[4]), kd[5])
            return (2, scope, kd[2], kids, f"{kd[3]}/{kd[4]}", kd[5])  # ("s", scope, sd, smooth, vtree, solo)

        for k in sorted(by_level[lv], key=key):
            crank[k] = pos
            pos += 1
    return crank


def _canonical_units(g, order, members, gkind, gid, crank, unit, domains) -> None:
    """Order the units of every group canonically (``members`` and ``unit`` in place).

    Bottom-up, each unit gets a structural id within its group (leaf parameters; a product's
    children's ids; a sum's (child group, child id, weight) edges), so equal ids mean equal
    sub-circuits. Top-down, units are sorted by (structural id, their parents' positions and
    edge weights): what remains tied is interchangeable (swapping gives the same arrays).
    """
    skid = [0] * len(g)
    by_rank = sorted(range(len(gkind)), key=crank.__getitem__)
    for k in by_rank:
        kd = gkind[k]
        keys = {}
        for i in members[k]:
            if kd[0] == "in":
                keys[i] = _leaf_key(g.leaf[i], kd[2], domains[kd[1]])
            elif kd[0] == "p":
                keys[i] = tuple(skid[c] for c in sorted(g.children[i], key=lambda c: crank[gid[c]]))
            else:
                keys[i] = tuple(
                    sorted((crank[gid[c]], skid[c], w) for c, w in zip(g.children[i], g.weights[i], strict=True))
                )
        distinct = {key: j for j, key in enumerate(sorted(set(keys.values())))}
        for i in members[k]:
            skid[i] = distinct[keys[i]]
    parents: dict[int, list[tuple[int, float]]] = {}

    def parents_of(i: int) -> list[tuple[int, float]]:
        if not parents:  # built on the first tie only: most files have none
            for q in order:
                ws = g.weights[q]
                for j, c in enumerate(g.children[q]):
                    parents.setdefault(c, []).append((q, ws[j] if ws is not None else 0.0))
        return parents.get(i, [])

    for k in reversed(by_rank):
        mem = members[k]
        mem.sort(key=skid.__getitem__)
        # only units with equal structure need their parents to tell them apart
        j = 0
        while j < len(mem):
            e = j + 1
            while e < len(mem) and skid[mem[e]] == skid[mem[j]]:
                e += 1
            if e - j > 1:
                mem[j:e] = sorted(mem[j:e], key=lambda i: sorted((crank[gid[p]], unit[p], w) for p, w in parents_of(i)))
            j = e
        for u_, i in enumerate(mem):
            unit[i] = u_


def _leaf_key(leaf: tuple, fam: str, domain: Domain) -> tuple:
    if fam == "categorical":
        return categorical_row(leaf, domain.k)
    v = leaf[2]
    if fam.startswith("binomial"):
        return (v[1],)
    return tuple(v) if isinstance(v, tuple) else (v,)


def _family_for_domain(fam: str, value, domain: Domain) -> str:
    """The group family of a leaf: its own, or categorical when the variable has more values
    than the leaf's family covers (a Bernoulli on a 3-valued variable, say)."""
    if fam == "bernoulli" and domain.k > 2:
        return "categorical"
    if fam == "binomial":
        n = value[0]
        return "categorical" if domain.k > n + 1 else f"binomial:{n}"
    return fam


def _input_params(g: NodeGraph, nodes: list[int], fam: str, domain: Domain) -> tuple[Dist, np.ndarray]:
    vals = [g.leaf[i][2] for i in nodes]  # type: ignore[index]
    if fam == "indicator":
        return Dist("indicator"), np.asarray(vals, dtype=np.int64)
    if fam == "bernoulli":
        return Dist("bernoulli"), np.asarray(vals, dtype=np.float64)
    if fam == "gaussian":
        return Dist("gaussian"), np.asarray(vals, dtype=np.float64).reshape(len(nodes), 2)
    if fam.startswith("binomial:"):
        return Dist.make("binomial", n=int(fam.split(":")[1])), np.asarray([v[1] for v in vals], dtype=np.float64)
    out = np.array([categorical_row(g.leaf[i], domain.k) for i in nodes], dtype=np.float64)  # type: ignore[arg-type]
    return Dist.make("categorical", k=domain.k), out


# ------------------------------------------------------------------------------------------------
# Grouped -> scalar


@dataclass
class FlatNode:
    """One scalar node of an exported circuit: ``leaf`` = (family, var, value) for inputs,
    else ``children`` (node ids) and, for sums, ``weights``."""

    kind: int
    leaf: tuple | None = None
    children: tuple[int, ...] = ()
    weights: tuple[float, ...] | None = None
    group: str = ""


@dataclass
class FlatCircuit:
    variables: tuple[Variable, ...]
    nodes: list[FlatNode]
    attrs: dict
    group_attrs: dict[str, dict]

    @property
    def root(self) -> int:
        return len(self.nodes) - 1


def flatten(circuit: Circuit, fmt: str) -> FlatCircuit:
    """Every unit reachable from the (single, one-unit) root as a scalar node, children first.

    Raises a :class:`FormatError` naming the group when ``fmt`` cannot express the circuit's
    root shape or a leaf family (the format-specific checks are the writer's).
    """
    if len(circuit.roots) != 1:
        raise FormatError(f"{fmt} files have one root node; this circuit has {len(circuit.roots)} roots")
    rname = circuit.roots[0]
    if circuit.units(rname) != 1:
        raise FormatError(
            f"{fmt} files have one root node; the root group '{rname}' has {circuit.units(rname)} units",
            circuit.group(rname).span,
        )
    # children tables per group, then reachability from the root node, top-down
    table: dict[str, list] = {}
    for grp in circuit:
        if isinstance(grp, InputGroup):
            table[grp.name] = _leaves_of(circuit, grp, fmt)
        elif isinstance(grp, ProductGroup):
            idx = grp.child_index(circuit.child_units(grp.name))
            table[grp.name] = [tuple((c, int(idx[u, j])) for j, c in enumerate(grp.children)) for u in range(grp.units)]
        else:
            assert isinstance(grp, SumGroup)
            colref = [(c, u) for c in grp.children for u in range(circuit.units(c))]
            if grp.pattern == "explicit":
                assert grp.edges is not None
                e = np.asarray(grp.edges)
                wv = np.asarray(circuit.param_value(grp.params), dtype=np.float64)
                perm = np.lexsort((e[:, 1], e[:, 0]))
                e, wv = e[perm], wv[perm]
                bounds = np.searchsorted(e[:, 0], np.arange(grp.units + 1))
                rows = [
                    (
                        tuple(colref[j] for j in e[bounds[u] : bounds[u + 1], 1]),
                        tuple(float(x) for x in wv[bounds[u] : bounds[u + 1]]),
                    )
                    for u in range(grp.units)
                ]
            else:
                k = circuit.num_columns(grp.name)
                w = _sum_weights(circuit, grp)
                mask = grp.edge_mask(k)
                rows = []
                for u in range(grp.units):
                    cols = np.nonzero(mask[u])[0]
                    rows.append((tuple(colref[j] for j in cols), tuple(float(w[u, j]) for j in cols)))
            table[grp.name] = rows
    live: set[tuple[str, int]] = {(rname, 0)}
    for gname in reversed(circuit.topo_order()):
        grp = circuit.group(gname)
        if isinstance(grp, InputGroup):
            continue
        for u in range(grp.units):
            if (gname, u) not in live:
                continue
            refs = table[gname][u] if isinstance(grp, ProductGroup) else table[gname][u][0]
            live.update(refs)
    ids: dict[tuple[str, int], int] = {}
    nodes: list[FlatNode] = []
    for grp in circuit:
        for u in range(grp.units):
            if (grp.name, u) not in live:
                continue
            ids[(grp.name, u)] = len(nodes)
            if isinstance(grp, InputGroup):
                nodes.append(FlatNode(INPUT, leaf=table[grp.name][u], group=grp.name))
            elif isinstance(grp, ProductGroup):
                nodes.append(FlatNode(PRODUCT, children=tuple(ids[r] for r in table[grp.name][u]), group=grp.name))
            else:
                refs, ws = table[grp.name][u]
                nodes.append(FlatNode(SUM, children=tuple(ids[r] for r in refs), weights=ws, group=grp.name))
    return FlatCircuit(circuit.variables, nodes, dict(circuit.attrs), {grp.name: dict(grp.attrs) for grp in circuit})


def _leaves_of(circuit: Circuit, grp: InputGroup, fmt: str) -> list[tuple]:
    kind = grp.dist.kind
    val = np.asarray(circuit.param_value(grp.params))
    v = grp.var
    if kind == "indicator":
        return [("indicator", v, int(x)) for x in val]
    if kind == "literal":
        return [("indicator", v, int(grp.dist.arg("value")))] * grp.units
    if kind == "bernoulli":
        return [("bernoulli", v, float(x)) for x in val]
    if kind == "gaussian":
        return [("gaussian", v, (float(r[0]), float(r[1]))) for r in val]
    if kind == "binomial":
        n = int(grp.dist.arg("n"))
        return [("binomial", v, (n, float(x))) for x in val]
    if kind == "categorical":
        return [("categorical", v, tuple(float(x) for x in r)) for r in val]
    domain = circuit.variables[v].domain
    if not domain.is_discrete:
        raise FormatError(f"{fmt} cannot express group '{grp.name}': {kind} leaves", grp.span)
    # any other discrete family is exactly the categorical of its probabilities over the domain
    from ...ir import distributions as dists

    lp = dists.get(kind).log_prob(grp.dist, val, np.arange(domain.k, dtype=np.float64))
    probs = np.exp(np.asarray(lp, dtype=np.float64)).T  # (units, k)
    return [("categorical", v, tuple(float(x) for x in r)) for r in probs]


def fmt_float(x: float) -> str:
    """Shortest text that reads back to the same double (``inf``/``-inf`` spelled so)."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def log_text(p: float) -> str:
    """log(p) as text (``-inf`` for 0)."""
    return "-inf" if p <= 0.0 else fmt_float(math.log(p))
