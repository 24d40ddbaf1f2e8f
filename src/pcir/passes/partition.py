"""partition-blocks: block sizes, node reordering into dense blocks, fan-in partitions.

For every group the pass chooses a node block size (attribute ``bs``). For explicit (and
block-sparse) sums it looks for a *permutation of the sum's nodes* that packs the edges into few
dense blocks, then rewrites the sum as a ``block`` sum when the padding (zero weights computed
inside the blocks) stays within ``tolerance``:

1. for each candidate column-block width ``bk``, every node gets a *signature*: the set of
   column blocks it reads;
2. nodes with equal signatures are grouped; groups are ordered lexicographically by signature
   (similar signatures end up next to each other); for a row-block height ``bm`` each group
   contributes its whole blocks first (no padding between their rows), and the left-over nodes
   of all groups are packed together in signature order;
3. the largest block ``bm x bk`` (squarer first) whose padding is within ``tolerance`` wins.

PyJuice merges *neighbouring* nodes only, so a sum whose block structure is hidden by the node
order stays sparse there; this pass finds it (``padding.naive`` in the statistics is the padding
the same block shape has in the original order).

Reordering a group's nodes changes the meaning of its parents' column references; the pass
processes groups children-first and rewrites every reader consistently (products re-index and,
when aligned/outer, are themselves reordered to stay aligned/outer; sums permute their columns).
Roots are never reordered: their node order is the circuit's output.

Finally all sums are *partitioned by fan-in* (attribute ``part``): a sum kernel processes every
node with the largest fan-in of its partition, so partitions are cut where that padding would
exceed ``tolerance``. ``group-layers`` launches one kernel per (layer, part).

Padded positions of a rewritten block sum hold weight 0, which EM keeps at 0 unless a
pseudocount is used (the pseudocount then spreads over the padded positions too); use
``tolerance=0`` to forbid padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.circuit import Circuit, Group, InputGroup, Param, ProductGroup, SumGroup
from ..ir.diagnostics import PassError
from .base import Pass, PassStats, register_pass
from .rewrite import make_product, param_users
from .stats import node_fanin

# A block rewrite stores the weights densely (units x K); don't when that is far bigger than the
# edges it computes (a very sparse sum stays explicit).
_DENSE_STORAGE_FACTOR = 16
_DENSE_STORAGE_FLOOR = 1 << 16


def _divisors(n: int, limit: int, pow2: bool) -> list[int]:
    out = [d for d in range(1, min(n, limit) + 1) if n % d == 0]
    if pow2:
        out = [d for d in out if d & (d - 1) == 0]
    return out


def pick_block_size(units: int, max_block: int, pow2: bool) -> int:
    """Node block size for a group of ``units`` nodes: fewest blocks, then least padding.

    ``units=100, max_block=64`` gives 50 (two blocks, no padding), or 64 with ``pow2``.
    """
    best: tuple[int, int, int] | None = None
    b = 1
    candidates = range(1, max_block + 1)
    if pow2:
        candidates = []
        while b <= max_block:
            candidates.append(b)
            b *= 2
    for b in candidates:
        if b > units and (best is not None and best[0] == 1):
            break
        nblocks = -(-units // b)
        key = (nblocks, nblocks * b - units, -b)
        if best is None or key < best:
            best = key
    assert best is not None
    return -best[2]


# ---- the per-sum planner ---------------------------------------------------------------------


@dataclass
class BlockPlan:
    order: np.ndarray  # new position -> old node
    bm: int
    bk: int
    mask: np.ndarray
    computed: int  # edges computed by the blocks
    naive_computed: int  # the same blocks in the original node order


def _signature_groups(rows: np.ndarray, cols: np.ndarray, units: int, bk: int) -> list[tuple[tuple, np.ndarray]]:
    """(signature, nodes) for every distinct set of column blocks, in lexicographic order."""
    cb = cols // bk
    pairs = np.unique(rows.astype(np.int64) * (int(cb.max()) + 1 if len(cb) else 1) + cb)
    width = int(cb.max()) + 1 if len(cb) else 1
    pr, pc = pairs // width, pairs % width
    bounds = np.searchsorted(pr, np.arange(units + 1))
    sig_of: dict[tuple, list[int]] = {}
    for r in range(units):
        sig = tuple(pc[bounds[r] : bounds[r + 1]].tolist())
        sig_of.setdefault(sig, []).append(r)
    return [(sig, np.asarray(sig_of[sig], dtype=np.int64)) for sig in sorted(sig_of)]


def _pack(groups: list[tuple[tuple, np.ndarray]], bm: int) -> np.ndarray:
    """Row order: whole blocks of equal signatures first, then the rest in signature order."""
    full, rest = [], []
    for _, nodes in groups:
        n = len(nodes) // bm * bm
        full.append(nodes[:n])
        rest.append(nodes[n:])
    return np.concatenate(full + rest)


def _mask_for(rows: np.ndarray, cols: np.ndarray, units: int, k: int, bm: int, bk: int) -> np.ndarray:
    m = np.zeros((units // bm, k // bk), dtype=bool)
    m[rows // bm, cols // bk] = True
    return m


def plan_blocks(
    rows: np.ndarray,
    cols: np.ndarray,
    units: int,
    k: int,
    *,
    max_block: int,
    tolerance: float,
    pow2: bool,
    reorder: bool,
) -> BlockPlan | None:
    """The largest block shape (with a node order) whose padding is within ``tolerance``.

    ``None`` when only 1x1 blocks fit, or when dense storage of the weights would dwarf the work.
    """
    e = len(rows)
    cands = [(bm, bk) for bm in _divisors(units, max_block, pow2) for bk in _divisors(k, max_block, pow2)]
    cands = [c for c in cands if c[0] * c[1] > 1]
    cands.sort(key=lambda c: (-c[0] * c[1], -min(c), -c[0]))
    sig_cache: dict[int, list] = {}
    identity = np.arange(units)
    for bm, bk in cands:
        if reorder:
            if bk not in sig_cache:
                sig_cache[bk] = _signature_groups(rows, cols, units, bk)
            order = _pack(sig_cache[bk], bm)
        else:
            order = identity
        pos = np.empty(units, dtype=np.int64)
        pos[order] = np.arange(units)
        mask = _mask_for(pos[rows], cols, units, k, bm, bk)
        computed = int(mask.sum()) * bm * bk
        if computed - e > tolerance * computed:
            continue
        if units * k > max(_DENSE_STORAGE_FACTOR * computed, _DENSE_STORAGE_FLOOR):
            return None
        naive = int(_mask_for(rows, cols, units, k, bm, bk).sum()) * bm * bk
        return BlockPlan(order, bm, bk, mask, computed, naive)
    return None


# ---- fan-in partitions -----------------------------------------------------------------------


def fanin_partitions(fanins: list[np.ndarray], tolerance: float) -> list[int]:
    """Partition id per sum (by its per-node fan-ins) so that padding to each partition's largest
    fan-in stays within ``tolerance``; ids increase with fan-in."""
    if not fanins:
        return []
    order = sorted(range(len(fanins)), key=lambda i: int(fanins[i].max()))
    part = [0] * len(fanins)
    cur = 0
    real = 0
    nodes = 0
    members: list[int] = []
    for i in order:
        f = fanins[i]
        mx = int(f.max())
        new_real, new_nodes = real + int(f.sum()), nodes + len(f)
        computed = mx * new_nodes
        if members and computed - new_real > tolerance * computed:
            cur += 1
            new_real, new_nodes = int(f.sum()), len(f)
            members = []
        members.append(i)
        real, nodes = new_real, new_nodes
        part[i] = cur
    return part


# ---- the pass --------------------------------------------------------------------------------


def _inverse(order: np.ndarray) -> np.ndarray:
    inv = np.empty(len(order), dtype=np.int64)
    inv[order] = np.arange(len(order))
    return inv


@register_pass
@dataclass(frozen=True)
class PartitionBlocks(Pass):
    """Choose block sizes (``bs``), reorder nodes into dense blocks, partition sums by fan-in.

    Options: ``max-block`` (largest block side), ``tolerance`` (largest fraction of computed
    edges that may be padding), ``pow2`` (block sides powers of two), ``reorder`` (search node
    permutations; off: keep the node order, as PyJuice does).
    """

    name = "partition-blocks"
    summary = "choose block sizes, reorder nodes into dense blocks, partition sums by fan-in"

    max_block: int = 64
    tolerance: float = 0.25
    pow2: bool = False
    reorder: bool = True

    def __post_init__(self):
        if self.max_block < 1:
            raise PassError(f"option 'max-block' of pass '{self.name}' must be >= 1, got {self.max_block}")
        if not 0.0 <= self.tolerance < 1.0:
            raise PassError(f"option 'tolerance' of pass '{self.name}' must be in [0, 1), got {self.tolerance}")

    def apply_with_stats(self, circuit: Circuit) -> tuple[Circuit, PassStats]:
        users = param_users(circuit)
        # groups whose node order must stay: the roots (their order is the output) and the children
        # of a tied dense/block sum (the shared weight columns cannot follow one user's order)
        fixed = set(circuit.roots)
        for g in circuit:
            if isinstance(g, SumGroup) and g.pattern != "explicit" and len(users.get(g.params, ())) > 1:
                fixed.update(g.children)
        roots = fixed
        o2n: dict[str, np.ndarray] = {}  # old node -> new node, for reordered groups
        new_groups: dict[str, Group] = {}
        params = dict(circuit.params)
        units = {g.name: g.units for g in circuit}
        blocked = 0
        computed = naive = real = 0

        for g in circuit:
            if isinstance(g, InputGroup):
                new_groups[g.name] = g
                continue
            if isinstance(g, ProductGroup):
                new_groups[g.name] = self._product(g, units, o2n, roots)
                continue
            assert isinstance(g, SumGroup)
            k = sum(units[c] for c in g.children)
            offs = np.concatenate([[0], np.cumsum([units[c] for c in g.children])])
            col_map = None
            if any(c in o2n for c in g.children):
                col_map = np.concatenate(
                    [offs[j] + (o2n[c] if c in o2n else np.arange(units[c])) for j, c in enumerate(g.children)]
                )
            tied = len(users.get(g.params, ())) > 1
            if g.pattern == "dense" or (g.pattern == "block" and (col_map is None or tied)):
                if col_map is not None:  # dense: permute the weight columns
                    w = np.asarray(circuit.param_value(g.params))
                    wn = np.empty_like(w)
                    wn[:, col_map] = w
                    params[g.params] = Param(w.shape, params[g.params].dtype, wn)
                    assert g.pattern == "dense" and not tied, "reordered children of a tied sum"
                new_groups[g.name] = g
                continue
            # explicit, or block with reordered children: work on the edge list
            if g.pattern == "explicit":
                assert g.edges is not None
                rows, cols = g.edges[:, 0].copy(), g.edges[:, 1].copy()
                weights = None  # edge order kept: the (possibly lazy) parameter stays valid
            else:
                m = g.edge_mask(k)
                rows, cols = np.nonzero(m)
                weights = np.asarray(circuit.param_value(g.params))[rows, cols]
            if col_map is not None:
                cols = col_map[cols]
            free = g.name not in roots and self.reorder
            plan = None
            if not tied:
                plan = plan_blocks(
                    rows,
                    cols,
                    g.units,
                    k,
                    max_block=self.max_block,
                    tolerance=self.tolerance,
                    pow2=self.pow2,
                    reorder=free,
                )
            if plan is not None:
                pos = _inverse(plan.order)
                if weights is None:
                    weights = np.asarray(circuit.param_value(g.params))
                w = np.zeros((g.units, k))
                w[pos[rows], cols] = weights
                params[g.params] = Param((g.units, k), params[g.params].dtype, w)
                if not np.array_equal(plan.order, np.arange(g.units)):
                    o2n[g.name] = pos
                new_groups[g.name] = SumGroup(
                    g.name,
                    g.units,
                    g.children,
                    "block",
                    g.params,
                    mask=plan.mask,
                    block=(plan.bm, plan.bk),
                    attrs=g.with_attrs(real_edges=len(rows)).attrs,
                    span=g.span,
                )
                blocked += 1
                computed += plan.computed
                naive += plan.naive_computed
                real += len(rows)
                continue
            if g.pattern == "block":  # reordered children broke the blocks: explicit now
                edges = np.stack([rows, cols], axis=1)
                params[g.params] = Param((len(rows),), params[g.params].dtype, weights)
                new_groups[g.name] = SumGroup(
                    g.name, g.units, g.children, "explicit", g.params, edges=edges, attrs=g.attrs, span=g.span
                )
            elif col_map is not None:
                edges = np.stack([rows, cols], axis=1)
                new_groups[g.name] = SumGroup(
                    g.name, g.units, g.children, "explicit", g.params, edges=edges, attrs=g.attrs, span=g.span
                )
            else:
                new_groups[g.name] = g

        out = circuit.replace(groups=list(new_groups.values()), params=params)
        out, part_stats = self._annotate(out)
        stats: PassStats = {"sums_blocked": blocked}
        if blocked:
            stats["padding.naive"] = round((naive - real) / naive, 4) if naive else 0.0
            stats["padding.reordered"] = round((computed - real) / computed, 4) if computed else 0.0
        stats.update(part_stats)
        return out, stats

    def _product(self, g: ProductGroup, units: dict[str, int], o2n: dict[str, np.ndarray], roots: set[str]):
        if not any(c in o2n for c in g.children):
            return g
        cu = [units[c] for c in g.children]
        idx = g.child_index(cu)
        idx = np.stack([o2n[c][idx[:, j]] if c in o2n else idx[:, j] for j, c in enumerate(g.children)], axis=1)
        if g.pattern != "explicit" and g.name not in roots:
            # reorder the product's own nodes so that it stays aligned/outer
            order = np.lexsort(idx.T[::-1])
            idx = idx[order]
            if not np.array_equal(order, np.arange(len(order))):
                o2n[g.name] = _inverse(order)
        return make_product(g.name, g.children, cu, idx, g.attrs, g.span)

    def _annotate(self, circuit: Circuit) -> tuple[Circuit, PassStats]:
        sums = [g for g in circuit if isinstance(g, SumGroup)]
        fanins = [node_fanin(circuit, g) for g in sums]
        parts = dict(zip([g.name for g in sums], fanin_partitions(fanins, self.tolerance), strict=True))
        groups = []
        for g in circuit:
            if isinstance(g, SumGroup) and g.pattern == "block":
                assert g.block is not None
                bs = g.block[0]
            else:
                bs = pick_block_size(g.units, self.max_block, self.pow2)
            attrs = {"bs": bs}
            if g.name in parts:
                attrs["part"] = parts[g.name]
            groups.append(g.with_attrs(**attrs))
        pad = comp = 0
        by_part: dict[int, list[np.ndarray]] = {}
        for g, f in zip(sums, fanins, strict=True):
            by_part.setdefault(parts[g.name], []).append(f)
        for fs in by_part.values():
            mx = max(int(f.max()) for f in fs)
            comp += mx * sum(len(f) for f in fs)
            pad += sum(int((mx - f).sum()) for f in fs)
        stats: PassStats = {"fanin_partitions": len(by_part), "padding.fanin": round(pad / comp, 4) if comp else 0.0}
        return circuit.replace(groups=groups), stats
