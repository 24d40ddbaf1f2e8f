"""collapse-nodes: local rewrites run to a fixed point.

Each rule sweeps the whole graph once (children before parents) and rewrites every match it
finds; the pass repeats the rule list until a sweep changes nothing, and raises
:class:`PassError` if that takes more than ``max-iterations`` sweeps (a rule loop is a bug).

Rules (each preserves the circuit's function exactly; tied parameters are never rewritten, so
EM on tied parameters keeps its meaning):

``dead-groups``        groups no root reaches, and parameters no group uses, go.
``hash-cons``          groups of the same kind with the same children, pattern and parameter
                       name (tying) compute the same values: keep the first, redirect the rest.
``single-child-product``  a product of one child is a gather: the identity disappears; another
                       gather is folded into its parents (sums re-map columns, products compose
                       their index).
``identity-sum``       a sum of one child whose node i reads column i with weight 1 disappears.
``flatten-products``   a product reading a product reads that product's children instead.
``merge-sums``         a sum reading a sum whose only parent it is absorbs it: ``W = W_s @ W_t``
                       (columns of children they share are added).
``merge-duplicate-children``  a sum listing a child twice adds the two column blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..ir.circuit import Circuit, InputGroup, ProductGroup, SumGroup
from ..ir.diagnostics import PassError
from .base import Pass, PassStats, register_pass
from .cleanup import ANNOTATIONS
from .rewrite import make_product, make_sum
from .workspace import Workspace

# Dense matrix products are used for merging dense sums up to this many entries of the column
# transform; beyond it the sparse join is used (memory bounded by the number of result terms).
_DENSE_TRANSFORM_LIMIT = 1 << 24


# ---- helpers on the workspace ----------------------------------------------------------------


def _untied(users: dict[str, list[str]], g) -> bool:
    return len(users.get(g.params, ())) == 1


def _sum_coo(ws: Workspace, s: SumGroup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, weights) of every edge of ``s``."""
    k = ws.num_columns(s.name)
    w = ws.param_value(s.params).astype(np.float64)
    if s.pattern == "explicit":
        assert s.edges is not None
        return s.edges[:, 0], s.edges[:, 1], w
    if s.pattern == "block":
        assert s.mask is not None and s.block is not None
        m = np.kron(s.mask, np.ones(s.block, dtype=bool)).astype(bool)
        r, c = np.nonzero(m)
        return r, c, w[r, c]
    r = np.repeat(np.arange(s.units), k)
    c = np.tile(np.arange(k), s.units)
    return r, c, w.reshape(-1)


def _product_index(ws: Workspace, p: ProductGroup) -> np.ndarray:
    return p.child_index(ws.child_units(p.name))


def _dedupe_children(children: list[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    uniq = tuple(dict.fromkeys(children))
    return uniq, {c: i for i, c in enumerate(uniq)}


def _rewrite_sum(
    ws: Workspace,
    s: SumGroup,
    new_children: tuple[str, ...],
    m_old: np.ndarray,
    m_new: np.ndarray,
    m_w: np.ndarray,
) -> None:
    """Replace ``s`` by the sum over ``new_children`` with weights ``W_s @ M``.

    ``M`` (K_old x K_new) is given as coordinates: old column ``m_old[i]`` feeds new column
    ``m_new[i]`` with factor ``m_w[i]``. The edge pattern is the structural product of the two.
    """
    k_old = ws.num_columns(s.name)
    k_new = sum(ws.units(c) for c in new_children)
    dtype = "f64"  # products and sums of weights are computed in f64; rounding them to f32 would change the function
    if s.pattern == "dense" and k_old * k_new <= _DENSE_TRANSFORM_LIMIT:
        m = np.zeros((k_old, k_new))
        np.add.at(m, (m_old, m_new), m_w)
        w_new = ws.param_value(s.params).astype(np.float64) @ m
        covered = np.zeros(k_new, dtype=bool)
        covered[m_new] = True
        cols_used = np.nonzero(covered)[0]
        rows = np.repeat(np.arange(s.units), len(cols_used))
        cols = np.tile(cols_used, s.units)
        weights = w_new[:, cols_used].reshape(-1)
    else:
        r, c, w = _sum_coo(ws, s)
        order = np.argsort(m_old, kind="stable")
        counts = np.bincount(m_old, minlength=k_old)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        reps = counts[c]
        edge_idx = np.repeat(np.arange(len(c)), reps)
        first = np.repeat(np.cumsum(reps) - reps, reps)
        within = np.arange(len(edge_idx)) - first
        m_idx = order[starts[c[edge_idx]] + within]
        rows, cols, weights = r[edge_idx], m_new[m_idx], w[edge_idx] * m_w[m_idx]
    g, param = make_sum(s.name, s.units, new_children, k_new, rows, cols, weights, s.params, dtype, s.attrs, s.span)
    ws.params[s.params] = param
    ws.put(g)


# ---- rules -----------------------------------------------------------------------------------


def rule_dead_groups(ws: Workspace, opts: CollapseNodes) -> int:
    return ws.remove_dead()


def _cons_key(ws: Workspace, g) -> tuple:
    attrs = tuple((k, v) for k, v in g.attrs if k not in ANNOTATIONS)
    if isinstance(g, InputGroup):
        return ("input", g.var, g.units, g.dist, g.params, attrs)
    if isinstance(g, ProductGroup):
        e = None if g.edges is None else g.edges.tobytes()
        return ("product", g.children, g.pattern, g.units, e, attrs)
    e = None if g.edges is None else g.edges.tobytes()
    m = None if g.mask is None else (g.mask.shape, g.mask.tobytes())
    return ("sum", g.children, g.units, g.pattern, g.params, m, g.block, e, attrs)


def rule_hash_cons(ws: Workspace, opts: CollapseNodes) -> int:
    seen: dict[tuple, str] = {}
    mapping: dict[str, str] = {}
    for name in list(ws.groups):
        g = ws.groups[name]
        if any(c in mapping for c in g.children):
            g = replace(g, children=tuple(mapping.get(c, c) for c in g.children))
            ws.groups[name] = g
        key = _cons_key(ws, g)
        if key in seen:
            mapping[name] = seen[key]
        else:
            seen[key] = name
    ws.substitute(mapping)
    return len(mapping)


def rule_single_child_product(ws: Workspace, opts: CollapseNodes) -> int:
    parents = ws.parents()
    users = ws.param_users()
    roots = set(ws.roots)
    n = 0
    for name in list(ws.groups):
        p = ws.groups.get(name)
        if not isinstance(p, ProductGroup) or len(p.children) != 1 or p.attr("waive"):
            continue
        child = p.children[0]
        idx = _product_index(ws, p)[:, 0]
        if p.units == ws.units(child) and np.array_equal(idx, np.arange(p.units)):
            ws.substitute({name: child})
            n += 1
            continue
        if name in roots:
            continue
        ps = [ws.groups[q] for q in parents[name]]
        if any(isinstance(q, SumGroup) and not _untied(users, q) for q in ps):
            continue
        for q in ps:
            q = ws.groups[q.name]
            if isinstance(q, ProductGroup):
                qi = _product_index(ws, q)
                cols = [idx[qi[:, j]] if c == name else qi[:, j] for j, c in enumerate(q.children)]
                ch = tuple(child if c == name else c for c in q.children)
                index = np.stack(cols, axis=1)
                ws.put(make_product(q.name, ch, [ws.units(c) for c in ch], index, q.attrs, q.span))
            else:
                assert isinstance(q, SumGroup)
                new_children, pos = _dedupe_children([child if c == name else c for c in q.children])
                new_off = np.concatenate([[0], np.cumsum([ws.units(c) for c in new_children])])
                olds, news = [], []
                off = 0
                for c in q.children:
                    u = ws.units(c)
                    if c == name:
                        olds.append(np.arange(off, off + u))
                        news.append(new_off[pos[child]] + idx)
                    else:
                        olds.append(np.arange(off, off + u))
                        news.append(new_off[pos[c]] + np.arange(u))
                    off += u
                mo, mn = np.concatenate(olds), np.concatenate(news)
                _rewrite_sum(ws, q, new_children, mo, mn, np.ones(len(mo)))
        n += 1
    return n


def _is_identity_sum(ws: Workspace, s: SumGroup) -> bool:
    if len(s.children) != 1 or s.units != ws.units(s.children[0]):
        return False
    lazy = ws.params[s.params].value is None
    if s.pattern == "explicit":
        assert s.edges is not None
        e = s.edges
        if len(e) != s.units or not np.array_equal(np.sort(e[:, 0]), np.arange(s.units)):
            return False
        if not np.array_equal(e[:, 0], e[:, 1]):
            return False
        # one edge per node: a lazily initialised weight is normalised to exactly 1
        return lazy or bool(np.all(ws.param_value(s.params) == 1.0))
    if s.units == 1 and s.pattern == "dense":
        return lazy or float(ws.param_value(s.params)[0, 0]) == 1.0
    if lazy or s.units > 4096:
        return False
    w = ws.param_value(s.params).astype(np.float64)
    if s.pattern == "block":
        w = w * s.edge_mask(s.units)
    return bool(np.array_equal(w, np.eye(s.units)))


def rule_identity_sum(ws: Workspace, opts: CollapseNodes) -> int:
    users = ws.param_users()
    n = 0
    for name in list(ws.groups):
        s = ws.groups.get(name)
        if isinstance(s, SumGroup) and not s.attr("waive") and _untied(users, s) and _is_identity_sum(ws, s):
            ws.substitute({name: s.children[0]})
            n += 1
    return n


def rule_flatten_products(ws: Workspace, opts: CollapseNodes) -> int:
    n = 0
    for name in list(ws.groups):
        p = ws.groups[name]
        if not isinstance(p, ProductGroup):
            continue
        inner = [c for c in p.children if isinstance(ws.groups[c], ProductGroup) and not ws.groups[c].attr("waive")]
        if not inner:
            continue
        idx = _product_index(ws, p)
        children: list[str] = []
        cols: list[np.ndarray] = []
        for j, c in enumerate(p.children):
            q = ws.groups[c]
            if c in inner:
                assert isinstance(q, ProductGroup)
                qi = _product_index(ws, q)
                for jj, cc in enumerate(q.children):
                    children.append(cc)
                    cols.append(qi[idx[:, j], jj])
            else:
                children.append(c)
                cols.append(idx[:, j])
        index = np.stack(cols, axis=1)
        ws.put(make_product(name, tuple(children), [ws.units(c) for c in children], index, p.attrs, p.span))
        n += 1
    return n


def rule_merge_sums(ws: Workspace, opts: CollapseNodes) -> int:
    parents = ws.parents()
    users = ws.param_users()
    roots = set(ws.roots)
    n = 0
    for name in list(ws.groups):
        s = ws.groups[name]
        if not isinstance(s, SumGroup) or not _untied(users, s) or s.attr("waive"):
            continue
        expand = {
            c
            for c in s.children
            if isinstance(ws.groups[c], SumGroup)
            and parents[c] == [name]
            and c not in roots
            and _untied(users, ws.groups[c])
            and not ws.groups[c].attr("waive")
        }
        if not expand:
            continue
        flat: list[str] = []
        for c in s.children:
            flat.extend(ws.groups[c].children if c in expand else (c,))
        new_children, pos = _dedupe_children(flat)
        new_off = np.concatenate([[0], np.cumsum([ws.units(c) for c in new_children])])
        olds, news, ws_ = [], [], []
        off = 0
        for c in s.children:
            u = ws.units(c)
            if c in expand:
                t = ws.groups[c]
                assert isinstance(t, SumGroup)
                r, cc, w = _sum_coo(ws, t)
                t_off = np.concatenate([[0], np.cumsum(ws.child_units(c))])
                col_child = np.searchsorted(t_off, cc, side="right") - 1
                base = np.array([new_off[pos[x]] for x in t.children])
                olds.append(off + r)
                news.append(base[col_child] + (cc - t_off[col_child]))
                ws_.append(w)
            else:
                olds.append(np.arange(off, off + u))
                news.append(new_off[pos[c]] + np.arange(u))
                ws_.append(np.ones(u))
            off += u
        _rewrite_sum(ws, s, new_children, np.concatenate(olds), np.concatenate(news), np.concatenate(ws_))
        n += 1
    return n


def rule_merge_duplicate_children(ws: Workspace, opts: CollapseNodes) -> int:
    users = ws.param_users()
    n = 0
    for name in list(ws.groups):
        s = ws.groups[name]
        if not isinstance(s, SumGroup) or len(set(s.children)) == len(s.children) or not _untied(users, s):
            continue
        new_children, pos = _dedupe_children(list(s.children))
        new_off = np.concatenate([[0], np.cumsum([ws.units(c) for c in new_children])])
        olds, news = [], []
        off = 0
        for c in s.children:
            u = ws.units(c)
            olds.append(np.arange(off, off + u))
            news.append(new_off[pos[c]] + np.arange(u))
            off += u
        mo = np.concatenate(olds)
        _rewrite_sum(ws, s, new_children, mo, np.concatenate(news), np.ones(len(mo)))
        n += 1
    return n


Rule = Callable[[Workspace, "CollapseNodes"], int]


@register_pass
@dataclass(frozen=True)
class CollapseNodes(Pass):
    """Local simplifications to a fixed point (see the module docstring for the rules).

    Options: ``merge-sums`` (sum∘sum collapse; it changes the parametrisation a later EM step
    trains, though not the function), ``flatten-products``, ``hash-cons``, ``max-iterations``
    (sweeps before giving up with an error).
    """

    name = "collapse-nodes"
    summary = "fold sum-of-sum, flatten products, drop identities, merge duplicates, remove dead groups"

    merge_sums: bool = True
    flatten_products: bool = True
    hash_cons: bool = True
    max_iterations: int = 64

    def __post_init__(self):
        if self.max_iterations < 1:
            raise PassError(f"option 'max-iterations' of pass '{self.name}' must be >= 1, got {self.max_iterations}")

    def rules(self) -> list[tuple[str, Rule]]:
        rules: list[tuple[str, Rule]] = [("dead-groups", rule_dead_groups)]
        if self.hash_cons:
            rules.append(("hash-cons", rule_hash_cons))
        rules += [("single-child-product", rule_single_child_product), ("identity-sum", rule_identity_sum)]
        if self.flatten_products:
            rules.append(("flatten-products", rule_flatten_products))
        if self.merge_sums:
            rules.append(("merge-sums", rule_merge_sums))
        rules.append(("merge-duplicate-children", rule_merge_duplicate_children))
        return rules

    def apply_with_stats(self, circuit: Circuit) -> tuple[Circuit, PassStats]:
        ws = Workspace(circuit)
        fired: dict[str, int] = {}
        rules = self.rules()
        iteration = 0
        while True:
            iteration += 1
            this_round: dict[str, int] = {}
            for rname, rule in rules:
                k = rule(ws, self)
                if k:
                    this_round[rname] = k
                    fired[rname] = fired.get(rname, 0) + k
            if not this_round:
                break
            if iteration >= self.max_iterations:
                raise PassError(
                    f"pass '{self.name}' did not reach a fixed point after {self.max_iterations} iterations "
                    f"(still rewriting: {', '.join(f'{k} x{v}' for k, v in this_round.items())})",
                    hint="raise max-iterations, or report the circuit: a rule loop is a bug",
                )
        stats: PassStats = {"iterations": iteration}
        stats.update({f"rewrites.{k}": v for k, v in fired.items()})
        if not fired:
            return circuit, stats
        return ws.build(), stats
