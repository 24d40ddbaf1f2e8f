"""Chow-Liu trees: pairwise mutual information in chunks, maximum spanning tree, centre root.

Two estimators of the mutual information (MI) between every pair of variables:

* ``"exact"``: plug-in MI of the empirical joint of two discrete variables (values 0..k-1),
  ``sum_ab p(a,b) log(p(a,b) / (p(a) p(b)))`` -- the estimator of the HCLT paper for binary data.
  ``pseudocount`` alpha > 0 smooths it: alpha / k^2 is added to every cell of each pair's joint
  counts, so ``p(a,b) = (n_ab + alpha / k^2) / (n + alpha)`` and the marginals are the smoothed
  joint's (``(n_a + alpha / k) / (n + alpha)``); on small training sets this keeps pairs seen in
  few rows from looking dependent (Juice.jl's Chow-Liu learner smooths its pairwise marginals so).
* ``"soft"``: the soft-binned estimate PyJuice's ``HCLT`` uses, so that the same data gives the
  same tree (and the same node counts) as PyJuice: values are scaled to [0, 1] by the data's
  min and max, each value spreads over ``num_bins`` Gaussian bumps of width ``sigma``; marginals
  use per-sample normalised bumps, joints the raw bump products normalised per pair, and entropies
  are ``-sum p log(p + 1e-4)``; MI = H(i) + H(j) - H(i, j). (PyJuice scales each chunk by that
  chunk's own min and max; we use the whole data's, the same whenever every variable spans the
  range, as 8-bit images do.)
* ``"auto"`` (default): ``exact`` for integer data with at most ``num_bins`` values, else ``soft``.

Memory: the joint statistics are accumulated block by block (``chunk_size`` variables by
``chunk_size`` variables, ``row_chunk`` samples at a time), so 784 variables x 60,000 rows need
a few hundred MiB. With ``device="cuda"`` (default when torch and a GPU are available) the block
products run in torch on the GPU; the numpy path is the same arithmetic on the CPU (minutes for
MNIST-sized data; ``max_rows`` subsamples rows to trade accuracy for time). ``device="torch-cpu"``
runs the torch code path on the CPU (to test it without a GPU).

torch is imported only here and only when a GPU path is requested or auto-detected: a documented
exception to "torch only under pcir.backend", since a structure learner is a consumer of data.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from ..ir.diagnostics import DataError, PcirError

ESTIMATORS = ("auto", "exact", "soft")


def _as_data(data) -> np.ndarray:
    if type(data).__module__.startswith("torch"):  # a tensor, wherever it lives
        data = data.detach().cpu().numpy()
    x = np.asarray(data)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise DataError(f"data for a Chow-Liu tree must be a 2-D array [samples, variables], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"data must be numeric, got dtype {x.dtype}")
    if np.isnan(x).any():
        r, c = np.argwhere(np.isnan(x))[0]
        raise DataError(f"NaN in the data at row {r}, column {c}: a Chow-Liu tree needs complete data")
    return x


def _pick_device(device: str | None) -> str:
    if device is not None:
        if device.startswith("cuda"):
            try:
                import torch
            except ImportError:
                raise PcirError("device 'cuda' needs torch, which is not installed") from None
            if not torch.cuda.is_available():
                raise PcirError("device 'cuda' requested but no CUDA device is available")
        elif device == "torch-cpu":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise PcirError("device 'torch-cpu' needs torch, which is not installed") from None
        elif device != "cpu":
            raise PcirError(f"unknown device '{device}' (cpu, cuda, or torch-cpu)")
        return device
    # importing torch costs seconds: only ask it when a GPU driver is present (or torch is loaded)
    if "torch" not in sys.modules and not os.path.exists("/proc/driver/nvidia/version"):
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


class _Ops:
    """The few array operations of the block loop, on numpy or on torch."""

    def __init__(self, device: str):
        self.torch = device != "cpu"
        self.device = "cpu" if device == "torch-cpu" else device
        if self.torch:
            import torch

            self._t = torch

    def asarray(self, a: np.ndarray, dtype=np.float32):
        if self.torch:
            return self._t.as_tensor(np.asarray(a, dtype=dtype), device=self.device)
        return np.asarray(a, dtype=dtype)

    def exp(self, a):
        return self._t.exp(a) if self.torch else np.exp(a)

    def onehot(self, x, k: int):
        """x: int (R, C) -> float32 (R, C * k)."""
        if self.torch:
            return self._t.nn.functional.one_hot(x.long(), k).reshape(x.shape[0], -1).float()
        out = np.zeros((x.shape[0], x.shape[1], k), dtype=np.float32)
        np.put_along_axis(out, x.astype(np.int64)[:, :, None], 1.0, axis=2)
        return out.reshape(x.shape[0], -1)

    def gram(self, a, b):
        return a.T @ b

    def numpy(self, a) -> np.ndarray:
        if self.torch:
            return a.double().cpu().numpy()
        return np.asarray(a, dtype=np.float64)


def _choose_estimator(x: np.ndarray, estimator: str, num_bins: int) -> str:
    if estimator not in ESTIMATORS:
        raise PcirError(f"unknown MI estimator '{estimator}' (one of {', '.join(ESTIMATORS)})")
    integral = bool(np.all(x == np.floor(x))) and x.min() >= 0
    if estimator == "exact":
        if not integral:
            raise DataError("the exact MI estimator needs integer data >= 0; use estimator='soft'")
        return "exact"
    if estimator == "soft":
        return "soft"
    return "exact" if integral and x.max() < num_bins else "soft"


def mutual_information(
    data,
    *,
    estimator: str = "auto",
    num_bins: int = 32,
    sigma: float = 0.5 / 32,
    chunk_size: int = 64,
    row_chunk: int = 8192,
    max_rows: int | None = None,
    device: str | None = None,
    seed: int = 0,
    pseudocount: float = 0.0,
) -> np.ndarray:
    """Symmetric (V, V) float64 matrix of pairwise mutual information (see the module doc)."""
    if not (np.isfinite(pseudocount) and pseudocount >= 0):
        raise PcirError(f"the MI pseudocount must be a finite number >= 0, got {pseudocount}")
    x = _as_data(data)
    if max_rows is not None and x.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=max_rows, replace=False))
        x = x[rows]
    est = _choose_estimator(x, estimator, num_bins)
    if pseudocount > 0 and est != "exact":
        raise PcirError("the MI pseudocount applies to the exact estimator (integer data) only")
    ops = _Ops(_pick_device(device))
    n, v = x.shape
    if est == "exact":
        k = int(x.max()) + 1
        feats = lambda xs: ops.onehot(ops.asarray(xs, np.int64), k)
        nb = k
    else:
        lo, hi = float(x.min()), float(x.max())
        xs01 = (x.astype(np.float64) - lo) / (hi - lo + 1e-8)
        bins = ops.asarray(np.linspace(0.0, 1.0, num_bins).reshape(1, 1, -1))
        nb = num_bins

        def feats(xs):
            t = ops.asarray(xs)[:, :, None]
            return ops.exp(-0.5 * (t - bins) ** 2 / sigma**2).reshape(xs.shape[0], -1)

        x = xs01

    # marginals: exact -> value frequencies; soft -> mean of per-sample normalised bumps
    marg = np.zeros((v, nb))
    for r0 in range(0, n, row_chunk):
        for c0 in range(0, v, chunk_size):
            f = ops.numpy(feats(x[r0 : r0 + row_chunk, c0 : c0 + chunk_size])).reshape(-1, min(chunk_size, v - c0), nb)
            if est == "soft":
                f = f / f.sum(axis=2, keepdims=True)
            marg[c0 : c0 + f.shape[1]] += f.sum(axis=0)
    if est == "exact":
        marg = (marg + pseudocount / nb) / (n + pseudocount)
    else:
        marg /= n
    if est == "exact":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(marg > 0, marg * np.log(marg), 0.0).sum(axis=1)
    else:
        h = -(marg * np.log(marg + 1e-4)).sum(axis=1)

    mi = np.zeros((v, v))
    starts = list(range(0, v, chunk_size))
    for i, a0 in enumerate(starts):
        a1 = min(a0 + chunk_size, v)
        for b0 in starts[i:]:
            b1 = min(b0 + chunk_size, v)
            acc = None
            for r0 in range(0, n, row_chunk):
                g = ops.gram(feats(x[r0 : r0 + row_chunk, a0:a1]), feats(x[r0 : r0 + row_chunk, b0:b1]))
                acc = g if acc is None else acc + g
            joint = ops.numpy(acc).reshape(a1 - a0, nb, b1 - b0, nb)
            if est == "exact":
                joint = (joint + pseudocount / nb**2) / (n + pseudocount)
                with np.errstate(divide="ignore", invalid="ignore"):
                    hj = -np.where(joint > 0, joint * np.log(joint), 0.0).sum(axis=(1, 3))
            else:
                joint = joint / joint.sum(axis=(1, 3), keepdims=True)
                hj = -(joint * np.log(joint + 1e-4)).sum(axis=(1, 3))
            block = h[a0:a1, None] + h[None, b0:b1] - hj
            mi[a0:a1, b0:b1] = block
            mi[b0:b1, a0:a1] = block.T
    return mi


def maximum_spanning_tree(weights: np.ndarray) -> list[tuple[int, int]]:
    """Prim's algorithm on a dense symmetric weight matrix: V - 1 edges (parent, child) of a
    maximum spanning tree grown from variable 0 (ties go to the smaller index)."""
    w = np.asarray(weights, dtype=np.float64)
    v = w.shape[0]
    in_tree = np.zeros(v, dtype=bool)
    in_tree[0] = True
    best = w[0].copy()
    parent = np.zeros(v, dtype=np.int64)
    edges = []
    for _ in range(v - 1):
        cand = np.where(in_tree, -np.inf, best)
        j = int(np.argmax(cand))
        edges.append((int(parent[j]), j))
        in_tree[j] = True
        upd = (w[j] > best) & ~in_tree
        best = np.where(upd, w[j], best)
        parent = np.where(upd, j, parent)
    return edges


def tree_center(num_vars: int, edges) -> int:
    """A centre of a tree (minimum eccentricity; the smaller index of two), by leaf stripping."""
    if num_vars == 1:
        return 0
    adj: list[set[int]] = [set() for _ in range(num_vars)]
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    deg = [len(s) for s in adj]
    layer = [u for u in range(num_vars) if deg[u] <= 1]
    remaining = num_vars
    while remaining > 2:
        remaining -= len(layer)
        nxt = []
        for u in layer:
            for w in adj[u]:
                deg[w] -= 1
                if deg[w] == 1:
                    nxt.append(w)
        layer = nxt
    return min(layer)


def root_tree(num_vars: int, edges, root: int) -> list[list[int]]:
    """Children lists of the tree oriented away from ``root`` (children in increasing order)."""
    adj: list[list[int]] = [[] for _ in range(num_vars)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    children: list[list[int]] = [[] for _ in range(num_vars)]
    seen = np.zeros(num_vars, dtype=bool)
    seen[root] = True
    stack = [root]
    count = 1
    while stack:
        u = stack.pop()
        for w in sorted(adj[u]):
            if not seen[w]:
                seen[w] = True
                children[u].append(w)
                stack.append(w)
                count += 1
    if count != num_vars:
        raise PcirError(f"the tree does not connect all {num_vars} variables (reached {count})")
    return children


def chow_liu_tree(data, **mi_kwargs) -> list[tuple[int, int]]:
    """The edges of a Chow-Liu tree of ``data`` [samples, variables] (keyword arguments go to
    :func:`mutual_information`)."""
    mi = mutual_information(data, **mi_kwargs)
    return maximum_spanning_tree(mi)
