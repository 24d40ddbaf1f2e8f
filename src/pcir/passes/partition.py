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

When a column block belongs to a product that only this sum reads, its node order is free as
well: :func:`cocluster_columns` alternately sorts nodes by the columns they read and columns by
the nodes that read them, and the better of the two packings is kept.

PyJuice merges *neighbouring* nodes only, so a sum whose block structure is hidden by the node
order stays sparse there; this pass finds it (``padding.naive`` in the statistics is the padding
the same block shape has in the original order).

Reordering a group's nodes changes the meaning of its parents' column references; the pass
processes groups children-first and rewrites every reader consistently (products re-index and,
when aligned/outer, are themselves reordered to stay aligned/outer; sums permute their columns).
Roots are never reordered: their node order is the circuit's output.

Finally all sums are *partitioned by fan-in* (attribute ``part``): a sum kernel processes every
node with the largest fan-in of its partition, so partitions are cut where the padding added by
sharing a kernel would exceed ``tolerance`` (see :func:`fanin_partitions`). ``group-layers``
launches one kernel per (layer, part).

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
from .rewrite import make_product, param_users, parent_map
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


@dataclass
class _SigGroups:
    """Nodes sorted by signature (lexicographically), with the extent of each equal-signature run."""

    nodes: np.ndarray  # all nodes, in signature order
    group: np.ndarray  # run id of each entry of ``nodes``
    start: np.ndarray  # first position of each run


def _signature_groups(rows: np.ndarray, cols: np.ndarray, units: int, bk: int) -> _SigGroups:
    """Group nodes by their signature, the set of column blocks they read (sorted lexicographically)."""
    cb = cols.astype(np.int64) // bk
    width = int(cb.max()) + 1 if len(cb) else 1
    pairs = np.unique(rows.astype(np.int64) * width + cb)
    pr, pc = pairs // width, pairs % width
    counts = np.bincount(pr, minlength=units)
    longest = int(counts.max()) if units else 0
    if units * longest <= 1 << 24:
        # pad every signature to the longest with -1 (a prefix sorts first), then lexsort columns
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        table = np.full((units, max(longest, 1)), -1, dtype=np.int64)
        table[pr, np.arange(len(pr)) - first[pr]] = pc
        order = np.lexsort(table.T[::-1])
        srt = table[order]
        new_run = np.ones(units, dtype=bool)
        new_run[1:] = np.any(srt[1:] != srt[:-1], axis=1)
    else:  # very long signatures: sort tuples in Python rather than build a huge table
        bounds = np.searchsorted(pr, np.arange(units + 1))
        sigs = [tuple(pc[bounds[r] : bounds[r + 1]].tolist()) for r in range(units)]
        order = np.asarray(sorted(range(units), key=sigs.__getitem__), dtype=np.int64)
        new_run = np.ones(units, dtype=bool)
        new_run[1:] = [sigs[order[i]] != sigs[order[i - 1]] for i in range(1, units)]
    group = np.cumsum(new_run) - 1
    return _SigGroups(order, group, np.nonzero(new_run)[0])


def _pack(groups: _SigGroups, bm: int) -> np.ndarray:
    """Row order: whole blocks of equal signatures first, then the rest in signature order."""
    pos = np.arange(len(groups.nodes)) - groups.start[groups.group]
    size = np.diff(np.append(groups.start, len(groups.nodes)))[groups.group]
    full = pos < size // bm * bm
    return np.concatenate([groups.nodes[full], groups.nodes[~full]])


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
    sig_cache: dict[int, _SigGroups] = {}
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


def _keys(owner: np.ndarray, value: np.ndarray, n: int) -> list[tuple[int, ...]]:
    """For each of ``n`` owners, the sorted tuple of its values."""
    order = np.lexsort((value, owner))
    bounds = np.searchsorted(owner[order], np.arange(n + 1))
    v = value[order].tolist()
    return [tuple(v[bounds[i] : bounds[i + 1]]) for i in range(n)]


def cocluster_columns(
    rows: np.ndarray, cols: np.ndarray, units: int, k: int, segments: list[tuple[int, int]], iterations: int = 3
) -> np.ndarray:
    """New position of every column: columns inside ``segments`` ((offset, length) ranges whose
    order is free) are reordered so that columns read by similar nodes sit together.

    Alternates two sorts: nodes by the positions of the columns they read, then each free
    segment's columns by the positions of the nodes that read them (a lexicographic bi-clustering).
    """
    colpos = np.arange(k)
    for _ in range(iterations):
        rkeys = _keys(rows, colpos[cols], units)
        rowpos = _inverse(np.asarray(sorted(range(units), key=rkeys.__getitem__), dtype=np.int64))
        ckeys = _keys(cols, rowpos[rows], k)
        for off, n in segments:
            order = sorted(range(off, off + n), key=ckeys.__getitem__)
            colpos[np.asarray(order, dtype=np.int64)] = np.arange(off, off + n)
    return colpos


def _better(a: BlockPlan | None, b: BlockPlan | None) -> bool:
    """Whether plan ``a`` beats plan ``b`` (bigger blocks, then less padding)."""
    if a is None:
        return False
    if b is None:
        return True
    return (a.bm * a.bk, -a.computed) > (b.bm * b.bk, -b.computed)


# ---- fan-in partitions -----------------------------------------------------------------------


def fanin_partitions(fanins: list[np.ndarray], tolerance: float) -> list[int]:
    """Partition id per sum (from its per-node fan-ins); ids increase with fan-in.

    A kernel pads every node to the largest fan-in of its partition. The padding a group brings
    by itself (its own nodes' fan-ins differ; groups are not split) is unavoidable; what
    partitioning decides is the padding *added* by sharing a kernel with groups of larger
    fan-in, ``sum_g (max_P - max_g) * nodes_g``, which is kept within ``tolerance`` of the
    partition's computed edges. Greedy over groups sorted by largest fan-in (fewest partitions).
    """
    if not fanins:
        return []
    mx = [int(f.max()) for f in fanins]
    order = sorted(range(len(fanins)), key=lambda i: mx[i])
    part = [0] * len(fanins)
    cur = -1
    own = nodes = 0  # sum of max_g * nodes_g, sum of nodes_g in the current partition
    for i in order:
        n = len(fanins[i])
        new_own, new_nodes = own + mx[i] * n, nodes + n
        computed = mx[i] * new_nodes
        if cur < 0 or computed - new_own > tolerance * computed:
            cur += 1
            new_own, new_nodes = mx[i] * n, n
        own, nodes = new_own, new_nodes
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
        parents = parent_map(circuit)
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
                opts = dict(max_block=self.max_block, tolerance=self.tolerance, pow2=self.pow2, reorder=free)
                plan = plan_blocks(rows, cols, g.units, k, **opts)
                # children only this sum reads (products, not roots) may be reordered for it too
                segments = [
                    (int(offs[j]), units[c])
                    for j, c in enumerate(g.children)
                    if self.reorder
                    and isinstance(new_groups[c], ProductGroup)
                    and parents[c] == [g.name]
                    and c not in roots
                    and g.children.count(c) == 1
                    and units[c] > 1
                ]
                if segments:
                    colpos = cocluster_columns(rows, cols, g.units, k, segments)
                    plan2 = plan_blocks(rows, colpos[cols], g.units, k, **opts)
                    if _better(plan2, plan):
                        plan = plan2
                        cols = colpos[cols]
                        for off, n in segments:
                            c = g.children[int(np.searchsorted(offs, off, side="right")) - 1]
                            new_pos = colpos[off : off + n] - off
                            self._reorder_product(c, new_pos, new_groups, units, o2n)
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

    @staticmethod
    def _reorder_product(name: str, new_pos: np.ndarray, new_groups: dict, units: dict, o2n: dict) -> None:
        """Move node i of product ``name`` (as emitted so far) to position ``new_pos[i]``."""
        p = new_groups[name]
        cu = [units[c] for c in p.children]
        idx = p.child_index(cu)[_inverse(new_pos)]
        new_groups[name] = make_product(p.name, p.children, cu, idx, p.attrs, p.span)
        o2n[name] = new_pos[o2n[name]] if name in o2n else new_pos

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
