"""Circuit statistics: sizes, padding, layers, kernels and buffer size, annotated or naive.

The kernel model (what ``kernels`` and the fan-in padding count) follows the annotations of
``group-layers``: one launch per (layer, kernel key) where the key of an input group is its
distribution family, of a scratch product ``product``, of a sum its fan-in partition ``part``;
fused products (``fuse="fused"``) launch nothing, they are computed inside their consumer sums.
Within one sum kernel every node is processed with the largest fan-in of the kernel (PyJuice's
layout), so ``padded_edges`` counts both the zeros inside blocks of block-sparse sums and that
fan-in padding.

Without annotations the numbers are those of *naive depth-layering*: one layer per depth (longest
path from the inputs), one kernel per kind per depth, every group stored for the whole pass.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from ..ir.circuit import Circuit, Group, InputGroup, ProductGroup, SumGroup


def kernel_key(g: Group) -> tuple | None:
    """The kernel a group is launched in within its layer (None: fused, no launch of its own)."""
    if isinstance(g, InputGroup):
        return ("input", g.dist.kind)
    if isinstance(g, ProductGroup):
        return None if g.attr("fuse") == "fused" else ("product",)
    return ("sum", g.attr("part", 0))


def node_fanin(circuit: Circuit, g: SumGroup) -> np.ndarray:
    """Edges each node of a sum computes (int array of length ``units``), block padding included."""
    k = circuit.num_columns(g.name)
    if g.pattern == "dense":
        return np.full(g.units, k, dtype=np.int64)
    if g.pattern == "block":
        assert g.mask is not None and g.block is not None
        bm, bk = g.block
        return np.repeat(g.mask.sum(axis=1).astype(np.int64) * bk, bm)
    assert g.edges is not None
    return np.bincount(g.edges[:, 0], minlength=g.units).astype(np.int64)


def real_edges(circuit: Circuit, g: SumGroup) -> int:
    """Edges that carry weight by construction (``real_edges`` attribute of rewritten sums)."""
    n = g.num_edges(circuit.num_columns(g.name))
    r = g.attr("real_edges")
    return int(r) if isinstance(r, int) and 0 < r <= n else n


def naive_layering(circuit: Circuit) -> dict[str, int]:
    """Layers, kernels and buffer nodes of naive depth-layering (one layer per depth)."""
    depth = circuit.depth()
    kinds: dict[int, set] = defaultdict(set)
    for g in circuit:
        kinds[depth[g.name]].add(("input", g.dist.kind) if isinstance(g, InputGroup) else (g.kind,))
    return {
        "layers": (max(depth.values()) + 1) if depth else 0,
        "kernels": sum(len(v) for v in kinds.values()),
        "buffer_nodes": sum(g.units for g in circuit),
    }


def is_layered(circuit: Circuit) -> bool:
    return len(circuit) > 0 and all(isinstance(g.attr("layer"), int) for g in circuit)


def layered_stats(circuit: Circuit) -> dict[str, int]:
    """Layers, kernels, fan-in padding and peak buffer nodes from ``layer``/``slot`` annotations."""
    kernels: dict[tuple, list[SumGroup | Group]] = defaultdict(list)
    max_layer = 0
    for g in circuit:
        layer = int(g.attr("layer"))  # type: ignore[arg-type]
        max_layer = max(max_layer, layer)
        key = kernel_key(g)
        if key is not None:
            kernels[(layer, key)].append(g)
    fanin_pad = 0
    for (_, key), gs in kernels.items():
        if key[0] != "sum":
            continue
        fans = [node_fanin(circuit, g) for g in gs]  # type: ignore[arg-type]
        mx = max(int(f.max()) for f in fans)
        fanin_pad += sum(int((mx - f).sum()) for f in fans)
    slotted = [g for g in circuit if isinstance(g.attr("slot"), int)]
    stored = [g for g in circuit if kernel_key(g) is not None]
    if slotted and len(slotted) == len(stored):
        peak = max(int(g.attr("slot")) + g.units for g in slotted)  # type: ignore[arg-type]
    else:
        peak = sum(g.units for g in stored)
    return {"layers": max_layer + 1, "kernels": len(kernels), "fanin_padding": fanin_pad, "buffer_nodes": peak}


def circuit_stats(circuit: Circuit) -> dict[str, Any]:
    """Groups, PC nodes, edges, parameters, padded edges, layers, kernels, peak buffer nodes.

    ``layers``/``kernels``/``buffer_nodes`` come from the annotations when every group has a
    ``layer`` (see :mod:`pcir.passes.layers`), else from naive depth-layering; ``layered`` says
    which. ``padding`` is padded edges / computed edges.
    """
    s: dict[str, Any] = dict(circuit.stats())
    block_pad = 0
    for g in circuit:
        if isinstance(g, SumGroup):
            block_pad += g.num_edges(circuit.num_columns(g.name)) - real_edges(circuit, g)
    if is_layered(circuit):
        lay = layered_stats(circuit)
        padded = block_pad + lay["fanin_padding"]
        s.update(layered=True, layers=lay["layers"], kernels=lay["kernels"], buffer_nodes=lay["buffer_nodes"])
    else:
        nv = naive_layering(circuit)
        padded = block_pad
        s.update(layered=False, layers=nv["layers"], kernels=nv["kernels"], buffer_nodes=nv["buffer_nodes"])
    sum_edges = sum(g.num_edges(circuit.num_columns(g.name)) for g in circuit if isinstance(g, SumGroup))
    s["padded_edges"] = padded
    s["padding"] = round(padded / (sum_edges + padded - block_pad), 4) if sum_edges else 0.0
    return s


STAT_ORDER = ("groups", "nodes", "edges", "params", "padded_edges", "padding", "layers", "kernels", "buffer_nodes")


def format_stats_table(columns: list[tuple[str, dict[str, Any]]]) -> str:
    """Rows = statistics, columns = stages (input, after each pass)."""
    heads = ["stat"] + [c[0] for c in columns]
    rows = [heads]
    for key in STAT_ORDER:
        row = [key]
        for _, st in columns:
            v = st.get(key, "")
            row.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return "\n".join(lines)
