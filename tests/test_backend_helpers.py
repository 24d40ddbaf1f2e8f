"""Shared pieces of the backend tests: small hand-built circuits covering every feature, data for
them, and a plain float64 torch evaluation of the IR (the oracle for autograd gradients).

Kept tiny: the Triton kernels run under the CPU interpreter in CI.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pcir.ir import CircuitBuilder, Dist, Domain, InputGroup, ProductGroup, SumGroup, verify
from pcir.ir.circuit import Circuit


def mixed() -> Circuit:
    """Categorical, gaussian and indicator leaves; dense, explicit sums; aligned and outer products."""
    b = CircuitBuilder(seed=3)
    xs = b.variables(3, Domain.categorical(3))
    r = b.variable(Domain.real())
    ins = [b.input(x, 4, Dist.make("categorical", k=3)) for x in xs]
    g = b.input(r, 4, Dist.make("gaussian"))
    ind = b.input(xs[0], 3, Dist.make("indicator"))
    s_ind = b.sum([ind], 4)
    p1 = b.product([s_ind, ins[1]])
    p2 = b.product([ins[0], ins[1]])
    s1 = b.sum([p1, p2], 4)
    p3 = b.product([ins[2], g], pattern="outer")
    s2 = b.sum([p3], 4, edges=[[i, j] for i in range(4) for j in range(16) if (i + j) % 3 == 0])
    p4 = b.product([s1, s2])
    b.root(b.sum([p4], 1))
    return verify(b.build())


def tied_bernoulli() -> Circuit:
    """Bernoulli leaves, tied inputs and tied sums, a block-sparse sum, nested products."""
    b = CircuitBuilder(seed=5)
    xs = b.variables(4, Domain.binary())
    a0 = b.input(xs[0], 2, Dist.make("bernoulli"))
    a1 = b.input(xs[1], 2, Dist.make("bernoulli"), tie=a0)
    a2 = b.input(xs[2], 2, Dist.make("bernoulli"))
    a3 = b.input(xs[3], 2, Dist.make("bernoulli"), tie=a2)
    s01 = b.sum([b.product([a0, a1])], 2)
    s23 = b.sum([b.product([a2, a3])], 2, tie=s01)
    inner = b.product([s01, a2], pattern="outer")  # 4 units, consumed by a product: flattened
    outer = b.product([inner, a3], pattern="explicit", edges=[[0, 0], [1, 1], [2, 1], [3, 0]])
    mask = np.array([[True, False], [True, True]])
    s_block = b.sum([b.product([s01, s23], pattern="outer")], 4, mask=mask, block=(2, 2))
    alt = b.product([s_block], pattern="aligned")
    b.root(b.sum([alt, b.sum([outer], 4)], 1))
    return verify(b.build())


def product_root() -> Circuit:
    """The root is a product (stored), over a sum with two units of output."""
    b = CircuitBuilder(seed=9)
    xs = b.variables(2, Domain.categorical(4))
    a = b.input(xs[0], 3, Dist.make("categorical", k=4))
    c = b.input(xs[1], 3, Dist.make("categorical", k=4))
    s = b.sum([a], 1)
    t = b.sum([c], 1)
    b.root(b.product([s, t]))
    return verify(b.build())


def scratch_chain() -> Circuit:
    """Products computed into the shared scratch region (``fuse="scratch"``): one read by a sum and
    by another scratch product, launches whose rows are reused by a later launch."""
    b = CircuitBuilder(seed=3)
    xs = b.variables(4, Domain.categorical(3))
    a, c, d, e = (b.input(x, 3, Dist.make("categorical", k=3)) for x in xs)
    scratch = {"fuse": "scratch"}
    p = b.product([a, c], attrs=scratch)
    s1 = b.sum([p], 3)
    q = b.product([p, d], attrs=scratch)  # reads the scratch product p
    q2 = b.product([s1, d], pattern="outer", attrs=scratch)
    s2 = b.sum([q, q2], 3)
    r = b.product([s2, e], pattern="outer", attrs=scratch)  # may reuse p's rows
    b.root(b.sum([r], 1))
    return verify(b.build())


def zero_probs() -> Circuit:
    """Categorical leaves with zero-probability categories (-inf log-values)."""
    b = CircuitBuilder(seed=1)
    xs = b.variables(2, Domain.categorical(3))
    p0 = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    p1 = np.array([[1.0, 0.0, 0.0], [0.3, 0.3, 0.4]])
    a = b.input(xs[0], 2, Dist.make("categorical", k=3), params=p0)
    c = b.input(xs[1], 2, Dist.make("categorical", k=3), params=p1)
    b.root(b.sum([b.product([a, c])], 1))
    return verify(b.build())


def hmm(length: int, hidden: int = 3, vocab: int = 4, seed: int = 0) -> Circuit:
    """An HMM as a chain of sums (tied transitions and emissions)."""
    b = CircuitBuilder(seed=seed)
    xs = b.variables(length, Domain.categorical(vocab))
    emit0 = b.input(xs[length - 1], hidden, Dist.make("categorical", k=vocab))
    cur = emit0
    trans = None
    for t in range(length - 2, -1, -1):
        s = b.sum([cur], hidden, tie=trans) if trans else b.sum([cur], hidden)
        trans = trans or s
        e = b.input(xs[t], hidden, Dist.make("categorical", k=vocab), tie=emit0)
        cur = b.product([e, s])
    b.root(b.sum([cur], 1))
    return verify(b.build())


CASES = {
    "mixed": mixed,
    "tied_bernoulli": tied_bernoulli,
    "product_root": product_root,
    "zero_probs": zero_probs,
    "scratch_chain": scratch_chain,
}


def data_for(c: Circuit, n: int, seed: int = 0, p_missing: float = 0.0):
    rng = np.random.default_rng(seed)
    cols = []
    for v in c.variables:
        if v.domain.is_discrete:
            cols.append(rng.integers(0, v.domain.k, n).astype(np.float64))
        else:
            cols.append(rng.normal(size=n))
    x = np.stack(cols, axis=1)
    miss = rng.random(x.shape) < p_missing
    return x, miss


# ---- a plain float64 torch evaluation of the IR from the model's parameters -------------------
def torch_reference_ll(model, x: np.ndarray, miss: np.ndarray):
    """Log-likelihoods in float64 via torch autograd, from copies of the model's Parameters.

    Returns (ll, {parameter name: float64 leaf tensor}) so tests can compare gradients.
    """
    plan = model.plan
    c = model.circuit
    leaves = {
        "sum_logits": model.sum_logits.detach().double().cpu().clone().requires_grad_(True),
        "cat_logits": model.cat_logits.detach().double().cpu().clone().requires_grad_(True),
        "gauss": model.gauss.detach().double().cpu().clone().requires_grad_(True),
    }
    xt = torch.as_tensor(np.where(miss, 0.0, x), dtype=torch.float64)
    mt = torch.as_tensor(miss)
    vals: dict[str, torch.Tensor] = {}

    def seg(logits, slot, rows_of):
        n = int(np.prod(slot.shape))
        flat = logits[slot.offset : slot.offset + n]
        return flat, rows_of

    for g in c:
        if isinstance(g, InputGroup):
            slot = plan.params[g.params]
            col = xt[:, g.var]
            if g.dist.kind in ("categorical", "bernoulli"):
                k = slot.k
                tab = leaves["cat_logits"][slot.offset : slot.offset + g.units * k].view(g.units, k)
                tab = torch.log_softmax(tab, dim=1)
                v = tab[:, col.long()].t()
            elif g.dist.kind == "gaussian":
                gp = leaves["gauss"][slot.offset : slot.offset + g.units]
                mu, lsd = gp[:, 0], gp[:, 1]
                z = (col[:, None] - mu[None]) / torch.exp(lsd)[None]
                v = -0.5 * z * z - lsd[None] - 0.5 * math.log(2 * math.pi)
            else:
                val = torch.as_tensor(np.array(c.param_value(g.params)))
                v = torch.where(col.long()[:, None] == val[None], 0.0, -math.inf).double()
            vals[g.name] = torch.where(mt[:, g.var][:, None], torch.zeros_like(v), v)
        elif isinstance(g, ProductGroup):
            idx = torch.as_tensor(np.array(g.child_index(c.child_units(g.name))))
            acc = 0
            for j, ch in enumerate(g.children):
                acc = acc + vals[ch][:, idx[:, j]]
            vals[g.name] = acc
        else:
            assert isinstance(g, SumGroup)
            slot = plan.params[g.params]
            k = c.num_columns(g.name)
            n = int(np.prod(slot.shape))
            flat = leaves["sum_logits"][slot.offset : slot.offset + n]
            if g.pattern == "explicit":
                e = torch.as_tensor(np.array(g.edges))
                dense = torch.full((g.units, k), -math.inf, dtype=torch.float64)
                dense = dense.index_put((e[:, 0], e[:, 1]), flat)
            else:
                dense = flat.view(g.units, k)
            logw = torch.log_softmax(dense, dim=1)
            cat = torch.cat([vals[ch] for ch in g.children], dim=1)  # [N, K]
            vals[g.name] = torch.logsumexp(cat[:, None, :] + logw[None], dim=2)
    root = vals[c.roots[0]]
    return (root[:, 0] if root.shape[1] == 1 else root), leaves


def engine_pass(m, x: np.ndarray, miss: np.ndarray | None):
    """(V, M, F, PF): the engine's forward and backward of compiled model ``m`` on ``x`` with flow
    1 at the root, outside autograd and without the module's graphs."""
    xf, _ = m._prepare(x, miss, defer=True)
    m._normalised_cached()
    _, _, logp, W = m._cache
    eng = m._engine()
    with torch.no_grad():
        V, M = eng.forward(W, logp, m.gauss, xf, precompile=False)
        ones = torch.ones((m.plan.root_units, xf.shape[0]), device=xf.device)
        F, PF = eng.backward(W, V, M, xf, ones)
    return V, M, F, PF
