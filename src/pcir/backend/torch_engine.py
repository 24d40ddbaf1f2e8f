"""The plain-torch executor of a kernel plan: the same buffers and the same arithmetic as the
Triton kernels, written with torch ops (gather + matmul in log space with max-subtraction).

It runs anywhere torch runs; the runtime uses it where Triton cannot run (CPU without
``TRITON_INTERPRET``) and the tests use it as a second implementation of the plan.

An engine exposes two calls, shared with :mod:`pcir.backend.triton_engine`:

* ``forward(W, cat_logp, gauss, xf) -> V``: node log-values ``[num_rows, B]`` (stored nodes only);
* ``backward(W, V, xf, root_flow) -> (F, PF)``: node flows ``[num_rows, B]`` and sum-parameter
  flows ``[w_size]`` in the kernel weight layout.

``W`` is the kernel weight buffer (linear space), ``cat_logp`` the flat categorical log-prob table,
``gauss`` the ``(rows, 2)`` table of (mean, log std), ``xf`` float32 ``[B, num_vars]`` with NaN for
missing entries.
"""

from __future__ import annotations

import math

import torch

from .plan import KernelPlan, ProductGroupPlan, SumGroupPlan

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class TorchEngine:
    name = "torch"

    def __init__(self, plan: KernelPlan, device: torch.device):
        self.plan = plan
        self.device = device
        t = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)
        self.inputs = [(b, t(b.var), t(b.index)) for b in plan.inputs if b.count]
        self.layers = []
        for layer in plan.layers:
            gs = []
            for g in layer.groups:
                if isinstance(g, SumGroupPlan):
                    gs.append((g, t(g.cols)))
                else:
                    gs.append((g, t(g.idx)))
            self.layers.append((layer, gs))

    # ---- forward ---------------------------------------------------------------------------
    def input_values(self, cat_logp, gauss, xf, out):
        for b, var, index in self.inputs:
            x = xf[:, var].t()  # [U, B]
            miss = torch.isnan(x)
            xs = torch.where(miss, torch.zeros_like(x), x)
            rows = slice(b.row, b.row + b.count)
            if b.family == "categorical":
                v = cat_logp[index[:, None] + xs.long()]
            elif b.family == "gaussian":
                mu = gauss[index, 0][:, None]
                lsd = gauss[index, 1][:, None]
                z = (xs - mu) * torch.exp(-lsd)
                v = -0.5 * z * z - lsd - LOG_SQRT_2PI
            else:
                v = torch.where(xs.long() == index[:, None], 0.0, -math.inf).to(out.dtype)
            out[rows] = torch.where(miss, torch.zeros_like(v), v)

    def forward(self, W, cat_logp, gauss, xf):
        B = xf.shape[0]
        V = torch.empty((self.plan.num_rows, B), dtype=torch.float32, device=xf.device)
        V[0] = 0.0
        self.input_values(cat_logp, gauss, xf, V)
        for _layer, gs in self.layers:
            for g, idx in gs:
                if isinstance(g, SumGroupPlan):
                    C = _gather_sum(V, idx)
                    m = _col_max(C)
                    E = torch.exp(C - m)
                    w = W[g.w_off : g.w_off + g.units * g.k].view(g.units, g.k)
                    V[g.row : g.row + g.units] = torch.log(w @ E) + m
                else:
                    V[g.row : g.row + g.units] = _gather_sum(V, idx)
        return V, None

    # ---- backward (PC flows) ----------------------------------------------------------------
    def backward(self, W, V, aux, xf, root_flow, PF=None):
        plan = self.plan
        F = torch.zeros_like(V)
        F[plan.root_row : plan.root_row + plan.root_units] = root_flow
        if PF is None:  # else accumulate into the given buffer (the model's flows)
            PF = torch.zeros(plan.w_size, dtype=torch.float32, device=V.device)
        for t in range(len(self.layers) - 1, -1, -1):
            _layer, gs = self.layers[t]
            for j in plan.recompute.get(t, ()):  # scratch products read from here down: recompute
                for g, idx in self.layers[j][1]:
                    V[g.row : g.row + g.units] = _gather_sum(V, idx)
                    F[g.row : g.row + g.units] = 0.0
            for g, idx in reversed(gs):
                f = F[g.row : g.row + g.units]
                if isinstance(g, ProductGroupPlan):
                    _scatter_flows(F, idx, f)
                    continue
                C = _gather_sum(V, idx)
                m = _col_max(C)
                E = torch.exp(C - m)
                v = V[g.row : g.row + g.units]
                G = _scaled_flow(f, v, m)
                w = W[g.w_off : g.w_off + g.units * g.k].view(g.units, g.k)
                PF[g.w_off : g.w_off + g.units * g.k] += (w * (G @ E.t())).reshape(-1)
                _scatter_flows(F, idx, E * (w.t() @ G))
        F[0] = 0.0
        return F, PF

    def input_stats(self, F, xf, gauss, cat=None):
        """(categorical counts [cat_size], gaussian per-row sums [gauss_rows, 5]) from leaf flows:
        counts are the gradient wrt the log-prob table; the gaussian sums are (f, f x, f x^2,
        f z/sd, f (z^2 - 1)) over observed samples (EM statistics and gradients wrt mean, log std).
        ``cat``: accumulate the counts into this buffer (the model's flows) instead of a new one."""
        plan = self.plan
        if cat is None:
            cat = torch.zeros(plan.cat_size, dtype=torch.float32, device=F.device)
        g5 = torch.zeros((plan.gauss_rows, 5), dtype=torch.float32, device=F.device)
        for b, var, index in self.inputs:
            if b.family == "indicator":
                continue
            f = F[b.row : b.row + b.count]  # [U, B]
            x = xf[:, var].t()
            obs = ~torch.isnan(x)
            if b.family == "categorical":
                idx = index[:, None] + torch.where(obs, x, torch.zeros_like(x)).long()
                cat.index_add_(0, idx[obs], f[obs])
                continue
            g = gauss.detach()
            mu = g[index, 0][:, None]
            isd = torch.exp(-g[index, 1])[:, None]
            xs = torch.where(obs, x, torch.zeros_like(x))
            z = (xs - mu) * isd
            fo = torch.where(obs, f, torch.zeros_like(f))
            st = [
                fo.sum(1),
                (fo * xs).sum(1),
                (fo * xs * xs).sum(1),
                (fo * z * isd).sum(1),
                (fo * (z * z - 1.0)).sum(1),
            ]
            g5.index_add_(0, index, torch.stack(st, dim=1))
        return cat, g5


def _gather_sum(V, idx):
    """Sum of the log-values of ``idx[:, a]`` over the arity: [K, B] (fused products)."""
    out = V[idx[:, 0]]
    for a in range(1, idx.shape[1]):
        out = out + V[idx[:, a]]
    return out


def _col_max(C):
    """Per-sample max over the columns; 0 where every column is -inf (the result is then -inf)."""
    m = C.amax(dim=0, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _scaled_flow(f, v, m):
    """``f * exp(m - v)``, 0 where there is no flow or the node has probability 0."""
    ok = (f != 0) & torch.isfinite(v)
    g = torch.where(ok, f * torch.exp(torch.where(ok, m - v, torch.zeros_like(v))), torch.zeros_like(f))
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def _scatter_flows(F, idx, colflow):
    """F[idx[k, a]] += colflow[k] for every a (pads go to the sink row 0)."""
    K, A = idx.shape
    src = colflow.unsqueeze(1).expand(K, A, colflow.shape[1]).reshape(K * A, -1)
    F.index_add_(0, idx.reshape(-1), src)
