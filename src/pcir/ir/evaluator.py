"""Reference evaluator: numpy, float64, log space. Slow and obviously correct: the oracle.

* :func:`forward` gives every group's log-values, :func:`log_likelihood` the root's.
* ``missing`` (bool, same shape as ``x``) marginalises those entries: their leaves are 1.
* :func:`flows` runs the top-down pass of PC flows (expected counts) from one root:
  the root node has flow 1 per sample; a sum node passes ``F_i * W_ij * p_j / p_i`` down each edge
  (that quantity summed over the batch is the parameter flow of edge ij); a product node passes its
  flow unchanged to each child it reads.
* :func:`em_step` applies one EM update from those flows:
  ``W <- (1 - step) W + step * (flow_ij + pc/deg_i) / (sum_j flow_ij + pc)``, tied parameters
  accumulating the flows of all their users; inputs use their family's closed form
  (:mod:`pcir.ir.distributions`), fed with the observed samples only. A sum node or a leaf whose
  total flow plus pseudocount is 0 (no sample reaches it) keeps its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import distributions as dists
from .circuit import Circuit, InputGroup, Param, ProductGroup, SumGroup
from .diagnostics import DataError


def check_data(circuit: Circuit, x, missing=None) -> tuple[np.ndarray, np.ndarray]:
    """Validate data against the circuit's variables; returns float64 x and bool missing."""
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"data must be a numeric array [N, {circuit.num_vars}] ({e})") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != circuit.num_vars:
        raise DataError(f"data has shape {tuple(x.shape)}, expected (N, {circuit.num_vars})")
    miss = np.zeros(x.shape, dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    if miss.ndim == 1 and x.shape[0] == 1:
        miss = miss[None, :]  # a single row given as 1-D, like x
    if miss.shape != x.shape:
        raise DataError(f"missing mask has shape {miss.shape}, expected {x.shape}")
    bad = np.isnan(x) & ~miss
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"NaN in data at row {r}, column {c} ({circuit.variables[c].name})")
    for v, var in enumerate(circuit.variables):
        if var.domain.is_discrete:
            col = x[~miss[:, v], v]
            badv = (col < 0) | (col >= var.domain.k) | (col != np.floor(col))
            if badv.any():
                rows = np.nonzero(~miss[:, v])[0]
                r = rows[np.argmax(badv)]
                raise DataError(
                    f"value {x[r, v]:g} at row {r}, column {v} ({var.name}) is outside the domain {var.domain}"
                )
    return x, miss


def dense_sum_weights(circuit: Circuit, g: SumGroup) -> np.ndarray:
    """Dense (units, K) float64 weights of a sum group (zeros where there is no edge)."""
    k = circuit.num_columns(g.name)
    w = np.asarray(circuit.param_value(g.params), dtype=np.float64)
    if g.pattern == "explicit":
        assert g.edges is not None
        dense = np.zeros((g.units, k))
        np.add.at(dense, (g.edges[:, 0], g.edges[:, 1]), w)
        return dense
    if g.pattern == "block":
        return w * g.edge_mask(k)
    return w


_sum_weights = dense_sum_weights  # old private name, kept for callers


def _input_values(circuit: Circuit, g: InputGroup, x: np.ndarray, miss: np.ndarray) -> np.ndarray:
    dt = dists.get(g.dist.kind)
    col = x[:, g.var].copy()
    m = miss[:, g.var]
    col[m] = 0.0
    lp = dt.log_prob(g.dist, np.asarray(circuit.param_value(g.params)), col)
    lp = np.asarray(lp, dtype=np.float64)
    lp[m] = 0.0
    return lp


def product_values(circuit: Circuit, g: ProductGroup, vals: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Log-values (n, units) of a product group: the sum of the children's log-values it reads."""
    idx = g.child_index(circuit.child_units(g.name))
    acc = np.zeros((n, g.units))
    for j, c in enumerate(g.children):
        acc = acc + vals[c][:, idx[:, j]]
    return acc


def _logmatmul(c: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log(exp(c) @ w.T) stably. Returns (values, exp(c - cmax), cmax)."""
    finite = np.isfinite(c)
    cmax = np.where(finite, c, -np.inf).max(axis=1, keepdims=True)
    cmax = np.where(np.isfinite(cmax), cmax, 0.0)
    e = np.exp(c - cmax)
    with np.errstate(divide="ignore"):
        v = np.log(e @ w.T) + cmax
    return v, e, cmax


def forward(circuit: Circuit, x, missing=None) -> dict[str, np.ndarray]:
    """Log-values (N, units) of every group."""
    x, miss = check_data(circuit, x, missing)
    vals: dict[str, np.ndarray] = {}
    for g in circuit:
        if isinstance(g, InputGroup):
            vals[g.name] = _input_values(circuit, g, x, miss)
        elif isinstance(g, ProductGroup):
            vals[g.name] = product_values(circuit, g, vals, x.shape[0])
        else:
            assert isinstance(g, SumGroup)
            cat = np.concatenate([vals[c] for c in g.children], axis=1)
            vals[g.name] = _logmatmul(cat, dense_sum_weights(circuit, g))[0]
    return vals


def log_likelihood(circuit: Circuit, x, missing=None, root: str | None = None) -> np.ndarray:
    """Per-sample log-likelihood of the root (N,), or (N, units) for a root of several units."""
    root = root or circuit.roots[0]
    v = forward(circuit, x, missing)[root]
    return v[:, 0] if v.shape[1] == 1 else v


@dataclass
class Flows:
    values: dict[str, np.ndarray]  # log-values (N, units)
    node: dict[str, np.ndarray]  # node flows (N, units)
    param: dict[str, np.ndarray]  # sum parameter flows, summed over the batch and over tied users


def flows(circuit: Circuit, x, missing=None, root: str | None = None) -> Flows:
    """Forward, then the top-down pass of PC flows from ``root`` (flow 1 per sample)."""
    x, miss = check_data(circuit, x, missing)
    root = root or circuit.roots[0]
    vals = forward(circuit, x, miss)
    n = x.shape[0]
    node = {name: np.zeros((n, g.units)) for name, g in circuit.groups.items()}
    node[root][:, :] = 1.0
    pflow: dict[str, np.ndarray] = {}
    for name in reversed(circuit.topo_order()):
        g = circuit.group(name)
        f = node[name]
        if isinstance(g, ProductGroup):
            idx = g.child_index(circuit.child_units(name))
            for j, c in enumerate(g.children):
                np.add.at(node[c], (slice(None), idx[:, j]), f)
        elif isinstance(g, SumGroup):
            cat = np.concatenate([vals[c] for c in g.children], axis=1)
            w = dense_sum_weights(circuit, g)
            v, e, cmax = _logmatmul(cat, w)
            with np.errstate(over="ignore", invalid="ignore"):
                gmat = np.where(f > 0, f * np.exp(cmax - v), 0.0)
            gmat = np.nan_to_num(gmat, nan=0.0, posinf=0.0)
            child_flow = e * (gmat @ w)
            pf = w * (gmat.T @ e)
            if g.pattern == "explicit":
                assert g.edges is not None
                pf = pf[g.edges[:, 0], g.edges[:, 1]]
            pflow[g.params] = pflow.get(g.params, 0.0) + pf
            off = 0
            for c in g.children:
                u = circuit.group(c).units
                node[c] += child_flow[:, off : off + u]
                off += u
    return Flows(vals, node, pflow)


def em_step(
    circuit: Circuit,
    x,
    missing=None,
    step_size: float = 1.0,
    pseudocount: float = 0.0,
    root: str | None = None,
    entropy: float = 0.0,
) -> Circuit:
    """One EM step on the batch ``x`` (full-batch EM: step_size 1 on the whole data).

    ``entropy`` > 0: entropy regularisation (see :mod:`pcir.backend.entropy`): each sum node's
    and categorical/bernoulli leaf's update ``p`` (pseudocount included) is replaced by
    ``argmax_theta sum p log theta + entropy * H(theta)`` (found here by bisection)."""
    x, miss = check_data(circuit, x, missing)
    fl = flows(circuit, x, miss, root)
    new: dict[str, Param] = dict(circuit.params)
    done: set[str] = set()
    for g in circuit:
        pname = getattr(g, "params", None)
        if pname is None or pname in done:  # "" is a valid (quoted) parameter name
            continue
        done.add(pname)
        old = np.asarray(circuit.param_value(pname), dtype=np.float64)
        users = [circuit.group(u) for u in circuit.users_of_param(pname)]
        if isinstance(g, SumGroup):
            pf = fl.param[pname]
            if g.pattern == "explicit":
                assert g.edges is not None
                rows = g.edges[:, 0]
                deg = np.bincount(rows, minlength=g.units)[rows]
                tot = np.bincount(rows, weights=pf, minlength=g.units)[rows]
                with np.errstate(invalid="ignore", divide="ignore"):
                    upd = (pf + pseudocount / deg) / (tot + pseudocount)
                if entropy > 0:
                    for u in np.unique(rows):
                        sel = rows == u
                        if tot[sel][0] + pseudocount > 0:
                            upd[sel] = max_entropy(upd[sel][None, :], np.ones((1, sel.sum()), bool), entropy)[0]
                upd = np.where(tot + pseudocount > 0, upd, old)
            else:
                m = g.edge_mask(circuit.num_columns(g.name))
                deg = m.sum(axis=1, keepdims=True)
                tot = pf.sum(axis=1, keepdims=True)
                with np.errstate(invalid="ignore", divide="ignore"):
                    upd = np.where(m, (pf + pseudocount / np.maximum(deg, 1)) / (tot + pseudocount), 0.0)
                if entropy > 0:
                    upd = np.where(tot + pseudocount > 0, max_entropy(np.nan_to_num(upd), m, entropy), 0.0)
                upd = np.where(tot + pseudocount > 0, upd, old)
        else:
            assert isinstance(g, InputGroup)
            dt = dists.get(g.dist.kind)
            if not dt.learnable:
                continue
            xs = np.concatenate([x[~miss[:, u.var], u.var] for u in users])  # type: ignore[union-attr]
            fs = np.concatenate([fl.node[u.name][~miss[:, u.var]] for u in users])  # type: ignore[union-attr]
            with np.errstate(invalid="ignore", divide="ignore"):
                upd = dt.em_update(g.dist, old, xs, fs, pseudocount)
            if entropy > 0 and g.dist.kind == "categorical":
                upd = max_entropy(np.nan_to_num(upd), np.ones(upd.shape, bool), entropy)
            elif entropy > 0 and g.dist.kind == "bernoulli":
                two = np.nan_to_num(np.stack([1.0 - upd, upd], axis=1))
                upd = max_entropy(two, np.ones(two.shape, bool), entropy)[:, 1]
            # A unit that no observed sample reaches has no statistics: keep its parameters
            # (the families' closed forms would divide 0 by 0 without a pseudocount).
            reached = fs.sum(axis=0) + pseudocount > 0
            upd = np.where(reached.reshape((-1,) + (1,) * (old.ndim - 1)), upd, old)
        val = (1.0 - step_size) * old + step_size * upd
        p = circuit.params[pname]
        new[pname] = Param(p.shape, p.dtype, val)
    return circuit.replace(params=new)


def max_entropy(p: np.ndarray, mask: np.ndarray, tau: float) -> np.ndarray:
    """Row-wise ``argmax_theta sum p log theta + tau H(theta)`` over the entries in ``mask``
    (rows of ``p`` sum to 1 there), by bisection on the normaliser ``nu`` of
    ``theta_c = exp(W(p_c / tau e^nu) - nu)``, ``nu`` in ``[1/tau, 1/tau + log K]`` (the reference;
    the runtime's Newton solver is :func:`pcir.backend.entropy.max_entropy_rows`)."""
    p = np.where(mask, p, 0.0).astype(np.float64)
    k = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    lo = np.full((p.shape[0], 1), 1.0 / tau)
    hi = lo + np.log(k)
    logp = np.log(np.where(p > 0, p, 1.0) / tau)

    def theta(nu):
        L = logp + nu
        u = np.where(L > 1.0, np.log(np.maximum(L, 1.0)), L)
        for _ in range(60):  # w + log w = L, Newton on u = log w
            u = u - (np.exp(u) + u - L) / (np.exp(u) + 1.0)
        w = np.where(p > 0, np.exp(u), 0.0)
        return np.where(mask, np.exp(w - nu), 0.0)

    for _ in range(200):
        mid = 0.5 * (lo + hi)
        big = theta(mid).sum(axis=1, keepdims=True) > 1.0
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    t = theta(0.5 * (lo + hi))
    return t / np.maximum(t.sum(axis=1, keepdims=True), 1e-300)


def enumerate_assignments(circuit: Circuit) -> np.ndarray:
    """Every assignment of a circuit whose variables are all discrete (small circuits only)."""
    ks = []
    for v in circuit.variables:
        if not v.domain.is_discrete:
            raise DataError(f"variable {v.name} is not discrete; cannot enumerate")
        ks.append(v.domain.k)
    if not ks:
        return np.zeros((1, 0))
    grids = np.meshgrid(*[np.arange(k) for k in ks], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.float64)
