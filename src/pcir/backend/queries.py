"""Queries on a compiled circuit: marginals, conditionals, sampling and MAP, in torch on the plan.

Everything here works on a :class:`~pcir.backend.runtime.CompiledCircuit` (``model``) on any
device, batched, in float32, and is tested against the numpy reference :mod:`pcir.ir.queries`
(same conventions, same results up to float32 rounding and the random stream).

* :func:`marginal`: ``model(x, missing)`` without autograd.
* :func:`conditional`: ``P(x_v = a | e)`` for a set of target variables. ``"flows"``: one forward
  and one backward pass of the model's own kernels with the targets marginalised; the flow
  ``F_u`` of a leaf ``u`` on ``v`` is then ``p_u * dP/dp_u / P(e) = (dP/dp_u) / P(e)`` and
  ``P(x_v = a | e) = sum_u F_u p_u(a)`` (smooth and decomposable circuits are multilinear in the
  leaves of ``v``). ``"enumerate"``: one batched forward pass with a row per (sample, target,
  value). ``"auto"`` picks flows where the circuit is smooth and decomposable.
* :func:`sample`: a forward pass on the evidence (the model's kernels), then a top-down pass over
  the plan: at a selected sum node column ``k`` is drawn with probability ``W_ik C_k(e) / p_i(e)``
  (``C_k`` the column value: a child, or a fused product of stored rows), every stored row of the
  chosen column is selected, stored products select all their children, and a selected leaf on an
  unknown variable draws from its family. Seeded with a ``torch.Generator`` on the model's device.
* :func:`map_assignment`: a max-product upward pass over the plan (leaves on unknown variables
  take their mode, sums ``max_k log W_ik + C_k``), then backtracking through the maximising
  columns. Exact on deterministic circuits, otherwise the best single induced tree (an
  approximation; exact MAP is NP-hard in general).

Leaves are handled per family by the torch leaf registry below (:func:`register_leaf`), keyed by
the IR family name and reading parameters in the IR's format (the same layout as
:mod:`pcir.ir.distributions`), so a family added to the kernels only needs its torch leaf here
for the queries to cover it. All seven IR families have one.

Zero-probability evidence: :func:`conditional` gives NaN rows, :func:`sample` and
:func:`map_assignment` raise :class:`~pcir.ir.diagnostics.DataError` naming the row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..ir import distributions as dists
from ..ir.circuit import InputGroup
from ..ir.diagnostics import BackendError, DataError, PcirError
from .plan import ProductGroupPlan, SumGroupPlan

__all__ = [
    "TorchLeaf",
    "conditional",
    "get_leaf",
    "map_assignment",
    "marginal",
    "register_leaf",
    "resolve_targets",
    "sample",
]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# elements of the largest temporary of the max-product pass ([units, K, batch] chunks)
_MAXPLUS_BUDGET = 1 << 24
# rows of one forward pass of the enumerate method (bounded memory for big batches)
_ENUMERATE_ROWS = 1 << 14


# ================================================================================================
# Torch leaves: one per distribution family
# ================================================================================================
class TorchLeaf(Protocol):
    """Per-family torch code for the queries. ``params``: the IR parameter of the leaves stacked
    along the first axis (one row per leaf, as in :mod:`pcir.ir.distributions`), float32 (int64
    for indicators) on the model's device. Pairwise: ``leaf[m]`` indexes ``params``."""

    def log_prob(self, dist: dists.Dist, params: torch.Tensor, leaf: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p_{leaf[m]}(x[m]) -> [M] (x float, whole numbers for discrete families)."""
        ...

    def sample(self, dist: dists.Dist, params: torch.Tensor, leaf: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One draw from each ``leaf[m]`` -> float32 [M]."""
        ...

    def mode(self, dist: dists.Dist, params: torch.Tensor, k: int) -> torch.Tensor:
        """The most likely value of every leaf -> float32 [L]; ``k`` is the size of the variable's
        discrete domain (the mode is taken within it), 0 for a real variable."""
        ...


_LEAVES: dict[str, TorchLeaf] = {}


def register_leaf(kind: str, leaf: TorchLeaf) -> TorchLeaf:
    """Register the torch query code of a distribution family (same name as in the IR registry)."""
    _LEAVES[kind] = leaf
    return leaf


def get_leaf(kind: str) -> TorchLeaf:
    try:
        return _LEAVES[kind]
    except KeyError:
        raise BackendError(
            f"distribution '{kind}' has no torch query code",
            hint="register it with pcir.backend.queries.register_leaf",
        ) from None


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp(min=0.0))


def _inverse_cdf(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One index per row of non-negative ``probs`` [M, K], drawn proportionally (int64 [M])."""
    cdf = torch.cumsum(probs, dim=1)
    r = torch.rand(probs.shape[0], generator=gen, device=probs.device, dtype=cdf.dtype) * cdf[:, -1]
    # first index whose cdf exceeds r: zero-probability columns are never picked
    idx = torch.searchsorted(cdf, r[:, None].contiguous(), right=True)[:, 0]
    return idx.clamp(max=probs.shape[1] - 1)


def _mode_by_enumeration(leaf: TorchLeaf, dist, params: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0:
        raise BackendError(f"{dist.kind} has no mode on a real variable")
    return _log_prob_table(leaf, dist, params, k).argmax(dim=1).to(torch.float32)


def _log_prob_table(leaf: TorchLeaf, dist, params: torch.Tensor, k: int) -> torch.Tensor:
    """[L, k] log-probabilities of the values 0..k-1 for every leaf."""
    n = params.shape[0]
    dev = params.device
    # expand + reshape, not repeat_interleave: no host sync, so CUDA graphs can capture it (the
    # table families' tables are rebuilt inside the captured EM step)
    li = torch.arange(n, device=dev)[:, None].expand(n, k).reshape(-1)
    dt = params.dtype if params.is_floating_point() else torch.float32
    xs = torch.arange(k, device=dev, dtype=dt).repeat(n)
    return leaf.log_prob(dist, params, li, xs).reshape(n, k)


class _Categorical:
    def log_prob(self, dist, params, leaf, x):
        kc = params.shape[1]
        xi = x.long()
        ok = (xi >= 0) & (xi < kc)
        v = _log(params[leaf, xi.clamp(0, kc - 1)])
        return torch.where(ok, v, torch.full_like(v, -math.inf))

    def sample(self, dist, params, leaf, gen):
        return _inverse_cdf(params[leaf], gen).to(torch.float32)

    def mode(self, dist, params, k):
        return params[:, :k].argmax(dim=1).to(torch.float32)


class _Bernoulli:
    def log_prob(self, dist, params, leaf, x):
        p = params[leaf]
        v = torch.where(x > 0.5, _log(p), torch.log1p(-p))
        return torch.where((x == 0) | (x == 1), v, torch.full_like(v, -math.inf))

    def sample(self, dist, params, leaf, gen):
        u = torch.rand(leaf.shape[0], generator=gen, device=params.device)
        return (u < params[leaf]).to(torch.float32)

    def mode(self, dist, params, k):
        return (params > 0.5).to(torch.float32)  # a tie goes to 0, like the IR


class _Gaussian:
    def log_prob(self, dist, params, leaf, x):
        mu, sd = params[leaf, 0], params[leaf, 1]
        z = (x - mu) / sd
        return -0.5 * z * z - torch.log(sd) - LOG_SQRT_2PI

    def sample(self, dist, params, leaf, gen):
        z = torch.randn(leaf.shape[0], generator=gen, device=params.device)
        return params[leaf, 0] + params[leaf, 1] * z

    def mode(self, dist, params, k):
        return params[:, 0].to(torch.float32).clone()


class _Indicator:
    def log_prob(self, dist, params, leaf, x):
        hit = x == params[leaf].to(x.dtype)
        return torch.where(hit, 0.0, -math.inf).to(torch.float32)

    def sample(self, dist, params, leaf, gen):
        return params[leaf].to(torch.float32)

    def mode(self, dist, params, k):
        return params.to(torch.float32).clone()


class _Literal:
    def log_prob(self, dist, params, leaf, x):
        hit = x == float(dist.arg("value"))
        return torch.where(hit, 0.0, -math.inf).to(torch.float32)

    def sample(self, dist, params, leaf, gen):
        return torch.full((leaf.shape[0],), float(dist.arg("value")), device=params.device)

    def mode(self, dist, params, k):
        return torch.full((params.shape[0],), float(dist.arg("value")), device=params.device)


class _Binomial:
    def log_prob(self, dist, params, leaf, x):
        n = float(int(dist.arg("n")))
        p = params[leaf]
        xs = x.clamp(0.0, n)
        log_choose = math.lgamma(n + 1.0) - torch.lgamma(xs + 1.0) - torch.lgamma(n - xs + 1.0)
        # x log p and (n - x) log(1 - p), with 0 * log 0 = 0 at the ends
        a = torch.where(xs > 0, xs * _log(p), torch.zeros_like(p))
        b = torch.where(xs < n, (n - xs) * torch.log1p(-p), torch.zeros_like(p))
        v = log_choose + a + b
        return torch.where((x < 0) | (x > n) | (x != torch.floor(x)), torch.full_like(v, -math.inf), v)

    def sample(self, dist, params, leaf, gen):
        n = int(dist.arg("n"))
        p = params[leaf].to(torch.float32).clamp(0.0, 1.0)
        return torch.binomial(torch.full_like(p, float(n)), p, generator=gen)

    def mode(self, dist, params, k):
        return _mode_by_enumeration(self, dist, params, k)


class _DiscreteLogistic:
    def log_prob(self, dist, params, leaf, x):
        n = int(dist.arg("n"))
        mu, s = params[leaf, 0], torch.exp(params[leaf, 1])
        inf = torch.full_like(mu, math.inf)
        lo = torch.where(x <= 0, -inf, (x - 0.5 - mu) / s)
        hi = torch.where(x >= n - 1, inf, (x + 0.5 - mu) / s)
        # log(sigmoid(hi) - sigmoid(lo)), reflected to the lower tail above the mean so that the
        # difference of two numbers close to 1 never cancels (as in the IR)
        flip = (lo + hi) > 0
        a = torch.where(flip, -hi, lo)
        b = torch.where(flip, -lo, hi)
        lb = torch.nn.functional.logsigmoid(b)
        v = lb + torch.log1p(-torch.exp(torch.nn.functional.logsigmoid(a) - lb))
        v = torch.where(torch.isnan(v), -inf, v)
        return torch.where((x < 0) | (x > n - 1), -inf, v)

    def sample(self, dist, params, leaf, gen):
        n = int(dist.arg("n"))
        u = torch.rand(leaf.shape[0], generator=gen, device=params.device).clamp(1e-7, 1.0 - 1e-7)
        z = params[leaf, 0] + torch.exp(params[leaf, 1]) * (torch.log(u) - torch.log1p(-u))
        return torch.floor(z + 0.5).clamp(0, n - 1)

    def mode(self, dist, params, k):
        return _mode_by_enumeration(self, dist, params, k)


for _kind, _leaf in (
    ("categorical", _Categorical()),
    ("bernoulli", _Bernoulli()),
    ("gaussian", _Gaussian()),
    ("indicator", _Indicator()),
    ("literal", _Literal()),
    ("binomial", _Binomial()),
    ("discrete_logistic", _DiscreteLogistic()),
):
    register_leaf(_kind, _leaf)


# ================================================================================================
# Static tables of a compiled model (per device)
# ================================================================================================
@dataclass
class _Bucket:
    """Leaves of one family (same ``Dist``) on variables of one domain size, from every input
    group of the plan: plan rows, variables, and how to read their IR parameters."""

    dist: dists.Dist
    k: int  # domain size of the variables (0: real)
    rows: torch.Tensor  # long [L]
    var: torch.Tensor  # long [L]
    parts: list[tuple[str, str, int]]  # (group, parameter name, units), in leaf order
    gather: torch.Tensor | None  # long index into the model's flat tables (table families)


class _Tables:
    def __init__(self, model, device: torch.device):
        plan, circuit = model.plan, model.circuit
        lt = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)
        by_key: dict[tuple, dict[str, list]] = {}
        for block in plan.inputs:
            for gname, row, units in block.groups:
                g = circuit.group(gname)
                assert isinstance(g, InputGroup)
                dom = circuit.variables[g.var].domain
                key = (g.dist, dom.k if dom.is_discrete else 0)
                d = by_key.setdefault(key, {"rows": [], "var": [], "parts": [], "gather": []})
                d["rows"].append(np.arange(row, row + units))
                d["var"].append(np.full(units, g.var))
                d["parts"].append((gname, g.params, units))
                slot = plan.params.get(g.params)
                u = np.arange(units)
                if slot is None:
                    d["gather"] = None
                elif d["gather"] is not None:
                    if slot.kind == "categorical":
                        d["gather"].append((slot.offset + u * slot.k)[:, None] + np.arange(slot.k)[None, :])
                    elif slot.kind == "bernoulli":
                        d["gather"].append(slot.offset + 2 * u + 1)
                    elif slot.kind == "gaussian":
                        d["gather"].append(slot.offset + u)
                    else:
                        d["gather"] = None
        self.buckets: list[_Bucket] = []
        for (dist, k), d in by_key.items():
            gather = lt(np.concatenate(d["gather"])) if d["gather"] else None
            self.buckets.append(
                _Bucket(dist, k, lt(np.concatenate(d["rows"])), lt(np.concatenate(d["var"])), d["parts"], gather)
            )
        self.layers: list[tuple[Any, torch.Tensor]] = []  # every stored group, in launch order
        self.launches: list[list[tuple[Any, torch.Tensor]]] = []
        for layer in plan.layers:
            self.launches.append([])
            for g in layer.groups:
                if isinstance(g, SumGroupPlan):
                    self.launches[-1].append((g, lt(g.cols)))
                else:
                    assert isinstance(g, ProductGroupPlan)
                    self.launches[-1].append((g, lt(g.idx)))
            self.layers.extend(self.launches[-1])
        self.var_k = [int(k) for k in plan.var_k]


def _tables(model) -> _Tables:
    store = model.__dict__.setdefault("_query_tables", {})
    key = str(model.device)
    if key not in store:
        store[key] = _Tables(model, model.device)
    return store[key]


class _State:
    """What one query needs from the model's current parameters (no autograd)."""

    def __init__(self, model):
        self.model = model
        self.tab = _tables(model)
        _logw, self.logp, self.W = model._normalised_cached()
        self.gauss = model.gauss.detach()
        self._params: dict[int, torch.Tensor] = {}

    def log_weights(self, g: SumGroupPlan) -> torch.Tensor:
        """Dense (units, K) log-weights of a sum group (-inf where there is no edge)."""
        w = self.W[g.w_off : g.w_off + g.units * g.k].view(g.units, g.k)
        return _log(w)

    def params(self, bi: int) -> torch.Tensor:
        """The IR-format parameters of bucket ``bi``'s leaves, stacked along the first axis."""
        if bi in self._params:
            return self._params[bi]
        b = self.tab.buckets[bi]
        kind = b.dist.kind
        dev = self.model.device
        if b.gather is not None and kind in ("categorical", "bernoulli"):
            p = torch.exp(self.logp[b.gather])
        elif b.gather is not None and kind == "gaussian":
            g = self.gauss[b.gather]
            p = torch.stack([g[:, 0], torch.exp(g[:, 1])], dim=1)
        else:
            parts = []
            for _gname, pname, units in b.parts:
                if kind == "indicator" or pname not in self.model.plan.params:
                    v = torch.as_tensor(np.array(self.model.circuit.param_value(pname)), device=dev)
                else:  # a family whose parameters the model holds (read in the IR format)
                    v = self.model.get_param(pname).detach().to(dev)
                parts.append(v[:units])
            p = torch.cat(parts) if len(parts) > 1 else parts[0]
            if p.is_floating_point():
                p = p.to(torch.float32)
        self._params[bi] = p
        return p


# ================================================================================================
# Data
# ================================================================================================
def _check_root(model) -> None:
    if model.plan.root_units != 1:
        raise PcirError(f"root '{model.plan.root}' has {model.plan.root_units} units; queries need a root of one unit")


def _data(model, x, missing) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [N, V] as given, missing bool [N, V] on the model's device; default: the NaN entries)."""
    if isinstance(x, torch.Tensor):
        xt = x.detach()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            model._prepare(x)  # raises the runtime's data error
            raise DataError("cannot read data as an array") from None
        xt = torch.as_tensor(arr)
    if xt.ndim == 1:
        xt = xt[None, :]
    if missing is None:
        miss = torch.isnan(xt) if xt.is_floating_point() else torch.zeros(xt.shape, dtype=torch.bool)
    else:
        miss = missing.detach() if isinstance(missing, torch.Tensor) else torch.as_tensor(np.asarray(missing))
        miss = miss.to(torch.bool)
        if miss.ndim == 1 and xt.shape[0] == 1:
            miss = miss[None, :]
    return xt, miss.to(model.device).clone()


def resolve_targets(model, targets: Iterable[int | str]) -> list[int]:
    """Variable indices from indices or names (errors name the unknown one)."""
    from ..ir.queries import resolve_targets as ref

    return ref(model.circuit, targets)


def _forward(st: _State, xf: torch.Tensor):
    eng = st.model._engine()
    return eng, *eng.forward(st.W, st.logp, st.gauss, xf)


def _root(model, V: torch.Tensor) -> torch.Tensor:
    return V[model.plan.root_row].clone()


def _gather_sum(V: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = V[idx[:, 0]]
    for a in range(1, idx.shape[1]):
        out = out + V[idx[:, a]]
    return out


def _impossible_row(root: torch.Tensor, what: str) -> None:
    bad = torch.nonzero(~torch.isfinite(root) | torch.isnan(root))
    if len(bad):
        raise DataError(f"{what}: the evidence in row {int(bad[0, 0])} has probability 0")


# ================================================================================================
# Marginals and conditionals
# ================================================================================================
@torch.no_grad()
def marginal(model, x, missing=None) -> torch.Tensor:
    """Per-sample log-probability [N] of the observed entries (``missing``, by default the NaN
    entries, summed out)."""
    xt, miss = _data(model, x, missing)
    return model.forward(xt, miss).detach()


@torch.no_grad()
def conditional(
    model, x, missing=None, targets: Iterable[int | str] | None = None, *, method: str = "auto"
) -> dict[int, torch.Tensor]:
    """``{v: P[N, k_v]}`` with ``P[b, a] = P(x_v = a | evidence_b)`` for every target ``v``.

    Same contract as :func:`pcir.ir.queries.conditional`: the evidence of row b is every variable
    neither missing in that row nor a target (targets are summed out for one another), target
    values in ``x`` are ignored, ``targets`` defaults to every variable missing in some row, each
    row sums to 1 over the domain, and a row whose evidence has probability 0 is NaN.
    ``method``: ``"flows"``, ``"enumerate"`` or ``"auto"`` (see the module docstring).
    """
    _check_root(model)
    xt, miss = _data(model, x, missing)
    if tuple(miss.shape) != tuple(xt.shape):
        raise DataError(f"missing mask has shape {tuple(miss.shape)}, expected {tuple(xt.shape)}")
    if targets is None:
        tlist = [int(v) for v in torch.nonzero(miss.any(dim=0)).reshape(-1).tolist()]
    else:
        tlist = resolve_targets(model, targets)
    tab = _tables(model)
    for v in tlist:
        if tab.var_k[v] <= 0:
            raise DataError(
                f"conditional of variable {model.plan.var_names[v]}: only discrete variables have P(x = value)"
            )
    if method not in ("auto", "flows", "enumerate"):
        raise PcirError(f"unknown conditional method '{method}' (auto, flows or enumerate)")
    if method == "auto":
        from ..ir.queries import is_smooth_and_decomposable

        method = "flows" if is_smooth_and_decomposable(model.circuit) else "enumerate"
    if tlist:
        miss[:, tlist] = True
    xf = model._prepare(xt, miss)
    if not tlist:
        return {}
    st = _State(model)
    if method == "enumerate":
        return _conditional_enumerate(st, xf, tlist)
    return _conditional_flows(st, xf, tlist)


def _conditional_flows(st: _State, xf: torch.Tensor, tlist: list[int]) -> dict[int, torch.Tensor]:
    model = st.model
    B = xf.shape[0]
    eng, V, aux = _forward(st, xf)
    ones = torch.ones((1, B), dtype=torch.float32, device=xf.device)
    F, _PF = eng.backward(st.W, V, aux, xf, ones)
    kmax = max(st.tab.var_k[v] for v in tlist)
    pos = torch.full((model.num_vars,), -1, dtype=torch.long, device=xf.device)
    pos[torch.as_tensor(tlist, device=xf.device)] = torch.arange(len(tlist), device=xf.device)
    acc = torch.zeros((len(tlist), kmax, B), dtype=torch.float32, device=xf.device)
    for bi, b in enumerate(st.tab.buckets):
        if b.k <= 0:
            continue
        tpos = pos[b.var]
        on = torch.nonzero(tpos >= 0).reshape(-1)
        if on.numel() == 0:
            continue
        table = torch.exp(_log_prob_table(get_leaf(b.dist.kind), b.dist, st.params(bi)[on], b.k))  # [L, k]
        # acc[t, a, :] += sum over leaves l on t of p_l(a) * F_l, in bounded-memory leaf chunks
        step = max(1, _MAXPLUS_BUDGET // max(b.k * B, 1))
        for s in range(0, on.numel(), step):
            part = on[s : s + step]
            contrib = table[s : s + step, :, None] * F[b.rows[part]][:, None, :]
            acc[:, : b.k].index_add_(0, tpos[part], contrib)
    out: dict[int, torch.Tensor] = {}
    root_ok = torch.isfinite(_root(model, V))
    for t, v in enumerate(tlist):
        k = st.tab.var_k[v]
        a = acc[t, :k].t()  # [B, k]
        tot = a.sum(dim=1, keepdim=True)
        ok = (tot[:, 0] > 0) & root_ok
        p = a / torch.where(tot > 0, tot, torch.ones_like(tot))
        out[v] = torch.where(ok[:, None], p, torch.full_like(p, math.nan))
    return out


def _conditional_enumerate(st: _State, xf: torch.Tensor, tlist: list[int]) -> dict[int, torch.Tensor]:
    model = st.model
    B = xf.shape[0]
    pairs = [(v, a) for v in tlist for a in range(st.tab.var_k[v])]
    per_pass = max(1, _ENUMERATE_ROWS // max(B, 1))  # (target, value) pairs per forward pass
    lls = []
    for s in range(0, len(pairs), per_pass):
        chunk = pairs[s : s + per_pass]
        xv = xf.repeat(len(chunk), 1)
        for j, (v, a) in enumerate(chunk):
            xv[j * B : (j + 1) * B, v] = float(a)
        _eng, V, _aux = _forward(st, xv)
        lls.append(_root(model, V))
    ll = torch.cat(lls)
    out: dict[int, torch.Tensor] = {}
    off = 0
    for v in tlist:
        k = st.tab.var_k[v]
        lp = ll[off * B : (off + k) * B].reshape(k, B).t()  # [B, k]
        off += k
        mx = lp.amax(dim=1, keepdim=True)
        ok = torch.isfinite(mx[:, 0])
        e = torch.exp(lp - torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx)))
        p = e / e.sum(dim=1, keepdim=True).clamp(min=1e-30)
        out[v] = torch.where(ok[:, None], p, torch.full_like(p, math.nan))
    return out


# ================================================================================================
# Top-down passes: sampling and MAP backtracking
# ================================================================================================
def _topdown(st: _State, B: int, V: torch.Tensor, choose, visit_leaves) -> None:
    """Walk the selected sub-circuit from the root over the plan, one selection per (row, sample).

    ``choose(g, units, samples, C) -> columns`` picks a column of each selected node of a sum
    group (``C`` its [K, B] column values); ``visit_leaves(bucket index, leaf, samples)`` handles
    the selected leaves. ``V`` holds the upward pass's values; its scratch rows are rewritten.
    """
    plan = st.model.plan
    dev = st.model.device
    sel = torch.zeros((plan.num_rows, B), dtype=torch.bool, device=dev)
    sel[plan.root_row] = True
    for t in range(len(st.tab.launches) - 1, -1, -1):
        # scratch products read from here down share rows with others: recompute their values
        # (a product is the sum of its children's log-values, under max-product too) and clear
        # the selections the rows' previous holders left
        for j in plan.recompute.get(t, ()):
            for g, idx in st.tab.launches[j]:
                V[g.row : g.row + g.units] = _gather_sum(V, idx)
                sel[g.row : g.row + g.units] = False
        for g, idx in reversed(st.tab.launches[t]):
            _topdown_group(g, idx, sel, choose)
    for bi, b in enumerate(st.tab.buckets):
        leaf, samples = torch.nonzero(sel[b.rows], as_tuple=True)
        if leaf.numel():
            visit_leaves(bi, leaf, samples)


def _topdown_group(g, idx, sel, choose) -> None:
    """Select the children (stored rows) of the selected nodes of one stored group."""
    units, samples = torch.nonzero(sel[g.row : g.row + g.units], as_tuple=True)
    if units.numel() == 0:
        return
    if isinstance(g, SumGroupPlan):
        cols = choose(g, units, samples, idx)
        targets = idx[cols]  # [P, arity] stored rows of the chosen columns
    else:
        targets = idx[units]
    sel[targets.reshape(-1), samples.repeat_interleave(targets.shape[1])] = True


@torch.no_grad()
def sample(model, n: int | None = None, evidence=None, missing=None, seed: int = 0) -> torch.Tensor:
    """Samples float32 [n, V] on the model's device (discrete values are whole numbers).

    Same contract as :func:`pcir.ir.queries.sample`: unconditional with ``evidence=None`` (``n``
    samples); else ``evidence`` [N, V] (or one row [V], repeated ``n`` times) with ``missing``
    (default: its NaN entries) marking what to sample, the rest kept and conditioned on. At a
    selected sum node column k is drawn with probability ``W_ik C_k(e) / p_i(e)``. Deterministic
    for a given ``seed`` on a given device (the stream is torch's, not numpy's: values differ
    from the reference sampler, their distribution does not).
    """
    _check_root(model)
    V_ = model.num_vars
    if evidence is None:
        if n is None:
            raise PcirError("sample needs n (unconditional) or evidence")
        if int(n) < 0:
            raise DataError(f"n = {n}: the number of samples must be >= 0")
        xt = torch.zeros((int(n), V_), dtype=torch.float32)
        miss = torch.ones((int(n), V_), dtype=torch.bool, device=model.device)
    else:
        one_row = (evidence.ndim if isinstance(evidence, torch.Tensor) else np.ndim(evidence)) == 1
        xt, miss = _data(model, evidence, missing)
        if one_row:
            reps = 1 if n is None else int(n)
            xt, miss = xt.repeat(reps, 1), miss.repeat(reps, 1)
        elif n is not None and int(n) != xt.shape[0]:
            raise DataError(f"n = {n} but the evidence has {xt.shape[0]} rows")
    xf = model._prepare(xt, miss)
    B = xf.shape[0]
    out = xf.clone()
    if B == 0:
        return out
    st = _State(model)
    _eng, V, _aux = _forward(st, xf)
    _impossible_row(_root(model, V), "sample")
    gen = torch.Generator(device=model.device)
    gen.manual_seed(int(seed))
    unknown = torch.isnan(xf)

    def choose(g: SumGroupPlan, units, samples, idx):
        C = _gather_sum(V, idx)  # [K, B]
        scores = st.log_weights(g)[units] + C[:, samples].t()  # [P, K]
        mx = scores.amax(dim=1, keepdim=True)
        probs = torch.exp(scores - torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx)))
        return _inverse_cdf(probs, gen)

    def visit_leaves(bi: int, leaf, samples):
        b = st.tab.buckets[bi]
        var = b.var[leaf]
        todo = unknown[samples, var]
        if not bool(todo.any()):
            return
        leaf, samples, var = leaf[todo], samples[todo], var[todo]
        vals = get_leaf(b.dist.kind).sample(b.dist, st.params(bi), leaf, gen)
        out[samples, var] = vals.to(out.dtype)

    _topdown(st, B, V, choose, visit_leaves)
    return out


# ================================================================================================
# MAP
# ================================================================================================
def _maxplus(logw: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``out[i, b] = max_k logw[i, k] + C[k, b]`` in bounded-memory chunks."""
    U, K = logw.shape
    B = C.shape[1]
    out = torch.empty((U, B), dtype=C.dtype, device=C.device)
    bstep = max(1, min(B, _MAXPLUS_BUDGET // max(K, 1)))
    for b0 in range(0, B, bstep):
        Cb = C[:, b0 : b0 + bstep]
        ustep = max(1, _MAXPLUS_BUDGET // max(K * Cb.shape[1], 1))
        for u0 in range(0, U, ustep):
            out[u0 : u0 + ustep, b0 : b0 + bstep] = (logw[u0 : u0 + ustep, :, None] + Cb[None]).amax(dim=1)
    return out


@torch.no_grad()
def map_assignment(model, x=None, missing=None, *, return_log_prob: bool = False):
    """The most probable completion float32 [N, V] of the unknown entries given the observed ones.

    Same contract as :func:`pcir.ir.queries.map_assignment`: ``x=None`` is one row with every
    variable unknown; unknown entries are ``missing`` (default: the NaN entries). Max-product
    upward pass over the plan, backtracking along the maximising columns: exact on deterministic
    circuits, otherwise the best single induced tree (an approximation, a lower bound on the true
    MAP probability). ``return_log_prob=True`` also gives the max-product value [N].
    """
    _check_root(model)
    if x is None:
        xt = torch.zeros((1, model.num_vars), dtype=torch.float32)
        miss = torch.ones((1, model.num_vars), dtype=torch.bool, device=model.device)
    else:
        xt, miss = _data(model, x, missing)
    xf = model._prepare(xt, miss)
    B = xf.shape[0]
    st = _State(model)
    plan = model.plan
    dev = model.device
    V = torch.empty((plan.num_rows, B), dtype=torch.float32, device=dev)
    V[0] = 0.0
    modes: list[torch.Tensor] = []
    for bi, b in enumerate(st.tab.buckets):
        leaf_t = get_leaf(b.dist.kind)
        params = st.params(bi)
        L = b.rows.shape[0]
        mode = leaf_t.mode(b.dist, params, b.k)
        modes.append(mode)
        ar = torch.arange(L, device=dev)
        best = leaf_t.log_prob(b.dist, params, ar, mode)  # [L]
        xv = xf[:, b.var].t()  # [L, B]
        unk = torch.isnan(xv)
        lp = leaf_t.log_prob(
            b.dist, params, ar.repeat_interleave(B), torch.where(unk, torch.zeros_like(xv), xv).reshape(-1)
        ).reshape(L, B)
        V[b.rows] = torch.where(unk, best[:, None].expand(L, B), lp)
    for g, idx in st.tab.layers:
        C = _gather_sum(V, idx)
        if isinstance(g, SumGroupPlan):
            V[g.row : g.row + g.units] = _maxplus(st.log_weights(g), C)
        else:
            V[g.row : g.row + g.units] = C
    value = _root(model, V)
    _impossible_row(value, "map_assignment")
    out = xf.clone()
    unknown = torch.isnan(xf)

    def choose(g: SumGroupPlan, units, samples, idx):
        C = _gather_sum(V, idx)
        scores = st.log_weights(g)[units] + C[:, samples].t()
        return scores.argmax(dim=1)  # ties: the first column, as numpy's argmax in the reference

    def visit_leaves(bi: int, leaf, samples):
        b = st.tab.buckets[bi]
        var = b.var[leaf]
        todo = unknown[samples, var]
        out[samples[todo], var[todo]] = modes[bi][leaf[todo]].to(out.dtype)

    _topdown(st, B, V, choose, visit_leaves)
    return (out, value) if return_log_prob else out
