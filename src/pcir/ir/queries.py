"""Reference queries (numpy, float64): conditionals, sampling and MAP, on top of the evaluator.

Slow and obviously correct, like :mod:`pcir.ir.evaluator`: the oracle the GPU queries are tested
against. Data conventions are the evaluator's: ``x`` is [N, V] (a single row [V] is a batch of
one), ``missing`` a bool mask of the same shape (True = marginalised / unknown).

* :func:`log_likelihood` / :func:`marginal`: per-sample log p(x) with missing entries summed out.
* :func:`conditional`: ``P(x_v = a | e)`` for each target variable v and each value a of its
  domain, where the evidence e is every variable that is neither missing nor a target.
* :func:`sample`: top-down ancestral sampling, unconditional or conditioned on evidence.
* :func:`map_assignment`: max-product upward pass and backtracking (MPE of the unknowns given
  the evidence); exact on deterministic circuits, an approximation otherwise.

A row whose evidence has probability 0 has no conditional: :func:`conditional` gives NaN there,
:func:`sample` and :func:`map_assignment` raise :class:`DataError` naming the row.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from . import distributions as dists
from .circuit import Circuit, InputGroup, ProductGroup, SumGroup
from .diagnostics import DataError, PcirError
from .evaluator import check_data, flows, forward, product_values
from .evaluator import dense_sum_weights as _sum_weights
from .evaluator import log_likelihood as _ll

__all__ = [
    "conditional",
    "is_smooth_and_decomposable",
    "log_likelihood",
    "map_assignment",
    "marginal",
    "resolve_targets",
    "sample",
]


def log_likelihood(circuit: Circuit, x, missing=None) -> np.ndarray:
    """Per-sample log-likelihood [N] (missing entries, by default the NaN ones, marginalised)."""
    xa, miss = _prepare(circuit, x, missing)
    return _single_root(circuit, _ll(circuit, np.where(miss, 0.0, xa), miss))


def marginal(circuit: Circuit, x, missing=None) -> np.ndarray:
    """Per-sample log-probability [N] of the observed entries (``missing`` summed out)."""
    return log_likelihood(circuit, x, missing)


def _single_root(circuit: Circuit, v: np.ndarray) -> np.ndarray:
    if v.ndim != 1:
        raise PcirError(f"root '{circuit.roots[0]}' has {v.shape[1]} units; queries need a root of one unit")
    return v


def _root_values(circuit: Circuit, vals: dict[str, np.ndarray]) -> np.ndarray:
    r = vals[circuit.roots[0]]
    if r.shape[1] != 1:
        raise PcirError(f"root '{circuit.roots[0]}' has {r.shape[1]} units; queries need a root of one unit")
    return r[:, 0]


def resolve_targets(circuit: Circuit, targets: Iterable[int | str]) -> list[int]:
    """Variable indices from indices or names (errors name the unknown one)."""
    names = {v.name: i for i, v in enumerate(circuit.variables)}
    out = []
    for t in targets:
        if isinstance(t, str) and t not in names and t.lstrip("-").isdigit():
            t = int(t)
        if isinstance(t, str):
            if t not in names:
                from .diagnostics import suggest

                raise DataError(f"unknown target variable '{t}'", hint=suggest(t, names))
            out.append(names[t])
        else:
            i = int(t)
            if not 0 <= i < circuit.num_vars:
                raise DataError(f"target variable {i} out of range (the circuit has {circuit.num_vars} variables)")
            out.append(i)
    if len(set(out)) != len(out):
        raise DataError("a target variable is listed twice")
    return out


def _prepare(circuit: Circuit, x, missing) -> tuple[np.ndarray, np.ndarray]:
    """Like check_data, but NaN entries count as missing when no mask is given."""
    xa = np.asarray(x, dtype=np.float64)
    if xa.ndim == 1:
        xa = xa[None, :]
    if missing is None:
        missing = np.isnan(xa)
    else:
        missing = np.asarray(missing, dtype=bool)
        if missing.ndim == 1:
            missing = missing[None, :]
    return check_data(circuit, xa, missing)


def conditional(
    circuit: Circuit,
    x,
    missing=None,
    targets: Iterable[int | str] | None = None,
    *,
    method: str = "auto",
) -> dict[int, np.ndarray]:
    """``{v: P[N, k_v]}`` with ``P[b, a] = P(x_v = a | evidence_b)`` for every target ``v``.

    The evidence of row b is every variable that is neither missing in that row nor a target
    (targets are summed out for each other: these are per-variable conditionals, not a joint).
    Target values in ``x`` are ignored. ``targets`` defaults to every variable missing in any row.
    Each row sums to 1 over the variable's domain; rows whose evidence has probability 0 are NaN.

    ``method``: ``"flows"`` reads all targets off one upward and one downward pass
    (``P(x_v = a, e) = sum over leaves u on v of dP/dp_u * p_u(a)``, exact for smooth and
    decomposable circuits), ``"enumerate"`` runs one marginal pass per target and value (any
    circuit), ``"auto"`` picks flows when the circuit is smooth and decomposable.
    """
    xa, miss = _prepare(circuit, x, missing)
    tlist = (
        resolve_targets(circuit, targets) if targets is not None else [int(v) for v in np.nonzero(miss.any(axis=0))[0]]
    )
    for v in tlist:
        dom = circuit.variables[v].domain
        if not dom.is_discrete:
            raise DataError(
                f"conditional of variable {circuit.variables[v].name}: only discrete variables have P(x = value)"
            )
    if method not in ("auto", "flows", "enumerate"):
        raise PcirError(f"unknown conditional method '{method}' (auto, flows or enumerate)")
    if method == "auto":
        method = "flows" if is_smooth_and_decomposable(circuit) else "enumerate"
    eff = miss.copy()
    eff[:, tlist] = True
    xe = np.where(eff, 0.0, xa)
    out: dict[int, np.ndarray] = {}
    if method == "enumerate":
        for v in tlist:
            k = circuit.variables[v].domain.k
            cols = []
            for a in range(k):
                xv = xe.copy()
                xv[:, v] = a
                m = eff.copy()
                m[:, v] = False
                cols.append(log_likelihood(circuit, xv, m))
            out[v] = _normalise_log(np.stack(cols, axis=1))
        return out
    fl = flows(circuit, xe, eff)
    _root_values(circuit, fl.values)
    acc = {v: np.zeros((xa.shape[0], circuit.variables[v].domain.k)) for v in tlist}
    for g in circuit:
        if isinstance(g, InputGroup) and g.var in acc:
            k = circuit.variables[g.var].domain.k
            dt = dists.get(g.dist.kind)
            lp = np.asarray(
                dt.log_prob(g.dist, np.asarray(circuit.param_value(g.params)), np.arange(k, dtype=np.float64))
            )
            acc[g.var] += fl.node[g.name] @ np.exp(lp).T
    for v in tlist:
        a = acc[v]
        tot = a.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[v] = np.where(tot > 0, a / np.where(tot > 0, tot, 1.0), np.nan)
    return out


def is_smooth_and_decomposable(circuit: Circuit) -> bool:
    """Both properties, ignoring the verifier's per-group waivers (queries depend on them)."""
    scope = circuit.scope()
    for g in circuit:
        if isinstance(g, ProductGroup):
            seen: frozenset[int] = frozenset()
            for c in g.children:
                if seen & scope[c]:
                    return False
                seen = seen | scope[c]
        elif isinstance(g, SumGroup):
            if any(scope[c] != scope[g.children[0]] for c in g.children):
                return False
    return True


def _normalise_log(lp: np.ndarray) -> np.ndarray:
    m = lp.max(axis=1, keepdims=True)
    ok = np.isfinite(m[:, 0])
    e = np.exp(lp - np.where(np.isfinite(m), m, 0.0))
    p = e / e.sum(axis=1, keepdims=True).clip(min=1e-300)
    p[~ok] = np.nan
    return p


def _check_possible(root_vals: np.ndarray, what: str) -> None:
    bad = np.nonzero(~np.isfinite(root_vals) | np.isnan(root_vals))[0]
    if len(bad):
        raise DataError(f"{what}: the evidence in row {bad[0]} has probability 0")


def _children_columns(circuit: Circuit, g: SumGroup) -> list[tuple[str, int]]:
    """(child group, unit) of every column of a sum group."""
    cols = []
    for c in g.children:
        cols.extend((c, u) for u in range(circuit.group(c).units))
    return cols


def _scatter_to_children(circuit: Circuit, g: SumGroup, rows: np.ndarray, cols: np.ndarray, sel: dict) -> None:
    off = 0
    for c in g.children:
        u = circuit.group(c).units
        hit = (cols >= off) & (cols < off + u)
        np.add.at(sel[c], (rows[hit], cols[hit] - off), 1)
        off += u


def _topdown(circuit: Circuit, n: int, choose_sum, visit_input) -> None:
    """Walk the selected sub-circuit from unit 0 of the root, one selection per (sample, unit).

    ``choose_sum(g, rows, units) -> columns`` picks one child column of each selected sum node;
    ``visit_input(g, rows, units)`` handles the selected leaves.
    """
    root = circuit.roots[0]
    if circuit.group(root).units != 1:
        raise PcirError(f"root '{root}' has {circuit.group(root).units} units; queries need a root of one unit")
    sel = {name: np.zeros((n, g.units), dtype=np.int64) for name, g in circuit.groups.items()}
    sel[root][:, 0] = 1
    for name in reversed(circuit.topo_order()):
        g = circuit.group(name)
        rows, units = np.nonzero(sel[name])
        if len(rows) == 0:
            continue
        if isinstance(g, SumGroup):
            cols = choose_sum(g, rows, units)
            _scatter_to_children(circuit, g, rows, cols, sel)
        elif isinstance(g, ProductGroup):
            idx = g.child_index(circuit.child_units(name))
            for j, c in enumerate(g.children):
                np.add.at(sel[c], (rows, idx[units, j]), 1)
        else:
            assert isinstance(g, InputGroup)
            visit_input(g, rows, units)


def sample(
    circuit: Circuit,
    n: int | None = None,
    evidence=None,
    missing=None,
    seed: int = 0,
) -> np.ndarray:
    """Samples [n, V] (float64; discrete values are whole numbers).

    Unconditional (``evidence=None``): ``n`` independent samples. Conditional: ``evidence`` is
    [N, V] (or one row [V], repeated ``n`` times), ``missing`` marks the entries to sample (default:
    the NaN entries); the other entries are kept and conditioned on. At a selected sum node child
    j is drawn with probability ``W_ij p_j(e) / p_i(e)`` (``p`` evaluated on the evidence), a
    product selects all its children, a selected leaf on an unknown variable draws from its
    distribution. Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    v = circuit.num_vars
    if evidence is None:
        if n is None:
            raise PcirError("sample needs n (unconditional) or evidence")
        x = np.zeros((int(n), v))
        miss = np.ones((int(n), v), dtype=bool)
    else:
        e = np.asarray(evidence, dtype=np.float64)
        m = None if missing is None else np.asarray(missing, dtype=bool)
        if e.ndim == 1:
            reps = 1 if n is None else int(n)
            e = np.repeat(e[None, :], reps, axis=0)
            m = None if m is None else np.repeat(m.reshape(1, -1), reps, axis=0)
        elif n is not None and int(n) != e.shape[0]:
            raise DataError(f"n = {n} but the evidence has {e.shape[0]} rows")
        x, miss = _prepare(circuit, e, m)
    n_rows = x.shape[0]
    xe = np.where(miss, 0.0, x)
    vals = forward(circuit, xe, miss)
    _check_possible(_root_values(circuit, vals), "sample")
    out = np.where(miss, np.nan, x)

    def choose_sum(g: SumGroup, rows, units):
        cat = np.concatenate([vals[c] for c in g.children], axis=1)
        w = _sum_weights(circuit, g)
        with np.errstate(divide="ignore"):
            logits = np.log(w[units]) + cat[rows]
        mx = logits.max(axis=1, keepdims=True)
        p = np.exp(logits - mx)
        cdf = np.cumsum(p, axis=1)
        r = rng.random(len(rows))[:, None] * cdf[:, -1:]
        return np.minimum((cdf <= r).sum(axis=1), cdf.shape[1] - 1)

    def visit_input(g: InputGroup, rows, units):
        todo = miss[rows, g.var]
        if todo.any():
            dt = dists.get(g.dist.kind)
            params = np.asarray(circuit.param_value(g.params))
            out[rows[todo], g.var] = dt.sample(g.dist, params, units[todo], rng)

    _topdown(circuit, n_rows, choose_sum, visit_input)
    return out


def _max_input_values(
    circuit: Circuit, g: InputGroup, x: np.ndarray, miss: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Leaf values for max-product: log p(x) if observed, max over values if unknown; and modes."""
    dt = dists.get(g.dist.kind)
    params = np.asarray(circuit.param_value(g.params))
    dom = circuit.variables[g.var].domain
    mode = np.asarray(dt.mode(g.dist, params, dom), dtype=np.float64)
    col = np.where(miss[:, g.var], 0.0, x[:, g.var])
    lp = np.asarray(dt.log_prob(g.dist, params, col), dtype=np.float64)
    lp_mode = np.asarray(dt.log_prob(g.dist, params, mode), dtype=np.float64)  # [units, units]
    best = np.diagonal(lp_mode).copy()
    lp[miss[:, g.var]] = best
    return lp, mode


def map_assignment(circuit: Circuit, x=None, missing=None, *, return_log_prob: bool = False):
    """The most probable completion [N, V] of the unknown entries given the observed ones.

    ``x=None`` means one row with every variable unknown (the circuit's MPE state). Unknown
    entries are ``missing`` (default: NaN entries). Max-product: leaves on unknown variables
    take their mode, products add, sums take ``max_j log W_ij + child_j``; backtracking from the
    root follows the maximising child of each sum. On a deterministic circuit (at most one child
    of every sum is non-zero for any complete input) this is exact; otherwise the result is the
    best single induced tree, a lower bound on the true MAP (documented approximation).

    With ``return_log_prob=True`` also gives the max-product value [N] (the log-probability of
    the returned assignment on deterministic circuits).
    """
    if x is None:
        xa = np.zeros((1, circuit.num_vars))
        miss = np.ones_like(xa, dtype=bool)
    else:
        xa, miss = _prepare(circuit, x, missing)
    xe = np.where(miss, 0.0, xa)
    vals: dict[str, np.ndarray] = {}
    modes: dict[str, np.ndarray] = {}
    argmax: dict[str, np.ndarray] = {}
    for g in circuit:
        if isinstance(g, InputGroup):
            vals[g.name], modes[g.name] = _max_input_values(circuit, g, xe, miss)
        elif isinstance(g, ProductGroup):
            vals[g.name] = product_values(circuit, g, vals, xa.shape[0])
        else:
            assert isinstance(g, SumGroup)
            cat = np.concatenate([vals[c] for c in g.children], axis=1)
            with np.errstate(divide="ignore"):
                logw = np.log(_sum_weights(circuit, g))
            # (N, units, K): fine for the reference; the kernels do this tile by tile
            scores = logw[None, :, :] + cat[:, None, :]
            am = np.argmax(scores, axis=2)
            argmax[g.name] = am
            vals[g.name] = np.take_along_axis(scores, am[:, :, None], axis=2)[:, :, 0]
    best = _root_values(circuit, vals)
    _check_possible(best, "map_assignment")
    out = np.where(miss, np.nan, xa)

    def choose_sum(g: SumGroup, rows, units):
        return argmax[g.name][rows, units]

    def visit_input(g: InputGroup, rows, units):
        todo = miss[rows, g.var]
        out[rows[todo], g.var] = modes[g.name][units[todo]]

    _topdown(circuit, xa.shape[0], choose_sum, visit_input)
    return (out, best) if return_log_prob else out
