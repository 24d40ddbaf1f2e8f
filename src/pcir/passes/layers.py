"""group-layers: schedule groups into few layers, decide product fusion, assign buffer slots.

Execution model (what the annotations mean for a backend):

* Layer 0 holds the input groups. Every later layer ``L`` runs, in order, its *scratch products*
  (``fuse="scratch"``: computed once into the buffer) and then its *sums*. One kernel is launched
  per (layer, kernel key): sums of the same fan-in partition (``part``) share a kernel however far
  apart they are in the circuit; scratch products share one kernel per layer (run in
  topological order when a product reads a product).
* A sum in layer ``L`` may read inputs, sums and scratch products of any earlier layer, and scratch
  products of its own layer. There are no pass-through sums: a sum reads products computed in any
  earlier layer, and a product may feed sums in different layers.
* A *fused* product (``fuse="fused"``) has no storage: every sum that reads it recomputes it
  from the product's children while loading its tiles (forward and backward). Its ``layer`` is
  that of its first consumer.

Scheduling: sums go as early as their inputs allow (ASAP: the fewest layers possible, the length
of the longest sum-to-sum chain), then, with ``merge-kernels``, a sum with slack moves to a
layer within its [ASAP, ALAP] window that already launches a kernel of its key.

Fusion (``fuse`` option): ``auto`` fuses a product whose consumers are all sums of one layer
and stores the others (read by products, roots, or sums of different layers) as scratch;
``all`` fuses every product read only by sums; ``none`` stores every product. Products with
more than ``max-fused-arity`` children are always stored (the backend's limit, 16).

Buffer slots: every stored group (inputs, sums, scratch products) gets ``slot`` = its offset, in
nodes, into one value buffer of ``buffer_nodes`` nodes per sample (circuit attribute). A group is
live from the step that writes it to the last step that reads it (roots: to the end); slots are
reused first-fit once their group is dead, so the buffer is about the peak of what is live (the
``live_peak`` statistic is the lower bound), not the sum of all layers. The slots describe one
forward evaluation; a backward pass that needs every forward value lays out its own buffer.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import Literal

from ..ir.circuit import Circuit, InputGroup, ProductGroup, SumGroup
from ..ir.diagnostics import PassError
from .base import Pass, PassStats, register_pass
from .rewrite import parent_map
from .stats import kernel_key, naive_layering


def schedule(
    circuit: Circuit, fuse_mode: str = "auto", merge_kernels: bool = True, max_fused_arity: int = 16
) -> tuple[dict, dict]:
    """(layer, fuse) per group; see the module docstring."""
    parents = parent_map(circuit)
    order = circuit.topo_order()
    groups = circuit.groups
    roots = set(circuit.roots)

    # ASAP layers of sums; "avail": the latest layer whose values a group's value depends on
    avail: dict[str, int] = {}
    asap: dict[str, int] = {}
    for n in order:
        g = groups[n]
        if isinstance(g, InputGroup):
            asap[n] = avail[n] = 0
        elif isinstance(g, ProductGroup):
            avail[n] = max(avail[c] for c in g.children)
        else:
            asap[n] = avail[n] = 1 + max(avail[c] for c in g.children)
    sums = [n for n in order if isinstance(groups[n], SumGroup)]
    last = max([asap[n] for n in sums], default=0)
    has_root_product = any(isinstance(groups[r], ProductGroup) for r in roots)
    if has_root_product:
        last = max(last, max(avail[r] + 1 for r in roots if isinstance(groups[r], ProductGroup)))

    # ALAP bound of every sum: before each sum that reads it (through products)
    alap: dict[str, int] = {}
    need: dict[str, int] = {}  # latest layer by which a group's value must exist (+1 = first reader)
    for n in reversed(order):
        g = groups[n]
        bound = last + 1 if n in roots else 10**9
        for p in parents[n]:
            pg = groups[p]
            if isinstance(pg, SumGroup):
                bound = min(bound, alap[p])
            else:
                bound = min(bound, need[p])
        if isinstance(g, SumGroup):
            alap[n] = min(bound - 1, last) if bound < 10**9 else last
            need[n] = alap[n]
        else:
            need[n] = bound

    layer: dict[str, int] = {n: 0 for n in order if isinstance(groups[n], InputGroup)}
    fuse: dict[str, str] = {}
    placed: dict[tuple, set[int]] = {}
    if merge_kernels:
        # sums without slack cannot move: their kernels exist whatever happens, so the sums that
        # can move may join them even when they come first in topological order
        for n in sums:
            if asap[n] == alap[n]:
                placed.setdefault(kernel_key(groups[n]), set()).add(asap[n])  # type: ignore[arg-type]

    avail_now: dict[str, int] = {}  # like avail, with the layers chosen so far
    for n in order:
        g = groups[n]
        if isinstance(g, InputGroup):
            avail_now[n] = 0
        elif isinstance(g, ProductGroup):
            avail_now[n] = max(avail_now[c] for c in g.children)
        else:
            lb = 1 + max(avail_now[c] for c in g.children)
            choice = lb
            if merge_kernels:
                key = kernel_key(g)
                hits = [x for x in sorted(placed.get(key, ())) if lb <= x <= max(lb, alap[n])]  # type: ignore[arg-type]
                if hits:
                    choice = hits[0]
            layer[n] = choice
            avail_now[n] = choice
            placed.setdefault(kernel_key(g), set()).add(choice)  # type: ignore[arg-type]

    # products: layer of the first consumer; fusion
    for n in reversed(order):
        g = groups[n]
        if not isinstance(g, ProductGroup):
            continue
        cons = parents[n]
        cons_layers = [layer[p] for p in cons]
        only_sums = bool(cons) and all(isinstance(groups[p], SumGroup) for p in cons) and n not in roots
        if max_fused_arity and len(g.children) > max_fused_arity:
            only_sums = False  # recomputing a very wide product in every tile does not pay
        if not cons:
            layer[n] = avail_now[n] + 1
        else:
            layer[n] = min(cons_layers)
        if fuse_mode == "none" or not only_sums:
            fuse[n] = "scratch"
        elif fuse_mode == "all" or len(set(cons_layers)) == 1:
            fuse[n] = "fused"
        else:
            fuse[n] = "scratch"
    return layer, fuse


class _FreeList:
    """First-fit allocator of node offsets: free intervals kept sorted and coalesced."""

    def __init__(self):
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted, disjoint, not touching
        self.top = 0  # end of the region ever used

    def alloc(self, size: int) -> int:
        for i, (off, sz) in enumerate(self.free):
            if sz >= size:
                if sz == size:
                    del self.free[i]
                else:
                    self.free[i] = (off + size, sz - size)
                return off
        if self.free and self.free[-1][0] + self.free[-1][1] == self.top:
            off = self.free.pop()[0]  # grow the last free interval at the top
        else:
            off = self.top
        self.top = off + size
        return off

    def release(self, off: int, size: int) -> None:
        i = bisect.bisect_left(self.free, (off, size))
        self.free.insert(i, (off, size))
        if i + 1 < len(self.free) and off + size == self.free[i + 1][0]:
            self.free[i] = (off, size + self.free[i + 1][1])
            del self.free[i + 1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == self.free[i][0]:
            self.free[i - 1] = (self.free[i - 1][0], self.free[i - 1][1] + self.free[i][1])
            del self.free[i]


def assign_slots(circuit: Circuit, layer: dict[str, int], fuse: dict[str, str]) -> tuple[dict[str, int], int, int]:
    """First-fit offsets by liveness. Returns (slot per stored group, buffer nodes, live peak)."""
    groups = circuit.groups
    parents = parent_map(circuit)
    roots = set(circuit.roots)

    def step(n: str) -> int:  # 0: inputs; layer L: 2L products, 2L+1 sums
        g = groups[n]
        if isinstance(g, InputGroup):
            return 0
        return 2 * layer[n] + (1 if isinstance(g, SumGroup) else 0)

    def is_fused(n: str) -> bool:
        return isinstance(groups[n], ProductGroup) and fuse.get(n) == "fused"

    def last_read(n: str) -> int:
        out = -1
        for p in parents[n]:
            # a fused product is recomputed by its consumers, which therefore read n
            out = max(out, last_read(p) if is_fused(p) else step(p))
        return out

    stored = [n for n in circuit.topo_order() if not is_fused(n)]
    end_of_time = 2 * (max(layer.values(), default=0) + 1)
    life: dict[str, tuple[int, int]] = {}
    for n in stored:
        end = last_read(n)
        life[n] = (step(n), end_of_time if n in roots or end < 0 else end)
    slot: dict[str, int] = {}
    alloc = _FreeList()
    expiring: list[tuple[int, str]] = []  # heap of (last step, name)
    for n in sorted(stored, key=lambda x: (life[x][0], -groups[x].units, x)):
        start = life[n][0]
        while expiring and expiring[0][0] < start:
            _, dead = heapq.heappop(expiring)
            alloc.release(slot[dead], groups[dead].units)
        slot[n] = alloc.alloc(groups[n].units)
        heapq.heappush(expiring, (life[n][1], n))
    # lower bound: the most nodes live at one step
    events: dict[int, int] = {}
    for n in stored:
        s, e = life[n]
        events[s] = events.get(s, 0) + groups[n].units
        events[e + 1] = events.get(e + 1, 0) - groups[n].units
    live = best = 0
    for t in sorted(events):
        live += events[t]
        best = max(best, live)
    return slot, alloc.top, best


@register_pass
@dataclass(frozen=True)
class GroupLayers(Pass):
    """Layers (``layer``), product fusion (``fuse``) and buffer slots (``slot``).

    Options: ``fuse`` (auto | all | none), ``merge-kernels`` (move sums with slack into layers
    that already launch their kernel), ``slots`` (assign buffer slots), ``max-fused-arity``
    (products with more children are stored, never fused; 0: no limit).
    """

    name = "group-layers"
    summary = "schedule groups into few layers, fuse products into sums, assign buffer slots by liveness"

    fuse: Literal["auto", "all", "none"] = "auto"
    merge_kernels: bool = True
    slots: bool = True
    max_fused_arity: int = 16

    def __post_init__(self):
        if self.max_fused_arity < 0:
            raise PassError(
                f"option 'max-fused-arity' of pass '{self.name}' must be >= 0 (0: no limit), got {self.max_fused_arity}"
            )

    def apply_with_stats(self, circuit: Circuit) -> tuple[Circuit, PassStats]:
        layer, fuse = schedule(circuit, self.fuse, self.merge_kernels, self.max_fused_arity)
        slot: dict[str, int] = {}
        peak = live_peak = 0
        if self.slots:
            slot, peak, live_peak = assign_slots(circuit, layer, fuse)
        groups = []
        kernels: set[tuple] = set()
        for g in circuit:
            attrs = {"layer": layer[g.name], "slot": slot.get(g.name), "fuse": fuse.get(g.name)}
            g2 = g.with_attrs(**attrs)
            groups.append(g2)
            key = kernel_key(g2)
            if key is not None:
                kernels.add((layer[g.name], key))
        attrs = dict(circuit.attrs)
        attrs.pop("buffer_nodes", None)
        if self.slots:
            attrs["buffer_nodes"] = peak
        out = circuit.replace(groups=groups, attrs=tuple(sorted(attrs.items())))
        naive = naive_layering(circuit)
        stats: PassStats = {
            "layers": max(layer.values(), default=0) + 1,
            "kernels": len(kernels),
            "fused_products": sum(1 for v in fuse.values() if v == "fused"),
            "scratch_products": sum(1 for v in fuse.values() if v == "scratch"),
            "naive.layers": naive["layers"],
            "naive.kernels": naive["kernels"],
        }
        if self.slots:
            stats.update({"buffer_nodes": peak, "live_peak": live_peak, "naive.buffer_nodes": naive["buffer_nodes"]})
        return out, stats
