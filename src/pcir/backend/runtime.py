"""The runtime: a compiled circuit as a ``torch.nn.Module``.

Parameters (``nn.Parameter``, what optimisers see)
--------------------------------------------------
* ``sum_logits``: unnormalised log-weights of every sum parameter, flat in the plan's parameter
  layout (each parameter name once; tied groups share it). The forward pass normalises them per
  sum node (a log-softmax over the node's edges), so the circuit stays normalised whatever an
  optimiser does; entries without an edge hold ``-inf``.
* ``cat_logits``: the same for categorical leaves; bernoulli leaves are two-category tables.
* ``gauss``: ``(rows, 2)`` of (mean, log std) for gaussian leaves.
* ``leaf_params``: the IR parameters of the table families (binomial ``p``, discrete_logistic
  ``[mean, log_scale]``; literals have none), flat. The forward computes each such group's
  ``(units, k)`` log-probability table in torch (:func:`leaf_tables`, with the query leaves of
  :mod:`pcir.backend.queries`), appended to the categorical tables, so the categorical kernels
  serve them and autograd reaches ``leaf_params`` through the table.

Flows and gradients: two views of one backward pass
---------------------------------------------------
The backward pass computes PC flows top-down from a root flow. ``forward_backward`` starts it with
flow 1 per sample and accumulates the parameter flows for EM. The autograd path starts it with the
incoming gradient ``dL/d ll_b`` as the root flow: the flow of edge ij is then exactly
``dL/d log W_ij`` (normalised log-weight), and torch's autograd takes it from there through the
log-softmax to ``sum_logits``. With ``L = sum_b ll_b`` the two coincide.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from ..ir.circuit import Circuit
from ..ir.diagnostics import BackendError, DataError, PcirError
from .entropy import regularised_counts
from .plan import TABLE_PARAM_WIDTH, KernelPlan

_PI_OVER_SQRT3 = math.pi / math.sqrt(3.0)


def leaf_tables(plan: KernelPlan, leaf_params: torch.Tensor) -> torch.Tensor:
    """The flat log-probability tables of the table families (binomial, discrete_logistic,
    literal), ``plan.cat_size - plan.cat_norm_size`` entries, computed in float64 from the IR
    parameters and returned in float32 (autograd-friendly)."""
    from .queries import _log_prob_table, get_leaf

    parts = []
    for slot in plan.table_slots:
        units = int(slot.shape[0])
        w = TABLE_PARAM_WIDTH[slot.kind]
        if w == 0:
            prm = torch.zeros((units, 0), dtype=torch.float64, device=leaf_params.device)
        else:
            prm = leaf_params[slot.poff : slot.poff + units * w].to(torch.float64).view(slot.shape)
        parts.append(_log_prob_table(get_leaf(slot.kind), slot.dist, prm, slot.k).reshape(-1))
    if not parts:
        return leaf_params.new_zeros(0)
    return torch.cat(parts).to(torch.float32)


def _table_em(slot, old: torch.Tensor, counts: torch.Tensor, s, pc) -> torch.Tensor:
    """The M-step of a table family from its per-value flow counts ``(units, k)`` (the same
    closed forms as ``pcir.ir.distributions``, which depend only on flow-weighted per-value
    statistics), mixed with the old IR parameters by the step size. float64."""
    values = torch.arange(slot.k, dtype=torch.float64, device=counts.device)
    total = counts.sum(1)
    s1 = counts @ values
    if slot.kind == "binomial":
        n = float(int(slot.dist.arg("n")))
        denom = n * (total + pc)
        upd = (s1 + pc * n / 2.0) / torch.where(denom > 0, denom, torch.ones_like(denom))
        upd = torch.where(denom > 0, upd, old)
        return (1.0 - s) * old + s * upd
    # discrete_logistic: moment matching
    s2 = counts @ (values * values)
    mu0, ls0 = old[:, 0], old[:, 1]
    sd0 = torch.exp(ls0) * _PI_OVER_SQRT3
    w = total + pc
    safe = torch.where(w > 0, w, torch.ones_like(w))
    mu = (s1 + pc * mu0) / safe
    var = (s2 + pc * (sd0 * sd0 + mu0 * mu0)) / safe - mu * mu
    min_std = float(slot.dist.arg("min_std", 0.01))
    sd = torch.sqrt(torch.clamp(var, min=min_std**2))
    ls = torch.log(sd / _PI_OVER_SQRT3)
    upd = torch.stack([torch.where(w > 0, mu, mu0), torch.where(w > 0, ls, ls0)], dim=1)
    return (1.0 - s) * old + s * upd


def _segment_log_softmax(logits: torch.Tensor, row_id: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Log-softmax of ``logits`` within each segment ``row_id`` (autograd-friendly)."""
    if logits.numel() == 0:
        return logits
    with torch.no_grad():
        mx = torch.full((num_rows,), -math.inf, dtype=logits.dtype, device=logits.device)
        mx = mx.scatter_reduce(0, row_id, logits, reduce="amax", include_self=True)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    shifted = logits - mx[row_id]
    s = torch.zeros(num_rows, dtype=logits.dtype, device=logits.device).index_add(0, row_id, torch.exp(shifted))
    return shifted - torch.log(s)[row_id]


# the categorical log-probabilities the kernels read share cat_logits' storage (see
# CompiledCircuit._refresh_into_buffers): one table-sized buffer less (HCLT-512: 392 MiB)
SHARE_CAT_STORE = True

# parameters from which the initial values are computed on several threads
_PARALLEL_INIT = 1 << 20


def _batches(names: list[str], plan, target: int) -> list[list[str]]:
    """``names`` in order, cut into consecutive batches of at least ``target`` parameter entries
    (the last may be smaller)."""
    out: list[list[str]] = [[]]
    n = 0
    for name in names:
        out[-1].append(name)
        n += int(np.prod(plan.params[name].shape))
        if n >= target:
            out.append([])
            n = 0
    return [b for b in out if b]


# elements per chunk of the row-wise passes (normalisation, EM): bounds their temporaries
_CHUNK = 1 << 22


def _row_ranges(off: int, n: int, row_len: int):
    """Flat ranges ``[a, b)`` covering ``n`` entries from ``off`` in whole rows of ``row_len``, each
    at most about ``_CHUNK`` entries (so temporaries stay small whatever the circuit's size)."""
    rows = n // row_len
    step = max(1, _CHUNK // row_len)
    for r0 in range(0, rows, step):
        yield off + r0 * row_len, off + min(rows, r0 + step) * row_len


class _Segments:
    """Row-wise (segment) operations on a flat store: dense ``(rows, row_len)`` views where the
    rows of a run have one length (every dense/block sum and every table: no atomics, no
    per-entry index tensors), scatter/index_add only for the ragged rows of explicit sums."""

    def __init__(self, runs, row_id: np.ndarray, device: torch.device, edge: np.ndarray | None = None):
        self.runs = runs
        # ragged runs: local row ids (int64, as scatter needs), row count, and each entry's degree
        self.ragged: dict[int, tuple[torch.Tensor, int, torch.Tensor | None]] = {}
        for off, n, row_len in runs:
            if row_len or not n:
                continue
            rid = np.asarray(row_id[off : off + n], dtype=np.int64)
            local = rid - rid.min()
            rows = int(local.max()) + 1
            deg = None
            if edge is not None:
                d = np.bincount(local, weights=edge[off : off + n].astype(np.float64), minlength=rows)
                deg = torch.as_tensor(np.maximum(d, 1.0)[local], dtype=torch.float32, device=device)
            self.ragged[off] = (torch.as_tensor(local, device=device), rows, deg)

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        """Autograd-friendly (the gradient path); the cached no-grad path uses ``normalise_into``."""
        parts = []
        for off, n, row_len in self.runs:
            seg = x[off : off + n]
            if row_len:
                parts.append(torch.log_softmax(seg.view(-1, row_len), dim=1).reshape(-1))
            elif n:
                rid, rows, _ = self.ragged[off]
                parts.append(_segment_log_softmax(seg, rid, rows))
        if not parts:
            return x
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def normalise_into(self, x: torch.Tensor, out: torch.Tensor, log: bool, ragged_only: bool = False) -> None:
        """``out`` = row-wise (log-)softmax of ``x``, written in place chunk by chunk
        (``ragged_only``: the uniform runs were done already, by the engine's row kernel)."""
        fn = torch.log_softmax if log else torch.softmax
        same = x.data_ptr() == out.data_ptr()  # in place (the shared categorical store)
        for off, n, row_len in self.runs:
            if row_len:
                if ragged_only:
                    continue
                for a, b in _row_ranges(off, n, row_len):
                    if same:  # torch's out= refuses overlapping memory: one chunk's temporary
                        out[a:b].view(-1, row_len).copy_(fn(x[a:b].view(-1, row_len), 1))
                    else:
                        fn(x[a:b].view(-1, row_len), 1, out=out[a:b].view(-1, row_len))
            elif n:
                rid, rows, _ = self.ragged[off]
                ls = _segment_log_softmax(x[off : off + n], rid, rows)
                out[off : off + n] = ls if log else torch.exp(ls)


class _Tables:
    """Per-device index tensors derived from the plan (built once per device). Nothing here is
    per parameter entry except ``sum_edge`` (one byte) and the ragged rows of explicit sums.
    ``sum_edge`` is built on first use where every entry is an edge (``all_edges``: HCLT, PD,
    HMM, RAT-SPN), which the fused EM kernels do not need (8 MiB on HCLT-128)."""

    def __init__(self, plan: KernelPlan, device: torch.device):
        lt = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)
        self._plan = plan
        self._device = device
        self.all_edges = bool(plan.sum_edge.all())
        self._sum_edge = None if self.all_edges else torch.as_tensor(plan.sum_edge, dtype=torch.bool, device=device)
        self._inputs = None
        self.sum_seg = _Segments(plan.runs("sum"), plan.sum_row_id, device, plan.sum_edge)
        valid = plan.explicit_gather >= 0
        self.explicit_valid = torch.as_tensor(valid, device=device)
        self.explicit_src = lt(np.where(valid, plan.explicit_gather, 0))
        self.explicit_pos = lt(np.nonzero(valid)[0])
        self.explicit_dst = lt(plan.explicit_gather[valid])
        self.cat_seg = _Segments(plan.runs("cat"), plan.cat_row_id, device)
        self.gauss_min_std = torch.as_tensor(plan.gauss_min_std, dtype=torch.float32, device=device)
        self.var_k = torch.as_tensor(plan.var_k, dtype=torch.float32, device=device)
        self.discrete = self.var_k > 0
        # allowed values per column: [0, k) for discrete variables, finite for real ones
        big = float(np.finfo(np.float32).max)
        self.value_lo = torch.where(self.discrete, 0.0, -big)[None, :]
        self.value_hi = torch.where(self.discrete, self.var_k, big)[None, :]
        self.real = ~self.discrete[None, :]
        self.real_i8 = self.real.reshape(-1).to(torch.int8)  # for the Triton data check

    @property
    def sum_edge(self) -> torch.Tensor:
        """bool [sum_param_size]: whether each sum parameter entry carries an edge."""
        if self._sum_edge is None:
            self._sum_edge = torch.as_tensor(self._plan.sum_edge, dtype=torch.bool, device=self._device)
        return self._sum_edge

    @property
    def sum_edge_u8(self) -> torch.Tensor:
        """``sum_edge``'s bytes, for the row kernels."""
        return self.sum_edge.view(torch.uint8)

    @property
    def inputs(self):
        """(input block, variables, table indices) of every non-empty input block, built on first
        use (the gaussian input gradient; the engines keep their own)."""
        if self._inputs is None:
            lt = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=self._device)
            self._inputs = [(b, lt(b.var), lt(b.index)) for b in self._plan.inputs if b.count]
        return self._inputs


def _held_bytes(roots, skip: set[int]) -> int:
    """Bytes of the distinct tensor storages that ``roots`` (pcir objects) hold, through their
    attributes, lists, tuples and dicts, except the storages in ``skip`` (data pointers)."""
    seen: dict[int, int] = {}
    stack = [(r, 0) for r in roots]
    visited: set[int] = set()
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            ptr = st.data_ptr()
            if ptr and ptr not in skip:
                seen[ptr] = st.nbytes()
            continue
        if depth > 4 or id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, (list, tuple)):
            stack.extend((o, depth + 1) for o in obj)
        elif isinstance(obj, dict):
            stack.extend((o, depth + 1) for o in obj.values())
        elif type(obj).__module__.startswith("pcir.") and hasattr(obj, "__dict__"):
            stack.extend((o, depth + 1) for o in vars(obj).values())
    return sum(seen.values())


def _log32(arr: np.ndarray, out: np.ndarray | None = None, chunk: int = 1 << 22) -> np.ndarray:
    """float32 ``log(max(arr, 0))`` computed in float64, elementwise, into ``out`` (a new array by
    default); big arrays (an HMM's emission table: 68M entries) in chunks on several threads
    (numpy releases the GIL), with no float64 copy of the whole array."""
    a = np.asarray(arr).reshape(-1)
    if out is None:
        out = np.empty(a.shape, dtype=np.float32)

    def part(lo: int) -> None:
        v = np.maximum(a[lo : lo + chunk].astype(np.float64), 0.0)
        with np.errstate(divide="ignore"):  # (error state is per thread)
            np.log(v, out=v)
        out[lo : lo + chunk] = v

    starts = range(0, a.size, chunk)
    if len(starts) > 2:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            list(pool.map(part, starts))
    else:
        for lo in starts:
            part(lo)
    return out


def _slot_values(plan: KernelPlan, slot, arr) -> tuple[str, slice, np.ndarray]:
    """(store, where, float32 values) that hold a parameter's IR value ``arr``: sums as log-weights
    (``-inf`` off the edges), categoricals as log-probabilities, bernoullis as two-category log
    tables, gaussians as (mean, log std), table families as their own parameters."""
    arr = np.asarray(arr)
    n = int(np.prod(slot.shape))
    with np.errstate(divide="ignore"):
        if slot.kind == "sum":
            lv = np.log(np.maximum(arr.reshape(-1).astype(np.float32), 0.0))
            edge = plan.sum_edge[slot.offset : slot.offset + n]
            return "sum", slice(slot.offset, slot.offset + n), np.where(edge, lv, np.float32(-np.inf))
        if slot.kind == "categorical":
            return "cat", slice(slot.offset, slot.offset + n), _log32(arr)
        if slot.kind == "bernoulli":
            p = np.clip(arr.reshape(-1).astype(np.float64), 0.0, 1.0)
            tab = np.log(np.stack([1.0 - p, p], axis=1)).reshape(-1).astype(np.float32)
            return "cat", slice(slot.offset, slot.offset + 2 * n), tab
        if slot.kind in TABLE_PARAM_WIDTH:
            return "leaf", slice(slot.poff, slot.poff + n), np.asarray(arr, dtype=np.float32).reshape(-1)
        if slot.kind == "gaussian":
            a = arr.astype(np.float64)
            g = np.stack([a[:, 0], np.log(a[:, 1])], axis=1).astype(np.float32)
            return "gauss", slice(slot.offset, slot.offset + a.shape[0]), g
    raise BackendError(f"parameter '{slot.name}' of kind '{slot.kind}' has no module store")


class _DataCheck:
    """The device-side verdict of one batch's value check (see ``CompiledCircuit._prepare``)."""

    def __init__(self, model, xf: torch.Tensor, bad: torch.Tensor):
        self.model = model
        self.xf = xf  # the data before bad entries were replaced (for the message)
        self.bad = bad
        self.ok = (~bad.any()).to(torch.float32)

    def raise_if_bad(self) -> None:
        if not bool(self.ok):
            raise self.model._data_error(self.xf, self.bad)


class _CircuitFunction(torch.autograd.Function):
    """ll = circuit(x; log W, categorical log-probs, gaussian params) with a flows backward."""

    @staticmethod
    def forward(ctx, model: CompiledCircuit, xf, logw, cat_logp, gauss):  # type: ignore[override]
        W = model._kernel_weights(logw)
        eng = model._engine()
        V, aux = eng.forward(W, cat_logp, gauss, xf)
        ctx.model = model
        ctx.W = W
        ctx.aux = aux
        ctx.save_for_backward(xf, cat_logp, gauss)
        ctx.V = V  # not saved_tensors: the backward rewrites its scratch rows (recomputed products)
        return model._root_values(V)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        model: CompiledCircuit = ctx.model
        xf, cat_logp, gauss = ctx.saved_tensors
        V = ctx.V
        root_flow = grad_out.reshape(grad_out.shape[0], -1).t().to(torch.float32)
        eng = model._engine()
        F, PF = eng.backward(ctx.W, V, ctx.aux, xf, root_flow)
        grad_logw = model._fold_flows(PF)
        cat_grad, g5 = eng.input_stats(F, xf, gauss)
        x_grad = model._x_grad(F, xf, gauss) if ctx.needs_input_grad[1] else None
        return None, x_grad, grad_logw, cat_grad, g5[:, 3:5].contiguous()


class CompiledCircuit(nn.Module):
    """A circuit compiled to kernels. See :func:`pcir.backend.compile` and the module docstring.

    ``model(x, missing=None)`` returns per-sample log-likelihoods ``[B]`` (``[B, units]`` for a
    root of several units) and supports autograd; ``forward_backward`` + ``em_step`` train by EM.
    """

    def __init__(
        self,
        circuit: Circuit,
        plan: KernelPlan,
        *,
        precision: str = "tf32x3",
        engine: str = "auto",
        source: str | None = None,
        kernels: Any = None,
    ):
        super().__init__()
        self.circuit = circuit
        self.plan = plan
        self.precision = precision
        self.engine_name = engine
        self.source = source  # generated Triton source (None for the torch engine)
        self._kernels = kernels  # the imported generated module
        self._tables: dict[str, _Tables] = {}
        self._engines: dict[str, Any] = {}
        self._cache: tuple | None = None
        self._graphs: dict = {}
        # (verdict word, counter) of the graph being captured with a signalling data check
        # (``_maybe_graphed``'s ``signal``), read by ``_checked_data``
        self._capture_signal = None
        self._em_args: torch.Tensor | None = None
        self._em_args_host: tuple[float, float] | None = None
        self.cuda_graphs = True  # capture forward / forward_backward / em_step per batch shape on CUDA
        self._soften = 1.0  # data softening of forward_backward (see the ``soften`` property)
        self._pending = False  # forward_backward accumulated flows that no em_step has applied yet
        self._fusion_plan: tuple[bool, bool] | None = None  # see _fusion
        # the initial values are written into host arrays, one slot at a time, and become the
        # parameters in one transfer each (big circuits have thousands of slots)
        stores = {
            "sum": np.full(plan.sum_param_size, -np.inf, dtype=np.float32),
            "cat": np.zeros(plan.cat_norm_size, dtype=np.float32),
            "gauss": np.zeros((plan.gauss_rows, 2), dtype=np.float32),
            "leaf": np.zeros(plan.leaf_param_size, dtype=np.float32),
        }

        def fill(name: str) -> None:  # disjoint slices of the stores: safe from several threads
            slot, value = plan.params[name], circuit.param_value(name)
            if slot.kind == "categorical":  # straight into the store (tables can be huge)
                _log32(value, out=stores["cat"][slot.offset : slot.offset + int(np.prod(slot.shape))])
                return
            store, where, vals = _slot_values(plan, slot, value)
            stores[store][where] = vals

        names = [n for n, slot in plan.params.items() if slot.kind not in ("indicator", "literal")]
        size = plan.sum_param_size + plan.cat_norm_size
        threads = min(16, os.cpu_count() or 1)
        if size >= _PARALLEL_INIT and len(names) > 1 and threads > 1:
            # numpy's random fills, logs and copies release the GIL: the seeded initial values of
            # a big circuit (HCLT-512: 138M) are drawn on several cores, in batches of slots of
            # about equal size (one task per slot made HCLT-32's 1,320 small slots slower than
            # one thread: the pool's overhead and the GIL, not the work)
            from concurrent.futures import ThreadPoolExecutor

            def fill_all(batch: list[str]) -> None:
                for name in batch:
                    fill(name)

            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(fill_all, _batches(names, plan, size // (4 * threads))))
        else:
            for name in names:
                fill(name)
        self.sum_logits = nn.Parameter(torch.from_numpy(stores["sum"]))
        self.cat_logits = nn.Parameter(torch.from_numpy(stores["cat"]))
        self.gauss = nn.Parameter(torch.from_numpy(stores["gauss"]))
        if plan.leaf_param_size:
            self.leaf_params = nn.Parameter(torch.from_numpy(stores["leaf"]))
        else:  # no table family with parameters: not a Parameter (DDP rejects unused ones)
            self.register_buffer("leaf_params", torch.zeros(0), persistent=False)
        # the flow buffers of the sums and the categorical tables are allocated on first use
        # (_flows, _counts): the training step (train_step) needs neither, and each is the size
        # of its parameters (pd-256: 0.8 GiB of sum flows)
        self.register_buffer("sum_flows", torch.zeros(0), persistent=False)
        self.register_buffer("cat_flows", torch.zeros(0), persistent=False)
        self.register_buffer("gauss_stats", torch.zeros(plan.gauss_rows, 3), persistent=False)

    # ---- basics ----------------------------------------------------------------------------
    @property
    def num_vars(self) -> int:
        return self.plan.num_vars

    @property
    def device(self) -> torch.device:
        return self.sum_logits.device

    def extra_repr(self) -> str:
        s = self.plan.stats()
        return f"engine={self._engine().name}, precision={self.precision}, rows={s['rows']}, layers={s['layers']}, weights={s['weights']}"

    def _key(self) -> str:
        return str(self.device)

    def _tab(self) -> _Tables:
        k = self._key()
        if k not in self._tables:
            self._tables[k] = _Tables(self.plan, self.device)
        return self._tables[k]

    def _engine(self):
        k = self._key()
        if k not in self._engines:
            use_triton = self.engine_name == "triton" or (
                self.engine_name == "auto" and self._kernels is not None and _triton_can_run(self.device)
            )
            if use_triton:
                from .triton_engine import TritonEngine

                self._engines[k] = TritonEngine(self.plan, self.device, self._kernels, self.precision)
            else:
                from .torch_engine import TorchEngine

                self._engines[k] = TorchEngine(self.plan, self.device)
        return self._engines[k]

    # ---- parameters ------------------------------------------------------------------------
    def _normalised(self):
        """(log W in parameter layout, categorical log-probs) from the logits."""
        t = self._tab()
        logw = t.sum_seg.log_softmax(self.sum_logits)
        logp = t.cat_seg.log_softmax(self.cat_logits)
        if self.plan.cat_size > self.plan.cat_norm_size:
            logp = torch.cat([logp, leaf_tables(self.plan, self.leaf_params)])
        return logw, logp

    def _versions(self):
        # straight from the module's dicts (nn.Module.__getattr__ costs about a microsecond a
        # lookup, and every graphed call checks this key)
        p = self._parameters
        s, c = p["sum_logits"], p["cat_logits"]
        lp = p["leaf_params"] if "leaf_params" in p else self._buffers["leaf_params"]
        return (
            s._version,
            c._version,
            lp._version,
            s.device,
            id(s),
            id(c),
            id(lp),
            c.data_ptr(),  # ``.data`` replaced: the shared store below moves with it
        )

    def _normalised_cached(self):
        """(log W, categorical log-probs, kernel weights W) in persistent buffers, refreshed in place
        when the parameters changed (stable storage: captured CUDA graphs read them)."""
        key = self._versions()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2], self._cache[3]
        with torch.no_grad():
            self._refresh_into_buffers()
        self._cache = (key, *self._cache[1:])  # type: ignore[index]
        return self._cache[1], self._cache[2], self._cache[3]

    def _refresh_into_buffers(self) -> None:
        """Normalise the logits into the persistent buffers ``W`` (kernel weights, linear) and
        ``logp`` (categorical log-probabilities), in place and chunk by chunk: the sum parameters
        exist three times (logits, the normalised buffer, the flows), not more.

        Categorical log-probabilities are log-softmaxed logits, and log-softmax leaves
        log-probabilities as they are: so unless table families append derived tables to ``logp``,
        ``logp`` *is* ``cat_logits``' storage (``SHARE_CAT_STORE``), renormalised in place (a shift
        per row, which changes no probability) when the logits changed. EM writes
        log-probabilities anyway; the categorical tables then exist twice (log-probabilities and
        flows), not three times."""
        plan, t = self.plan, self._tab()
        dev = self.sum_logits.device
        share = SHARE_CAT_STORE and plan.cat_size == plan.cat_norm_size
        stale = self._cache is None or self._cache[3].device != dev
        if not stale and share and self._cache[2].data_ptr() != self.cat_logits.data_ptr():  # type: ignore[index]
            stale = True  # the logits' storage was replaced
        if stale:
            W = torch.empty(plan.w_size, dtype=torch.float32, device=dev)
            logp = self.cat_logits.data if share else torch.empty(plan.cat_size, dtype=torch.float32, device=dev)
            self._cache = (None, None, logp, W)
            self._graphs = {}  # captured graphs read the old buffers
        _, _, logp, W = self._cache
        eng = self._engine()
        rows = getattr(eng, "normalise_rows", None)  # one kernel per tile shape over all uniform runs
        with torch.no_grad():
            if rows is not None:
                rows("sum", self.sum_logits.detach(), W, False)
                rows("cat", self.cat_logits.detach(), logp, True)
            t.sum_seg.normalise_into(self.sum_logits.detach(), W, log=False, ragged_only=rows is not None)
            t.cat_seg.normalise_into(self.cat_logits.detach(), logp, log=True, ragged_only=rows is not None)
            self._refresh_derived()

    def _refresh_derived(self) -> None:
        """The parts of the buffers computed from others: explicit sums' dense expansions, the
        table families' log-probability tables."""
        plan, t = self.plan, self._tab()
        _, _, logp, W = self._cache  # type: ignore[misc]
        n = plan.sum_param_size
        if plan.w_size > n:
            W[n:] = torch.where(t.explicit_valid, W[:n][t.explicit_src], 0.0)
        if plan.cat_size > plan.cat_norm_size:
            logp[plan.cat_norm_size :] = leaf_tables(plan, self.leaf_params.detach())

    def _invalidate(self) -> None:
        if self._cache is not None:
            self._cache = (None, *self._cache[1:])

    def _kernel_weights(self, logw: torch.Tensor) -> torch.Tensor:
        """Linear weights in the kernel layout (parameter layout + dense expansions of explicit
        sums), for the autograd path."""
        t = self._tab()
        with torch.no_grad():
            w = torch.exp(logw.detach())
            if self.plan.w_size == self.plan.sum_param_size:
                return w.contiguous()
            return torch.cat([w, torch.where(t.explicit_valid, w[t.explicit_src], 0.0)])

    def _fold_flows(self, PF: torch.Tensor) -> torch.Tensor:
        """Kernel-layout parameter flows -> parameter layout (explicit sums folded back)."""
        n = self.plan.sum_param_size
        out = PF[:n].clone()
        if self.plan.w_size > n:
            t = self._tab()
            out.index_add_(0, t.explicit_dst, PF[n:][t.explicit_pos])
        return out

    def _slot(self, name: str):
        plan = self.plan
        if name in plan.params:
            return plan.params[name]
        if name in plan.group_param:
            return plan.params[plan.group_param[name]]
        from ..ir.diagnostics import suggest

        cands = list(plan.params) + list(plan.group_param)
        hint = suggest(name, cands)
        raise BackendError(f"unknown parameter or group '{name}'", hint=f"did you mean '{hint}'?" if hint else None)

    def get_param(self, name: str) -> torch.Tensor:
        """The current value of a parameter (or of a group's parameter) in the IR's format."""
        slot = self._slot(name)
        with torch.no_grad():
            logw, logp = self._normalised()
            n = int(np.prod(slot.shape))
            if slot.kind == "sum":
                return torch.exp(logw[slot.offset : slot.offset + n]).reshape(slot.shape).clone()
            if slot.kind == "categorical":
                return torch.exp(logp[slot.offset : slot.offset + n]).reshape(slot.shape).clone()
            if slot.kind == "bernoulli":
                return torch.exp(logp[slot.offset : slot.offset + 2 * n]).reshape(n, 2)[:, 1].clone()
            if slot.kind == "gaussian":
                g = self.gauss[slot.offset : slot.offset + slot.shape[0]]
                return torch.stack([g[:, 0], torch.exp(g[:, 1])], dim=1).clone()
            if slot.kind in TABLE_PARAM_WIDTH:
                m = int(np.prod(slot.shape))
                return self.leaf_params[slot.poff : slot.poff + m].reshape(slot.shape).clone()
            for b in self.plan.inputs:  # indicator values are compiled into the plan
                for gname, _row, _units in b.groups:
                    if self.plan.group_param.get(gname) == slot.name:
                        return torch.as_tensor(np.array(self.circuit.param_value(slot.name)), device=self.device)
        raise BackendError(f"parameter '{name}' has no value")  # pragma: no cover

    def set_param(self, name: str, value) -> None:
        """Set a parameter (IR format: sum weights, probabilities, [mean, std]); it is normalised."""
        slot = self._slot(name)
        arr = np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        if arr.shape != tuple(slot.shape):
            raise BackendError(f"parameter '{slot.name}' has shape {list(slot.shape)}, got {list(arr.shape)}")
        if slot.kind in ("indicator", "literal"):
            raise BackendError(f"parameter '{slot.name}' holds {slot.kind} values, which are compiled into the kernels")
        with torch.no_grad():
            self._set_slot(slot.name, arr)

    def _set_slot(self, name: str, arr: np.ndarray) -> None:
        store, where, vals = _slot_values(self.plan, self.plan.params[name], arr)
        target = {"sum": self.sum_logits, "cat": self.cat_logits, "gauss": self.gauss, "leaf": self.leaf_params}[store]
        target.data[where] = torch.as_tensor(vals, dtype=torch.float32, device=target.device)
        self._invalidate()

    def param_flows(self, name: str) -> torch.Tensor:
        """The flows accumulated for a parameter since the last ``em_step``/``zero_flows``.

        Sums: edge flows in the parameter's shape; categorical: expected counts ``(units, k)``;
        bernoulli: ``(units, 2)`` counts of 0 and 1; gaussian: ``(units, 3)`` of
        (sum of flows, flow-weighted sum of x, of x^2).
        """
        slot = self._slot(name)
        n = int(np.prod(slot.shape))
        if slot.kind == "sum":
            return self._flows()[slot.offset : slot.offset + n].reshape(slot.shape).clone()
        if slot.kind == "categorical":
            return self._counts()[slot.offset : slot.offset + n].reshape(slot.shape).clone()
        if slot.kind == "bernoulli":
            return self._counts()[slot.offset : slot.offset + 2 * n].reshape(n, 2).clone()
        if slot.kind == "gaussian":
            return self.gauss_stats[slot.offset : slot.offset + slot.shape[0]].clone()
        if slot.kind in TABLE_PARAM_WIDTH:  # per-value flow counts (units, k)
            u = int(slot.shape[0])
            return self._counts()[slot.offset : slot.offset + u * slot.k].reshape(u, slot.k).clone()
        raise BackendError(f"parameter '{slot.name}' (indicator values) has no flows")

    def to_circuit(self) -> Circuit:
        """The circuit with the current parameter values (concrete, float64)."""
        values = {
            name: self.get_param(name).detach().double().cpu().numpy()
            for name, slot in self.plan.params.items()
            if slot.kind not in ("indicator", "literal")
        }
        return self.circuit.with_params(**values)

    # ---- data ------------------------------------------------------------------------------
    def _to_device(self, x, keep_dtype: bool = False) -> torch.Tensor:
        """The host-side part of :meth:`_prepare`: dtype and shape checks, then float32 ``[B, V]``
        on the model's device (values are checked on the device). ``keep_dtype``: the data's own
        dtype, for the checked (graphed) calls, whose ``_checked_data`` converts it inside the
        graph (one launch fewer before each replay)."""
        plan = self.plan
        if isinstance(x, np.ndarray) or not isinstance(x, torch.Tensor):
            try:
                arr = np.asarray(x)
            except Exception as e:  # noqa: BLE001
                raise DataError(f"cannot read data as an array: {e}") from None
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise DataError(f"data has dtype {arr.dtype}; expected integers or floats")
            x = torch.as_tensor(arr)
        if x.is_complex() or not (
            x.is_floating_point()
            or x.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
        ):
            raise DataError(f"data has dtype {x.dtype}; expected integers or floats")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != plan.num_vars:
            raise DataError(f"data has shape {tuple(x.shape)}, expected (N, {plan.num_vars})")
        if keep_dtype:
            return x.to(device=self.device)
        return x.to(device=self.device, dtype=torch.float32)

    def _prepare(self, x, missing=None, *, defer: bool = False):
        """Validate and convert data to float32 ``[B, V]`` on the model's device, NaN = missing.

        Shape and dtype are checked at once (host metadata). Values (NaN or inf where not
        missing, categories out of range or not integers) are checked on the device: bad entries
        are replaced by 0 (a valid value of every variable), so no kernel can read out of range,
        and with ``defer=True`` the call returns ``(xf, check)`` without a device-to-host
        synchronisation; ``check.ok`` is a 0-dim float tensor (1 good, 0 bad) for masking, and
        ``check.raise_if_bad()`` (one sync, at the end of the call) raises the
        :class:`DataError` naming the first bad entry.
        """
        plan = self.plan
        xf = self._to_device(x)
        if missing is not None:
            m = torch.as_tensor(np.asarray(missing) if not isinstance(missing, torch.Tensor) else missing)
            if tuple(m.shape) != tuple(xf.shape):
                if m.ndim == 1 and xf.shape[0] == 1 and m.shape[0] == plan.num_vars:
                    m = m[None, :]
                else:
                    raise DataError(f"missing mask has shape {tuple(m.shape)}, expected {tuple(xf.shape)}")
            m = m.to(device=self.device, dtype=torch.bool)
        else:
            m = None
        ok = self._values_ok(xf)
        bad = ~ok if m is None else ~(ok | m)
        check = _DataCheck(self, xf, bad)
        xf = torch.where(bad, torch.zeros((), dtype=xf.dtype, device=xf.device), xf)
        if m is not None:
            xf = torch.where(m, torch.full_like(xf, math.nan), xf)
        if not defer:
            check.raise_if_bad()
            return xf
        return xf, check

    def _values_ok(self, xf: torch.Tensor) -> torch.Tensor:
        """Per entry: one comparison chain, lo <= x < hi (finite bounds for real variables, so
        that NaN and +-inf fail) and integral for discrete ones."""
        t = self._tab()
        return (xf >= t.value_lo) & (xf < t.value_hi) & ((xf == torch.floor(xf)) | t.real)

    def _data_error(self, xf: torch.Tensor, bad: torch.Tensor) -> DataError:
        plan = self.plan
        r, c = (int(v) for v in torch.nonzero(bad)[0])
        name = plan.var_names[c]
        val = float(xf[r, c])
        if not math.isfinite(val):
            return DataError(
                f"{'NaN' if math.isnan(val) else val} in data at row {r}, column {c} ({name})",
                hint="mark missing values with the missing mask",
            )
        dom = "binary" if plan.var_k[c] == 2 else f"categorical({plan.var_k[c]})"
        return DataError(f"value {val:g} at row {r}, column {c} ({name}) is outside the domain {dom}")

    def _root_values(self, V: torch.Tensor) -> torch.Tensor:
        p = self.plan
        r = V[p.root_row : p.root_row + p.root_units]
        return r[0].clone() if p.root_units == 1 else r.t().contiguous()

    # ---- forward (autograd) ----------------------------------------------------------------
    def forward(self, x, missing=None) -> torch.Tensor:
        """Per-sample log-likelihoods (float32). Autograd works through it (see module docs)."""
        if missing is None and type(x) is torch.Tensor and self.cuda_graphs:
            out = self._forward_replay(x)
            if out is not None:
                return out
        params_grad = torch.is_grad_enabled() and (
            self.sum_logits.requires_grad
            or self.cat_logits.requires_grad
            or self.gauss.requires_grad
            or self.leaf_params.requires_grad
        )
        x_grad = isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()
        if missing is None and not (params_grad or x_grad) and self._graphs_on():
            # the value check runs inside the CUDA graph too: one replay and one sync per call
            # (batch-1 queries are bound by launches, not by work)
            xf = self._to_device(x, keep_dtype=True)  # converted inside the graph
            with torch.no_grad():
                self._normalised_cached()
                out, good = self._graphed_forward(xf)
            if not good:
                self._prepare(x)  # raises the DataError that names the first bad entry
                raise BackendError("internal error: the graphed data check disagrees with the eager one")
            return out
        xf, check = self._prepare(x, missing, defer=True)
        if isinstance(x, torch.Tensor) and x.requires_grad:
            xg = x.to(torch.float32)
            xf = xg + (xf - xg).detach() if missing is None else torch.where(torch.isnan(xf), xf, xg)
        needs_grad = params_grad or (torch.is_grad_enabled() and xf.requires_grad)
        if not needs_grad:
            with torch.no_grad():
                self._normalised_cached()
                out = self._maybe_graphed(("forward", tuple(xf.shape)), self._forward_core, xf)
        else:
            logw, logp = self._normalised()
            out = _CircuitFunction.apply(self, xf, logw, logp, self.gauss)
        check.raise_if_bad()  # the only synchronisation, after every kernel was queued
        return out

    def _forward_replay(self, x: torch.Tensor) -> torch.Tensor | None:
        """The graphed, checked forward of a batch whose shape, dtype and device were seen before,
        with as little host work as possible: between the call and the graph's first kernel the
        device waits for the host, and on a small circuit that wait was as long as the kernels
        (hmm-64's forward: 0.12 ms of kernels, 0.23 ms a call; bench/call_overhead.py). ``None``
        where the general path must run: no graph yet, parameters changed since it was captured
        (the buffers it reads are refreshed first), gradients wanted, other device, data not
        contiguous."""
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self._parameters.values())):
            return None
        ent = self._graphs.get(("forward-checked", tuple(x.shape), x.dtype))
        if type(ent) is not tuple or self._cache is None or self._cache[0] != self._versions():
            return None
        if x.device != ent[2][0].device or not x.is_contiguous():
            return None
        res = self._replay_at(ent, x)
        if not self._data_ok(ent):
            self._prepare(x)  # raises the DataError that names the first bad entry
            raise BackendError("internal error: the graphed data check disagrees with the eager one")
        return res

    def _graphed_forward(self, xf: torch.Tensor):
        """(root values, whether every entry passed the check): the checked forward of ``xf`` (on
        the model's device, any accepted dtype), captured as a CUDA graph on the second call of a
        shape and dtype and replayed after. The graph reads the data from the address in a word of
        pinned host memory (``TritonEngine.check_data_at``), written before each replay: the
        caller's tensor itself, with no copy into a static input. Its data check writes the count
        of rejected entries to a second word when it ends (``_data_ok``), so the call returns once
        the check has run, while the rest of the graph still computes."""
        key = ("forward-checked", tuple(xf.shape), xf.dtype)
        ent = self._graphs.get(key)
        if ent is None or ent == "off":
            if ent is None:
                self._graphs[key] = "warm"  # the first call runs eagerly (and JIT-compiles)
                eng = self._engine()
                if hasattr(eng, "data_dtypes"):  # its compile up front covers the graph's check
                    eng.data_dtypes.add(xf.dtype)
            vals, good = self._checked_forward_core(xf)
            return vals, bool(good)
        if ent == "warm":
            graph = torch.cuda.CUDAGraph()
            try:
                pin = torch.tensor([0, -1], dtype=torch.int64).pin_memory()  # address, verdict
                done = torch.zeros(1, dtype=torch.int32, device=xf.device)  # the check's counter
                xc = xf.contiguous()
                pin[0] = xc.data_ptr()
                self._checked_forward_core_at(pin, tuple(xf.shape), xf.dtype, (pin[1:], done))  # compiles
                torch.cuda.synchronize(self.device)
                with torch.cuda.graph(graph):
                    out = self._checked_forward_core_at(pin, tuple(xf.shape), xf.dtype, (pin[1:], done))
            except Exception:  # noqa: BLE001  (capture is an optimisation: fall back to eager)
                self._graphs[key] = "off"
                torch.cuda.synchronize(self.device)
                vals, good = self._checked_forward_core(xf)
                return vals, bool(good)
            ent = self._graphs[key] = (graph, pin.numpy(), out, pin, done)
        xc = xf.contiguous()
        res = self._replay_at(ent, xc)
        return res, self._data_ok(ent)

    @staticmethod
    def _replay_at(ent, x: torch.Tensor) -> torch.Tensor:
        """Replay a graph of ``_graphed_forward`` on the contiguous tensor ``x`` (its address in
        the pinned word) and return a clone of its root values; the caller must then wait for
        the check's verdict (``_data_ok``) before anything else replays this graph or frees
        ``x``. Should the clone fail, the graph is waited for before the error leaves."""
        graph, word, out = ent[0], ent[1], ent[2]
        word[0] = x.data_ptr()
        word[1] = -1
        graph.replay()
        try:
            return out[0].clone()
        except BaseException:
            bool(out[1])
            raise

    #: polls of the verdict word between two looks at the stream (about 0.1 ms of polling)
    VERDICT_POLLS = 1024

    @staticmethod
    def _data_ok(ent) -> bool:
        """Whether the data of the graph's last replay passed the check: waits for the check's
        launch only (it writes the count of rejected entries to the pinned word ``ent[1][1]``
        when its last program ends; codegen's ``check_data``), not for the rest of the graph.
        Once the word is set the data was read, so the word and the tensor may change."""
        return CompiledCircuit._await_verdict(ent[1], 1, ent[2][1])

    @staticmethod
    def _await_verdict(word, i: int, good: torch.Tensor) -> bool:
        """Poll ``word[i]`` (pinned, -1 until the data check writes its count of rejected entries)
        and say whether that count is 0. Should the stream fall idle with the word unset, the
        graph's own flag ``good`` answers."""
        if word[i] < 0 and good.device.type != "cuda":
            return bool(good)
        n = 0
        while word[i] < 0:
            n += 1
            if n % CompiledCircuit.VERDICT_POLLS == 0 and torch.cuda.current_stream(good.device).query():
                if word[i] < 0:
                    return bool(good)
        return int(word[i]) == 0

    def _checked_forward_core_at(self, addr: torch.Tensor, shape: tuple, dtype: torch.dtype, signal=None):
        """``_checked_forward_core`` of contiguous data whose address is in ``addr`` (Triton
        engine: ``check_data_at``, with its ``signal``); the forward reads the checked,
        transposed copy only."""
        t = self._tab()
        xT, bad = self._engine().check_data_at(
            addr, shape, dtype, t.value_lo.reshape(-1), t.value_hi.reshape(-1), t.real_i8, signal
        )
        return self._forward_core(xT.t(), xT), bad[0] == 0

    def log_likelihood(self, x, missing=None) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(x, missing)

    # ---- queries (pcir.backend.queries; see docs/queries.md) --------------------------------
    def marginal(self, x, missing=None) -> torch.Tensor:
        """Per-sample log-probability ``[N]`` of the observed entries (default missing: NaN)."""
        from .queries import marginal

        return marginal(self, x, missing)

    def conditional(self, x, missing=None, targets=None, *, method: str = "auto") -> dict[int, torch.Tensor]:
        """``{v: [N, k_v]}``: ``P(x_v = a | evidence)`` for each target variable ``v``."""
        from .queries import conditional

        return conditional(self, x, missing, targets, method=method)

    def sample(self, n: int | None = None, evidence=None, missing=None, seed: int = 0) -> torch.Tensor:
        """Samples ``[n, V]``, unconditional or completing the unknown entries of ``evidence``."""
        from .queries import sample

        return sample(self, n, evidence, missing, seed)

    def map(self, x=None, missing=None, *, return_log_prob: bool = False):
        """The most probable completion ``[N, V]`` of the unknown entries (max-product)."""
        from .queries import map_assignment

        return map_assignment(self, x, missing, return_log_prob=return_log_prob)

    # ---- EM --------------------------------------------------------------------------------
    def zero_flows(self) -> None:
        self.sum_flows.zero_()
        self.cat_flows.zero_()  # (nothing while the counts are not allocated)
        self.gauss_stats.zero_()
        self._pending = False

    def _counts(self) -> torch.Tensor:
        """The categorical counts buffer ``cat_flows`` [cat_size], allocated (zero) on first use."""
        if self.cat_flows.numel() != self.plan.cat_size:
            self.cat_flows = torch.zeros(self.plan.cat_size, dtype=torch.float32, device=self.gauss_stats.device)
        return self.cat_flows

    def _flows(self) -> torch.Tensor:
        """The sums' parameter flow buffer ``sum_flows`` [sum_param_size], allocated (zero) on
        first use."""
        if self.sum_flows.numel() != self.plan.sum_param_size:
            self.sum_flows = torch.zeros(self.plan.sum_param_size, dtype=torch.float32, device=self.gauss_stats.device)
        return self.sum_flows

    def flow_tensors(self) -> list[torch.Tensor]:
        """The flow buffers that ``forward_backward`` accumulates into and ``em_step`` reads: the
        tensors themselves (contiguous float32), to be modified only in place. Data-parallel EM
        sums them over ranks between the two (:mod:`pcir.distributed`)."""
        return [self._flows(), self._counts(), self.gauss_stats]

    @torch.no_grad()
    def forward_backward(self, x, missing=None) -> torch.Tensor:
        """Forward, then PC flows (root flow 1 per sample) accumulated into the flow buffers."""
        self._flows()  # allocated before a CUDA graph captures the step
        self._counts()
        self._pending = True
        if missing is None:
            # the value check inside the (graphed) step: no launches of its own before the replay
            xf = self._to_device(x, keep_dtype=True)  # converted inside the graph
            self._normalised_cached()
            key = ("fb-checked", tuple(xf.shape), xf.dtype, self._soften)
            out, good = self._maybe_graphed(key, self._checked_forward_backward_core, xf, uncloned=(1,))
            if not bool(good):  # nothing was accumulated (root flow 0)
                self._prepare(x)  # raises the DataError that names the first bad entry
                raise BackendError("internal error: the data check in the step disagrees with the eager one")
            return out
        xf, check = self._prepare(x, missing, defer=True)
        self._normalised_cached()
        # bad data gives a zero root flow: nothing is accumulated before the error is raised
        key = ("fb", tuple(xf.shape), self._soften)
        out = self._maybe_graphed(key, self._forward_backward_core, xf, check.ok)
        check.raise_if_bad()
        return out

    def _checked_data(self, xf):
        """(data, transposed data or None, good): the value check of ``_prepare`` inside a
        (graphed) call, bad entries replaced by 0 and ``good`` a 0-dim bool. The Triton engine
        does it in one kernel that also writes the transposed copy its leaf kernels read
        (``TritonEngine.check_data``; the data as given is then only read through that copy);
        the torch engine with elementwise ops. ``xf`` may have any dtype ``_to_device`` accepts
        (``keep_dtype``): it is converted to float32 here, inside the graph."""
        xf = xf.to(torch.float32)
        eng = self._engine()
        if eng.name == "triton":
            t = self._tab()
            xT, bad = eng.check_data(
                xf, t.value_lo.reshape(-1), t.value_hi.reshape(-1), t.real_i8, signal=self._capture_signal
            )
            return xf, xT, bad[0] == 0
        ok = self._values_ok(xf)
        return torch.where(ok, xf, torch.zeros((), dtype=xf.dtype, device=xf.device)), None, ok.all()

    def _checked_forward_core(self, xf):
        """(root values, whether every entry was a valid value) from raw data: the value check of
        ``_prepare`` and the forward in one function, so that one CUDA graph holds both."""
        xf, xT, good = self._checked_data(xf)
        return self._forward_core(xf, xT), good

    def _checked_forward_backward_core(self, xf):
        """forward_backward's work and its value check in one function (one CUDA graph): bad data
        gives a zero root flow, so nothing is accumulated, and ``good`` False."""
        xf, xT, good = self._checked_data(xf)
        return self._forward_backward_core(xf, good.to(torch.float32), xT=xT), good

    def _forward_core(self, xf, xT=None):
        _, _, logp, W = self._cache  # type: ignore[misc]
        V, _aux = self._engine().forward(W, logp, self.gauss, xf, **self._xt(xT))
        return self._root_values(V)

    @staticmethod
    def _xt(xT) -> dict:
        """The engine's keyword for data already transposed by ``TritonEngine.check_data``."""
        return {} if xT is None else {"xT": xT}

    # ---- data softening ----------------------------------------------------------------------
    @property
    def soften(self) -> float:
        """Data softening for EM (Liu & Van den Broeck, *Tractable Regularization of Probabilistic
        Circuits*, NeurIPS 2021): ``forward_backward`` treats every observed discrete value as soft
        evidence, probability ``soften`` on the value seen and ``1 - soften`` spread evenly over the
        variable's other values. 1 (the default) is hard data. Only ``forward_backward`` (hence EM)
        softens; ``model(x)`` and the queries evaluate the model itself."""
        return self._soften

    @soften.setter
    def soften(self, beta: float) -> None:
        beta = float(beta)
        if not 0.0 < beta <= 1.0:
            raise PcirError(f"soften = {beta:g}: data softening takes a probability in (0, 1]")
        self._soften = beta

    def _soft_runs(self):
        """The uniform runs ``(offset, n, k)`` of the normalised categorical tables with k > 1."""
        return [(o, n, k) for o, n, k in self._tab().cat_seg.runs if k > 1 and o < self.plan.cat_norm_size]

    def _softened_logp(self, logp: torch.Tensor) -> torch.Tensor:
        """Leaf tables under soft evidence: the value seen x has likelihood
        ``beta * theta_x + (1 - beta) / (k - 1) * (1 - theta_x)`` (the leaf summed over the true value)."""
        beta = self._soften
        out = logp.clone()
        for off, n, k in self._soft_runs():
            p = torch.exp(logp[off : off + n])
            out[off : off + n] = torch.log(beta * p + (1.0 - beta) / (k - 1) * (1.0 - p))
        return out

    def _unsoften_counts(self, counts: torch.Tensor, logp: torch.Tensor, logp_soft: torch.Tensor) -> torch.Tensor:
        """Expected counts of the true values from the counts of the values seen: a seen x came
        from true value v with probability ``q(x | v) theta_v / theta'_x``, so
        ``c_v = theta_v * (beta r_v + (1 - beta) / (k - 1) * (sum_x r_x - r_v))``, ``r = n / theta'``."""
        beta = self._soften
        out = counts.clone()
        for off, n, k in self._soft_runs():
            cnt = counts[off : off + n].view(-1, k)
            theta = torch.exp(logp[off : off + n]).view(-1, k)
            r = torch.where(cnt > 0, cnt * torch.exp(-logp_soft[off : off + n]).view(-1, k), 0.0)
            c = theta * (beta * r + (1.0 - beta) / (k - 1) * (r.sum(1, keepdim=True) - r))
            out[off : off + n] = c.reshape(-1)
        return out

    def _forward_backward_core(self, xf, ok, em=None, xT=None):
        """The step's forward and backward; ``em`` (``train_step``: (s, pc) on the device): the
        tables' EM from the leaf flows instead of counts into ``cat_flows``; ``xT``: the data
        from ``_checked_data``."""
        _, _, logp, W = self._cache  # type: ignore[misc]
        eng = self._engine()
        soft = self._soften < 1.0
        logp_true = logp
        if soft:
            logp = self._softened_logp(logp_true)
        # the Triton engine keeps the leaves' flows in their value rows where the plan allows it
        # (TritonEngine.backward's leaf_alias): V's leaf rows are flows after the backward
        alias = bool(getattr(eng, "leaf_end", 0))
        fwd_kw, bwd_kw = ({"flow_rows": True}, {"leaf_alias": True}) if alias else ({}, {})
        V, aux = eng.forward(W, logp, self.gauss, xf, **fwd_kw, **self._xt(xT))
        ones = ok.expand(self.plan.root_units, xf.shape[0]).contiguous()
        n = self.plan.sum_param_size
        if em is not None and self._fuse_sums():
            # train_step: the parameter flows accumulate in the logits' storage, which em_sum_rows
            # then rewrites from W and the flows alone (the logits are log W after an EM step);
            # left as they are for bad data (ok 0: root flow 0, nothing is added)
            PF = self.sum_logits.data
            PF.masked_fill_(ok > 0, 0.0)
            F, _ = eng.backward(W, V, aux, xf, ones, PF=PF, **bwd_kw)
        elif self.plan.w_size == n:  # the kernels accumulate straight into the flow buffer
            F, _ = eng.backward(W, V, aux, xf, ones, PF=self.sum_flows, **bwd_kw)
        else:
            F, PF = eng.backward(W, V, aux, xf, ones, **bwd_kw)
            t = self._tab()
            self.sum_flows += PF[:n]
            self.sum_flows.index_add_(0, t.explicit_dst, PF[n:][t.explicit_pos])
        if alias:
            F = eng.leaf_flows(V, F, True)
        kw = self._xt(xT)
        if em is not None:
            _, g5 = eng.input_stats(F, xf, self.gauss, em=(logp, self.cat_logits.data, em), **kw)
        elif soft:  # counts of the values seen -> expected counts of the true values
            cat, g5 = eng.input_stats(F, xf, self.gauss, **kw)
            self.cat_flows += self._unsoften_counts(cat, logp_true, logp)
        else:
            _, g5 = eng.input_stats(F, xf, self.gauss, cat=self.cat_flows, **kw)  # counts added in place
        self.gauss_stats += g5[:, :3]
        return self._root_values(V)

    # ---- CUDA graphs of our own --------------------------------------------------------------
    def _graphs_on(self) -> bool:
        return self.cuda_graphs and self.device.type == "cuda" and self._engine().name == "triton"

    def _maybe_graphed(self, key, fn, *inputs, uncloned: tuple[int, ...] = (), signal: bool = False):
        """Run ``fn(*inputs)``; on CUDA the second call with the same key captures a CUDA graph
        (the first one JIT-compiles the kernels eagerly) and later calls replay it: one launch
        instead of one per layer. Inputs are copied into static buffers; outputs are cloned but
        for the tuple positions in ``uncloned``: values the caller reads at once, before any
        other call (the data check's flag), returned as the graph's own buffer (one launch
        fewer per call). ``signal``: ``fn`` runs the Triton engine's data check
        (``_checked_data``), captured writing its verdict to a pinned word; the caller must
        then read the flag through ``_verdict(key, flag)``, which waits for the check only."""
        if not self._graphs_on():
            return fn(*inputs)
        ent = self._graphs.get(key)
        if ent is None or ent == "off":
            if ent is None:
                self._graphs[key] = "warm"
            return fn(*inputs)
        if ent == "warm":
            statics = [t.clone() for t in inputs]
            graph = torch.cuda.CUDAGraph()
            sig = None
            try:
                if signal and self._engine().name == "triton":
                    pin = torch.tensor([-1], dtype=torch.int64).pin_memory()
                    sig = (pin, torch.zeros(1, dtype=torch.int32, device=self.device), pin.numpy())
                    self._capture_signal = sig[:2]
                    self._checked_data(statics[0])  # compiles the signalling check (nothing else runs)
                torch.cuda.synchronize(self.device)
                with torch.cuda.graph(graph):
                    out = fn(*statics)
            except Exception:  # noqa: BLE001  (capture is an optimisation: fall back to eager)
                self._graphs[key] = "off"
                torch.cuda.synchronize(self.device)
                return fn(*inputs)
            finally:
                self._capture_signal = None
            ent = self._graphs[key] = (graph, statics, out, sig)
        graph, statics, out, sig = ent
        for st_, in_ in zip(statics, inputs, strict=True):
            st_.copy_(in_)
        if sig is not None:
            sig[2][0] = -1
        graph.replay()
        if isinstance(out, tuple):
            return tuple(
                o.clone() if isinstance(o, torch.Tensor) and i not in uncloned else o for i, o in enumerate(out)
            )
        return out.clone() if isinstance(out, torch.Tensor) else out

    def _verdict(self, key, good: torch.Tensor) -> bool:
        """``bool(good)``, the data check's flag of ``_maybe_graphed(key, ..., signal=True)``'s
        last call; where that call replayed a graph whose check signals, only the check is
        waited for (``_data_ok``), not the rest of the step."""
        ent = self._graphs.get(key)
        if type(ent) is tuple and ent[3] is not None:
            return self._await_verdict(ent[3][2], 0, good)
        return bool(good)

    def _x_grad(self, F, xf, gauss):
        """d L / d x for gaussian variables (0 for discrete ones and missing entries)."""
        xgrad = torch.zeros_like(xf)
        for b, var, index in self._tab().inputs:
            if b.family != "gaussian":
                continue
            f = F[b.row : b.row + b.count]
            x = xf[:, var].t()
            obs = ~torch.isnan(x)
            g = gauss.detach()
            mu = g[index, 0][:, None]
            isd = torch.exp(-g[index, 1])[:, None]
            z = (torch.where(obs, x, mu) - mu) * isd
            fo = torch.where(obs, f, torch.zeros_like(f))
            xgrad.index_add_(1, var, (-fo * z * isd).t())
        return xgrad

    def train_memory(self, batch: int) -> dict[str, dict[str, int]]:
        """Bytes of GPU memory a training step (``train_step``) at ``batch`` takes on the Triton
        engine, from the plan: ``{"model": the module's tensors and the normalised buffers the
        kernels read, "step": the buffers the step allocates}`` (see
        :meth:`TritonEngine.step_buffers`; not counted: the inputs' copies and library
        workspaces). The categorical counts are listed where the step needs them (it does not
        where it updates the tables itself; ``forward_backward`` always does). Computed without
        running anything, on any device (``pcir info --plan --batch``)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PcirError(f"batch {batch!r}: a training step's batch size is an integer of at least 1")
        if self._kernels is None:
            raise PcirError("no Triton kernels were generated (Triton is not importable here)")
        from .triton_engine import TritonEngine

        eng = self._engine()
        if getattr(eng, "name", "") != "triton":
            eng = TritonEngine(self.plan, torch.device("cpu"), self._kernels, self.precision)
        plan = self.plan
        tensors = [*self.named_parameters(), *self.named_buffers()]
        model = {n: t.numel() * t.element_size() for n, t in tensors if n not in ("sum_flows", "cat_flows")}
        model["kernel_weights"] = 4 * plan.w_size  # the normalised, linear weights the kernels read
        own = {t.untyped_storage().data_ptr() for _, t in tensors}
        model["index_tables"] = _held_bytes([self._tab(), eng], own)  # the plan's tables on the device
        if not (SHARE_CAT_STORE and plan.cat_size == plan.cat_norm_size):  # else in cat_logits' storage
            model["categorical_logprobs"] = 4 * plan.cat_size
        step = eng.step_buffers(batch)
        fused = self._fusable(0.0, pending=False, triton=True)
        if not (fused and self._fuse_sums()):
            model["sum_flows"] = 4 * plan.sum_param_size
        if not fused:
            model["categorical_counts"] = 4 * plan.cat_size
        elif plan.cat_size:
            step["table row flows"] = 4 * plan.cat_num_rows
        return {"model": {n: b for n, b in model.items() if b}, "step": step}

    @torch.no_grad()
    def em_step(self, step_size: float = 1.0, pseudocount: float = 0.0, entropy: float = 0.0) -> None:
        """Apply the accumulated flows (one EM / mini-batch EM step), then zero them.

        Equals :func:`pcir.ir.evaluator.em_step` on the data the flows were accumulated over;
        where a node (or leaf row) received no flow and the pseudocount is 0, it keeps its old
        parameters (the reference does the same for sums). ``entropy`` > 0: entropy
        regularisation of every sum node and categorical/bernoulli table
        (:mod:`pcir.backend.entropy`; other leaf families are updated as usual).
        """
        if not (entropy >= 0 and math.isfinite(entropy)):
            raise PcirError(f"entropy = {entropy!r}: the entropy regularisation weight must be finite and >= 0")
        self._flows()
        self._counts()
        if entropy > 0:
            self._regularise_flows(float(entropy), float(pseudocount))
        self._normalised_cached()
        self._maybe_graphed(("em",), self._em_core, self._em_args_for(step_size, pseudocount))
        self._pending = False  # (zero_flows inside a replayed graph runs no Python)
        # the normalised buffers were refreshed inside: mark them fresh for the new versions
        self._cache = (self._versions(), *self._cache[1:])  # type: ignore[index]

    def _em_args_for(self, step_size: float, pseudocount: float) -> torch.Tensor:
        """(step size, pseudocount) on the device, written only when they change: no copies to
        the device on a steady schedule."""
        args = (float(step_size), float(pseudocount))
        if self._em_args is None or self._em_args.device != self.device or self._em_args_host != args:
            self._em_args = torch.tensor(args, dtype=torch.float32, device=self.device)
            self._em_args_host = args
        return self._em_args

    @torch.no_grad()
    def train_step(self, x, step_size: float = 1.0, pseudocount: float = 0.0, missing=None, entropy: float = 0.0):
        """One step of mini-batch EM on the batch ``x``: the root log-likelihoods of
        ``forward_backward(x, missing)``, then ``em_step(step_size, pseudocount, entropy)``; the
        same parameters as those two calls, up to float rounding.

        On the Triton engine the categorical and bernoulli tables are updated inside the step,
        straight from the leaves' flows (:meth:`TritonEngine.input_stats` with ``em``), so the
        step never allocates the counts buffer ``cat_flows``, the size of the tables (HCLT-128:
        98 MiB of a 0.8 GiB step; it is allocated by the first ``forward_backward``); and the
        sums' parameter flows accumulate in the logits' storage, which the EM update rewrites
        from the weights and the flows, so ``sum_flows`` (the size of the sums' parameters) is
        not allocated either (where every sum is dense or block-sparse). This applies
        where no flows from an earlier ``forward_backward`` are waiting for their ``em_step``,
        ``entropy`` is 0, ``soften`` is 1 and the model has no binomial, discrete-logistic or
        literal leaves; otherwise the step is the two calls. Bad data raises the
        :class:`DataError` of ``forward_backward`` and changes no parameter; any other error
        inside the step leaves the same distributions (the sums' logits are rebuilt from ``W``)."""
        if not self._fusable(entropy):
            out = self.forward_backward(x, missing)
            self.em_step(step_size, pseudocount, entropy)
            return out
        args = self._em_args_for(step_size, pseudocount)
        self._normalised_cached()
        if not self._fuse_sums():  # the sums' flows go to their buffer
            self._flows()
        if missing is None:
            xf = self._to_device(x, keep_dtype=True)  # converted inside the graph
            key = ("train-checked", tuple(xf.shape), xf.dtype)
            out, good = self._guarded(key, self._checked_train_core, xf, args, uncloned=(1,), signal=True)
            if not self._verdict(key, good):  # nothing was accumulated or updated (root flow 0, step size 0)
                self._prepare(x)  # raises the DataError that names the first bad entry
                raise BackendError("internal error: the data check in the step disagrees with the eager one")
        else:
            xf, check = self._prepare(x, missing, defer=True)
            out = self._guarded(("train", tuple(xf.shape)), self._train_core, xf, check.ok, args)
            check.raise_if_bad()
        self._maybe_graphed(("em-nocat",), self._em_core_nocat, args)
        self._cache = (self._versions(), *self._cache[1:])  # type: ignore[index]
        return out

    def _guarded(self, key, fn, *inputs, uncloned: tuple[int, ...] = (), signal: bool = False):
        """``train_step``'s first graph. The sums' logits hold flows while it runs: should it fail
        (an error in a kernel, out of memory), they are rebuilt from the weights ``W``, which
        still hold the model's sums (``log W``: the same distributions), before the error
        propagates."""
        try:
            return self._maybe_graphed(key, fn, *inputs, uncloned=uncloned, signal=signal)
        except BaseException:
            if self._fuse_sums():
                _, _, _, W = self._cache  # type: ignore[misc]
                n = self.plan.sum_param_size
                edge = self._tab().sum_edge
                self.sum_logits.data.copy_(torch.where(edge, torch.log(W[:n]), -math.inf))
            raise

    def _fusable(self, entropy: float, pending: bool = True, triton: bool = False) -> bool:
        """Whether ``train_step`` can update the tables inside the step (see there); ``pending``
        False: whatever flows are waiting; ``triton``: as if the engine were the Triton one."""
        return (
            entropy == 0
            and not (pending and self._pending)
            and self._soften == 1.0
            and (triton or getattr(self._engine(), "name", "") == "triton")
            and self._fusion()[0]
        )

    def _fusion(self) -> tuple[bool, bool]:
        """(no table-family leaves, every sum a uniform run): what ``train_step`` may fuse, from
        the plan alone, computed once (walking the plan's parameters every step cost PD-32 several
        milliseconds of host time per step)."""
        if self._fusion_plan is None:
            plan = self.plan
            tables = not plan.table_slots and plan.cat_size == plan.cat_norm_size
            sums = plan.w_size == plan.sum_param_size and all(r for _, _, r in plan.runs("sum"))
            self._fusion_plan = (tables, sums)
        return self._fusion_plan

    def _checked_train_core(self, xf, args):
        """``train_step``'s forward, backward and table update with the value check in one
        function (one CUDA graph): bad data gives a zero root flow and a zero step size."""
        xf, xT, good = self._checked_data(xf)
        return self._train_core(xf, good.to(torch.float32), args, xT), good

    def _train_core(self, xf, ok, args, xT=None):
        gated = args * torch.stack((ok, torch.ones_like(ok)))  # step size 0 for bad data: no update
        return self._forward_backward_core(xf, ok, em=gated, xT=xT)

    def _fuse_sums(self) -> bool:
        """Whether ``train_step`` accumulates the sums' parameter flows in the logits' storage:
        every sum row is a uniform run that ``em_sum_rows`` updates (no explicit sums)."""
        return self._fusion()[1]

    def _em_core_nocat(self, args):
        return self._em_core(args, cat=False, pf=self.sum_logits.data if self._fuse_sums() else None)

    def _regularise_flows(self, tau: float, pc: float) -> None:
        """Rewrite the accumulated counts so that the plain M-step lands on the entropy-regularised
        parameters (:func:`pcir.backend.entropy.regularised_counts`), row chunk by row chunk."""
        t = self._tab()

        def dense(x: torch.Tensor) -> torch.Tensor:
            return x.sum(1, keepdim=True).expand_as(x)

        for off, n, row_len in t.sum_seg.runs:
            if row_len:
                for a, b in _row_ranges(off, n, row_len):
                    pf = self.sum_flows[a:b].view(-1, row_len)
                    edge = t.sum_edge[a:b].view(-1, row_len)
                    deg = edge.sum(1, keepdim=True).clamp(min=1)
                    pf.copy_(regularised_counts(pf, edge, deg, tau, pc, dense))
            elif n:
                rid, rows, deg = t.sum_seg.ragged[off]

                def ragged(x: torch.Tensor, rid=rid, rows=rows) -> torch.Tensor:
                    return torch.zeros(rows, dtype=x.dtype, device=x.device).index_add_(0, rid, x)[rid]

                seg = self.sum_flows[off : off + n]
                seg.copy_(regularised_counts(seg, t.sum_edge[off : off + n], deg, tau, pc, ragged))
        for off, n, row_len in t.cat_seg.runs:
            for a, b in _row_ranges(off, n, row_len):
                cnt = self.cat_flows[a:b].view(-1, row_len)
                every = torch.ones_like(cnt, dtype=torch.bool)
                deg = torch.full((1, 1), float(row_len), device=cnt.device)
                cnt.copy_(regularised_counts(cnt, every, deg, tau, pc, dense))

    def _em_core(self, args, cat: bool = True, pf=None):
        """One fused pass per row chunk: read flows and the current (normalised) weights, write
        the new logits and the new normalised buffers (the EM result is normalised already, so
        no second normalisation pass). ``cat`` False: the categorical and bernoulli tables were
        updated already (``train_step``); ``pf``: the sums' parameter flows are there (the logits'
        storage, ``train_step``) instead of in ``sum_flows``."""
        t = self._tab()
        plan = self.plan
        s = args[0]
        pc = args[1]
        _, _, logp, W = self._cache  # type: ignore[misc]
        fused = getattr(self._engine(), "em_rows", None)
        if fused is not None:  # the generated row kernels: one launch per tile shape, not per run
            fused(
                W,
                self.sum_flows if pf is None else pf,
                self.sum_logits.data,
                None if t.all_edges else t.sum_edge_u8,
                logp,
                self.cat_flows,
                self.cat_logits.data,
                args,
                cat=cat,
            )
        for off, n, row_len in t.sum_seg.runs:
            if row_len:
                if fused is not None:
                    continue
                for a, b in _row_ranges(off, n, row_len):
                    old = W[a:b].view(-1, row_len)
                    pf = self.sum_flows[a:b].view(-1, row_len)
                    edge = t.sum_edge[a:b].view(-1, row_len)
                    deg = edge.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
                    tot = pf.sum(1, keepdim=True)
                    upd = torch.where(edge, (pf + pc / deg) / (tot + pc), 0.0)
                    new = torch.where(tot + pc > 0, (1.0 - s) * old + s * upd, old)
                    self.sum_logits[a:b].view(-1, row_len).copy_(torch.where(edge, torch.log(new), -math.inf))
                    old.copy_(new)
            elif n:
                rid, rows, deg = t.sum_seg.ragged[off]
                old = W[off : off + n]
                pf = self.sum_flows[off : off + n]
                tot = torch.zeros(rows, dtype=pf.dtype, device=pf.device).index_add_(0, rid, pf)[rid]
                if t.all_edges:  # no mask to build (see _Tables)
                    upd = (pf + pc / deg) / (tot + pc)
                    new = torch.where(tot + pc > 0, (1.0 - s) * old + s * upd, old)
                    self.sum_logits[off : off + n] = torch.log(new)
                else:
                    edge = t.sum_edge[off : off + n]
                    upd = torch.where(edge, (pf + pc / deg) / (tot + pc), 0.0)
                    new = torch.where(tot + pc > 0, (1.0 - s) * old + s * upd, old)
                    self.sum_logits[off : off + n] = torch.where(edge, torch.log(new), -math.inf)
                old.copy_(new)
        for off, n, row_len in t.cat_seg.runs if fused is None and cat else ():  # categorical, bernoulli: uniform rows
            for a, b in _row_ranges(off, n, row_len):
                lp = logp[a:b].view(-1, row_len)
                old = torch.exp(lp)
                cnt = self.cat_flows[a:b].view(-1, row_len)
                tot = cnt.sum(1, keepdim=True)
                upd = (cnt + pc / row_len) / (tot + pc)
                new = torch.where(tot + pc > 0, torch.log((1.0 - s) * old + s * upd), lp)
                self.cat_logits[a:b].view(-1, row_len).copy_(new)
                lp.copy_(new)
        for slot in plan.table_slots:
            w = TABLE_PARAM_WIDTH[slot.kind]
            if w == 0:  # literals: nothing to learn
                continue
            u = int(slot.shape[0])
            lp = self.leaf_params[slot.poff : slot.poff + u * w]
            counts = self.cat_flows[slot.offset : slot.offset + u * slot.k].view(u, slot.k).to(torch.float64)
            new = _table_em(slot, lp.to(torch.float64).view(slot.shape), counts, s.double(), pc.double())
            lp.copy_(new.reshape(-1))
        if plan.gauss_rows:
            g = self.gauss
            mu0, sd0 = g[:, 0], torch.exp(g[:, 1])
            st = self.gauss_stats
            w = st[:, 0] + pc
            safe = torch.where(w > 0, w, torch.ones_like(w))
            mu = (st[:, 1] + pc * mu0) / safe
            var = (st[:, 2] + pc * (sd0 * sd0 + mu0 * mu0)) / safe - mu * mu
            sd = torch.sqrt(torch.maximum(var, t.gauss_min_std**2))
            mu = torch.where(w > 0, mu, mu0)
            sd = torch.where(w > 0, sd, sd0)
            new_mu = (1.0 - s) * mu0 + s * mu
            new_sd = (1.0 - s) * sd0 + s * sd
            g.copy_(torch.stack([new_mu, torch.log(new_sd)], dim=1))
        self.zero_flows()
        self._refresh_derived()
        return None

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._cache = None
        self._graphs = {}
        return out


def _triton_can_run(device: torch.device) -> bool:
    from .. import knobs

    if device.type == "cuda":
        return True
    return knobs.get().triton_interpret
