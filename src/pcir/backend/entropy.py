"""Entropy regularisation of the EM step (Liu & Van den Broeck, *Tractable Regularization of
Probabilistic Circuits*, NeurIPS 2021).

A non-deterministic PC is a deterministic PC over the data and one latent variable per sum node;
the entropy of that joint is ``sum_n ctx(n) H(theta_n)`` over sum nodes (and leaf tables), where
``ctx(n)`` is the probability of reaching ``n``. pcir weighs each node by its share of the step's
data (its flow, the plug-in estimate of ``ctx``), so the M-step of a node with expected counts
``a`` (pseudocount included) and ``p = a / sum(a)`` becomes

    theta = argmax_theta  sum_c p_c log theta_c + tau * H(theta)     over the node's edges,

which depends on ``p`` and ``tau`` only. Stationarity gives ``theta_c = exp(W(z_c) - nu)`` with
``z_c = (p_c / tau) e^nu`` (``W`` the Lambert function) and ``nu`` the one value with
``sum_c theta_c = 1``; it lies in ``[1/tau, 1/tau + log K]`` (``nu = 1/tau + H(theta)``).
``sum_c theta_c(nu)`` is convex and decreasing, so Newton's method from the left end converges
monotonically. Zero counts get ``theta_c = e^-nu > 0``: the regulariser pulls mass toward the
uniform distribution, more strongly for larger ``tau``.

The EM kernels are left as they are: :func:`regularised_counts` rewrites a row's counts so that
the plain update ``(pf + pc/deg) / (sum pf + pc)`` lands on the regularised ``theta``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Newton iterations: the Lambert function (per entry) and the normaliser nu (per row). Both start
# on the side from which Newton's method converges monotonically. W: relative error 2e-16 after
# 6 iterations for L in [-50, 3e4] (8e-5 after 3); nu: 3-5 iterations reach 1e-12 for tau in
# [0.001, 0.1] on Dirichlet(0.3) rows, 40 is a cap (tests/test_backend_entropy.py checks the
# optimality conditions).
_W_ITERS = 6
_NU_ITERS = 40


def _lambert_w_of_exp(L: torch.Tensor) -> torch.Tensor:
    """``W(exp(L))``: the ``w > 0`` with ``w + log w = L``, by Newton on ``u = log w``
    (``e^u + u = L``, convex and increasing; both starting points lie right of the root)."""
    u = torch.where(L > 1.0, torch.log(L.clamp(min=1.0)), L)
    for _ in range(_W_ITERS):
        eu = torch.exp(u)
        u = u - (eu + u - L) / (eu + 1.0)
    return torch.exp(u)


def max_entropy_rows(
    p: torch.Tensor, edge: torch.Tensor, tau: float, rowsum: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Per row, ``argmax sum p log theta + tau H(theta)`` over the entries where ``edge`` holds.

    ``p``: float64 entries, each row's edge entries summing to 1 (zero off the edges);
    ``rowsum(x)``: each entry's row total of ``x`` (same shape as ``x``). Returns ``theta``
    (float64, zero off the edges)."""
    if tau <= 0:
        return torch.where(edge, p, torch.zeros_like(p))
    K = rowsum(edge.to(p.dtype)).clamp(min=1.0)
    pos = edge & (p > 0)
    logp = torch.log(torch.where(pos, p, torch.ones_like(p)) / tau)
    nu = torch.full_like(p, 1.0 / tau)
    hi = nu + torch.log(K)
    theta = p
    for _ in range(_NU_ITERS):
        w = torch.where(pos, _lambert_w_of_exp(logp + nu), torch.zeros_like(p))
        theta = torch.where(edge, torch.exp(w - nu), torch.zeros_like(p))
        excess = rowsum(theta) - 1.0
        slope = rowsum(theta / (1.0 + w))  # -d(sum theta)/d nu
        step = excess / slope.clamp(min=1e-300)
        nu = torch.minimum(nu + step, hi)
        if float(excess.abs().max()) < 1e-12:
            break
    return theta / rowsum(theta).clamp(min=1e-300)


def regularised_counts(
    pf: torch.Tensor,
    edge: torch.Tensor,
    deg: torch.Tensor,
    tau: float,
    pc: float,
    rowsum: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Counts ``pf'`` (float32, like ``pf``) whose plain EM update with pseudocount ``pc`` is the
    entropy-regularised one: ``(pf' + pc/deg) / (sum pf' + pc) = theta``. Rows without mass are
    returned unchanged (the M-step keeps their old parameters)."""
    a = torch.where(edge, pf.to(torch.float64) + pc / deg.to(torch.float64), torch.zeros((), dtype=torch.float64))
    a = a.clamp(min=0.0)
    tot = rowsum(a)
    has = tot > 0
    p = torch.where(has, a / torch.where(has, tot, torch.ones_like(tot)), torch.zeros_like(a))
    theta = max_entropy_rows(p, edge & has, tau, rowsum)
    new = torch.where(edge & has, theta * tot - pc / deg.to(torch.float64), pf.to(torch.float64))
    return new.to(pf.dtype)
