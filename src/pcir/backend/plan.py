"""Lowering: a verified circuit -> a kernel plan (pure data: numpy index arrays, no torch).

Value buffer
------------
Every *stored* PC node owns one row of a node-major buffer ``V[num_rows, batch]`` of float32
log-values (node flows use the same layout). Row 0 is the constant ``log 1 = 0``: it pads the
gathers of products of different arity, and it is a harmless sink for the flows sent to pads.
Stored nodes are inputs (grouped by family, one input block each), sums, and the products that
are not fused (roots, and products whose flattened arity is too large to pay; see
``MAX_FUSED_ARITY``).

Products: fused, scratch, stored
--------------------------------
A product consumed by sums is never stored: the sum's column k is the sum of ``arity`` stored
rows ``cols[k, :]`` (nested products are flattened), computed as the tiles load in the forward
pass and recomputed in the backward pass (``"fused"``). Where fusing does not pay (the pass asks
for ``fuse="scratch"``, or the flattened arity exceeds ``MAX_FUSED_ARITY``) the product layer is
computed by its own kernel into the *scratch region*: rows ``[scratch_row, scratch_row +
scratch_rows)`` of the buffer, shared by all such layers. A product layer's rows are live from the
launch that writes them to the last launch that reads them (``Layer.live_end``; extended to the
end of the scratch products that read it, so that those can be recomputed); layers whose live
ranges do not overlap get the same rows (first fit). The backward pass recomputes a scratch layer
(values, and its flows zeroed) just before the backward of its ``live_end`` launch
(``KernelPlan.recompute``), so product values are never kept from the forward pass. Roots (and a
product launch holding a root) are ``"stored"``: rows of their own. The plan records the path of
every product group in ``fuse``.

Layers
------
A layer is one launch group: sum groups (or stored product groups) whose inputs all live in
earlier layers. By default the layer of a stored group is one more than the deepest stored row it
reads; a valid ``layer`` annotation from the group-layers pass is followed instead.

Chains
------
Runs of consecutive sum layers whose groups form independent chains (``KernelPlan.chains``,
:func:`find_chains`): every group of a layer reads, of the run's earlier layers, the rows of
exactly one group of the layer below it, and no two groups read the same one. HCLT's long paths
and an HMM's time steps are such runs. One program per (chain, batch tile) can then compute every
step of its chain in order inside one launch (``triton_engine.CHAIN``), each step's inputs
written by the same program one step earlier, instead of one launch per layer.

Parameters
----------
* Sum weights: one flat vector in *parameter layout* (each parameter name once, row-major
  ``(units, K)`` for dense/block, ``(E,)`` for explicit); tied groups read one slice. Kernels read
  dense ``(units, K)`` row-major weights: dense/block groups read the parameter slice directly
  (``w_off`` < ``sum_param_size``), explicit groups read a dense expansion appended after it
  (``explicit_gather`` maps each appended entry to a parameter-layout index, -1 for no edge).
* Categorical and bernoulli leaves: one flat table of log-probabilities; bernoulli parameters are
  stored as two-category tables ``[1 - p, p]``. The table families (``TABLE_FAMILIES``: binomial,
  discrete_logistic, literal) follow in the same store (from ``cat_norm_size``), their tables
  computed by the runtime from ``leaf_params`` and read by the same categorical kernels. Gaussian leaves: a table ``(rows, 2)`` of
  ``(mean, log std)``. Indicators: their values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from ..ir import distributions as dists
from ..ir.circuit import Circuit, InputGroup, ProductGroup, SumGroup
from ..ir.diagnostics import BackendError

PLAN_VERSION = 1
MAX_FUSED_ARITY = 16
INPUT_FAMILIES = ("categorical", "gaussian", "indicator")
# discrete families served by the categorical kernels through a (units, k) log-probability table
# computed in torch from the family's own parameters (see runtime.leaf_tables); EM from the
# per-value flow counts of that table
TABLE_FAMILIES = ("binomial", "discrete_logistic", "literal")
# numbers per unit of each table family's parameter (IR format, float32 in ``leaf_params``)
TABLE_PARAM_WIDTH = {"binomial": 1, "discrete_logistic": 2, "literal": 0}


class RowIds:
    """The normalisation row of every entry of a flat parameter store (int32), computed on demand
    for a slice: the runtime needs them only for the ragged rows of explicit sums, and the full
    array of a big circuit is large (HCLT-512: 103M table entries). ``parts`` are ``(offset, n,
    first row, row_len, edge_rows)``: ``n`` entries in rows of ``row_len`` from ``first row``, or
    (``row_len == 0``) the entries' rows ``first row + edge_rows``."""

    def __init__(self, parts: list[tuple[int, int, int, int, np.ndarray | None]], size: int):
        self.parts = parts
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b, step = sl.indices(self.size)
        assert step == 1, "row ids are read in contiguous ranges"
        out = []
        for off, n, row0, row_len, edge_rows in self.parts:
            lo, hi = max(a, off), min(b, off + n)
            if lo >= hi:
                continue
            if row_len:
                out.append(row0 + np.arange(lo - off, hi - off, dtype=np.int64) // row_len)
            else:
                assert edge_rows is not None
                out.append(row0 + edge_rows[lo - off : hi - off].astype(np.int64))
        return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)

    def __array__(self, dtype=None, copy=None):
        arr = self[0 : self.size]
        return arr if dtype is None else arr.astype(dtype)


@dataclass
class InputBlock:
    """All leaves of one family: rows ``row .. row+count``."""

    family: str  # categorical (also bernoulli) | gaussian | indicator
    row: int
    count: int
    var: np.ndarray  # int32 [count]: the variable each leaf reads
    index: np.ndarray  # int64 [count]: table base (categorical), table row (gaussian), value (indicator)
    groups: list[tuple[str, int, int]] = field(default_factory=list)  # (name, row, units)


@dataclass
class SumGroupPlan:
    name: str
    row: int
    units: int
    k: int
    arity: int
    cols: np.ndarray  # int32 [K, arity]: stored rows whose log-values add up to column k
    w_off: int  # offset of the dense (units, K) weights in the kernel weight buffer
    params: str
    pattern: str
    layer: int
    block_m: int  # node tile
    block_k: int  # column tile
    tiles: np.ndarray  # int32 [T, 2]: the (node tile, column tile) pairs that carry edges
    products: tuple[str, ...] = ()  # the fused product groups read through cols
    index: int = 0  # position among all sum groups (row of the per-group max buffer)


@dataclass
class ProductGroupPlan:
    name: str
    row: int
    units: int
    arity: int
    idx: np.ndarray  # int32 [units, arity]: stored rows multiplied
    layer: int


@dataclass
class Layer:
    index: int
    kind: str  # "sum" | "product"
    groups: list
    block_m: int = 0
    block_k: int = 0
    arity: int = 1
    exclusive: bool = False  # every row this layer's gathers read is read by no other gather
    step: int = 0  # the schedule layer (pass ``layer``, renumbered densely) this launch group belongs to
    scratch: bool = False  # a product launch whose rows are in the shared scratch region
    live_end: int = -1  # scratch launches: the last launch that needs its rows (the recompute point)

    def contiguous(self) -> bool:
        """Sum layers: whether every input of every group's column table reads consecutive rows
        (``cols[k, a] == cols[0, a] + k``, HCLT and HMM); the kernels then compute the rows
        from ``k`` (``codegen.COL_ROWS``). Padding inputs (row 0 throughout) qualify."""
        return self.kind == "sum" and all(contiguous_columns(g.cols) for g in self.groups)


@dataclass
class Chain:
    """Sum layers ``[start, end)`` whose groups form ``len(groups)`` independent chains: chain
    ``c``'s step ``j`` is group ``groups[c][j]`` (its position in layer ``start + j``), and it
    reads, of the run's rows, only those of chain ``c``'s step ``j - 1``."""

    start: int
    end: int
    groups: list[list[int]]


@dataclass
class ParamSlot:
    name: str
    kind: str  # sum | categorical | bernoulli | gaussian | indicator | a TABLE_FAMILIES name
    offset: int  # into the family's flat store (rows for gaussian/indicator)
    shape: tuple[int, ...]  # IR shape
    k: int = 0  # categories per row (categorical/bernoulli/table-family tables)
    dist: dists.Dist | None = None  # table families: the distribution (arguments)
    poff: int = 0  # table families: offset of the IR parameters in the flat ``leaf_params`` store


@dataclass
class KernelPlan:
    num_vars: int
    num_rows: int
    inputs: list[InputBlock]
    layers: list[Layer]
    root: str
    root_row: int
    root_units: int
    params: dict[str, ParamSlot]
    group_param: dict[str, str]
    fuse: dict[str, str]  # product group -> fused | stored
    sum_param_size: int
    sum_row_id: RowIds  # [sum_param_size]: normalisation row of each entry (computed per slice)
    sum_edge: np.ndarray  # bool [sum_param_size]: entry carries an edge
    sum_num_rows: int
    explicit_gather: np.ndarray  # int64 [w_size - sum_param_size]
    w_size: int
    cat_size: int
    cat_num_rows: int
    cat_row_id: RowIds  # [cat_size]
    gauss_rows: int
    gauss_min_std: np.ndarray  # float64 [gauss_rows]
    var_k: np.ndarray  # int64 [num_vars]: categories (0 for real variables)
    var_names: list[str]
    source_hash: str = ""
    # the categorical store is [normalised tables (categorical, bernoulli) | table families];
    # only the first ``cat_norm_size`` entries are logits normalised per row
    cat_norm_size: int = 0
    leaf_param_size: int = 0  # float32 IR parameters of the table families
    schedule: str = "depth"  # "annotated": the pass's ``layer`` annotations were followed
    scratch_row: int = 0  # first row of the shared scratch region (scratch product launches)
    scratch_rows: int = 0  # its size in rows (the peak of the live scratch layers)
    scratch_units: int = 0  # rows the scratch products would take without reuse
    # launch index t -> scratch product launches recomputed (in this order) before t's backward
    recompute: dict[int, list[int]] = field(default_factory=dict)
    chains: list[Chain] = field(default_factory=list)  # runs of chained sum layers (find_chains)

    @property
    def table_slots(self) -> list[ParamSlot]:
        return [p for p in self.params.values() if p.kind in TABLE_FAMILIES]

    def runs(self, kind: str) -> list[tuple[int, int, int]]:
        """Contiguous runs ``(offset, length, row_len)`` of the flat sum (``"sum"``) or categorical
        (``"cat"``) store whose rows all have ``row_len`` entries (0: rows of varying length,
        explicit sums). Uniform runs are normalised and updated as ``(rows, row_len)`` views."""
        slots = [
            p
            for p in self.params.values()
            if (p.kind == "sum") == (kind == "sum")
            and p.kind in (("sum",) if kind == "sum" else ("categorical", "bernoulli"))
        ]
        slots.sort(key=lambda p: p.offset)
        out: list[list[int]] = []
        for p in slots:
            if p.kind == "sum":
                n = int(np.prod(p.shape))
                row_len = int(p.shape[1]) if len(p.shape) == 2 else 0
            else:
                n = int(np.prod(p.shape)) * (2 if p.kind == "bernoulli" else 1)
                row_len = p.k
            if out and out[-1][2] == row_len and out[-1][0] + out[-1][1] == p.offset:
                out[-1][1] += n
            else:
                out.append([p.offset, n, row_len])
        return [tuple(r) for r in out]  # type: ignore[misc]

    # ---- derived views -------------------------------------------------------------------
    @property
    def sum_groups(self) -> list[SumGroupPlan]:
        return [g for layer in self.layers if layer.kind == "sum" for g in layer.groups]

    def stats(self) -> dict[str, int]:
        return {
            "rows": self.num_rows,
            "layers": len(self.layers),
            "launches_forward": len([b for b in self.inputs if b.count]) + len(self.layers),
            "sum_groups": len(self.sum_groups),
            "fused_products": sum(v == "fused" for v in self.fuse.values()),
            "scratch_products": sum(v == "scratch" for v in self.fuse.values()),
            "stored_products": sum(v == "stored" for v in self.fuse.values()),
            "scratch_rows": self.scratch_rows,
            "weights": self.w_size,
            # sum layers in chained runs (find_chains): the forward runs each run as one launch
            "chained_layers": sum(ch.end - ch.start for ch in self.chains),
        }

    def to_text(self) -> str:
        """Deterministic human-readable dump (``pcir compile --emit=plan``)."""
        out = [f"plan v{PLAN_VERSION} hash={self.source_hash[:16]}"]
        out.append(
            f"rows={self.num_rows} vars={self.num_vars} root={self.root} (row {self.root_row}, {self.root_units} units)"
        )
        out.append("stats " + " ".join(f"{k}={v}" for k, v in self.stats().items()))
        for b in self.inputs:
            if not b.count:
                continue
            out.append(f"input {b.family} rows=[{b.row},{b.row + b.count}) groups={len(b.groups)}")
            for name, row, units in b.groups:
                out.append(f"  {name} row={row} units={units}")
        for layer in self.layers:
            sizes = f" tile=({layer.block_m},{layer.block_k})" if layer.kind == "sum" else ""
            excl = " exclusive" if layer.exclusive else ""
            if layer.scratch:
                excl += f" scratch live_end={layer.live_end}"
            out.append(f"layer {layer.index} {layer.kind} groups={len(layer.groups)} arity={layer.arity}{sizes}{excl}")
            for g in layer.groups:
                if isinstance(g, SumGroupPlan):
                    fused = f" fused=[{', '.join(g.products)}]" if g.products else ""
                    out.append(
                        f"  sum {g.name} row={g.row} units={g.units} K={g.k} arity={g.arity} {g.pattern} "
                        f"params={g.params} w_off={g.w_off} tiles={len(g.tiles)}{fused}"
                    )
                else:
                    out.append(f"  product {g.name} row={g.row} units={g.units} arity={g.arity} {self.fuse[g.name]}")
        if self.scratch_units:
            out.append(
                f"scratch rows=[{self.scratch_row},{self.scratch_row + self.scratch_rows}) "
                f"holds {self.scratch_units} product rows; recompute "
                + " ".join(f"{t}:{','.join(map(str, ls))}" for t, ls in sorted(self.recompute.items()))
            )
        for ch in self.chains:
            out.append(f"chain layers=[{ch.start},{ch.end}) chains={len(ch.groups)}")
        for name, slot in self.params.items():
            out.append(f"param {name} {slot.kind} offset={slot.offset} shape={list(slot.shape)}")
        return "\n".join(out) + "\n"


def contiguous_columns(cols: np.ndarray) -> bool:
    """Whether every input (column of ``cols [K, arity]``) reads consecutive rows, starting past
    row 0, or row 0 throughout (padding)."""
    step = np.arange(cols.shape[0], dtype=np.int64)
    c64 = np.asarray(cols, dtype=np.int64)
    return all(bool(np.all(c == 0) or (c[0] != 0 and np.all(c == c[0] + step))) for c in c64.T)


# the largest node and column tiles of a sum layer (powers of two)
BLOCK_M_CAP = 64
BLOCK_K_CAP = 64


def _tile(n: int, hint: int | None, lo: int, cap: int) -> int:
    """A power-of-two tile size (Triton needs powers of two; tl.dot needs >= 16)."""
    if hint and hint > 0:
        b = 1
        while b < hint:
            b *= 2
        return max(lo, min(b, cap))
    b = 1
    while b < n:
        b *= 2
    return max(lo, min(b, cap))


def circuit_hash(circuit: Circuit) -> str:
    """A structural hash (parameter *values* excluded: they live in the module, not the kernels)."""
    h = hashlib.sha256()
    h.update(json.dumps([v.name for v in circuit.variables]).encode())
    h.update(json.dumps([str(v.domain) for v in circuit.variables]).encode())
    for g in circuit:
        h.update(repr((type(g).__name__, g.name, g.units, g.children, g.attrs)).encode())
        for arr in (getattr(g, "edges", None), getattr(g, "mask", None)):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
        if isinstance(g, InputGroup):
            h.update(repr((g.var, str(g.dist), g.params)).encode())
        if isinstance(g, SumGroup):
            h.update(repr((g.pattern, g.params, g.block)).encode())
    h.update(repr(circuit.roots).encode())
    return h.hexdigest()


def lower(circuit: Circuit, root: str | None = None) -> KernelPlan:
    """Lower a verified circuit to a :class:`KernelPlan` (pure data)."""
    root = root or circuit.roots[0]
    if root not in circuit:
        raise BackendError(f"unknown root '{root}'")
    # every root's groups are compiled (their parameters belong to the module); the root whose
    # values the module returns and whose flows train it is ``root`` (the first by default)
    all_roots = {root, *(r for r in circuit.roots if r in circuit)}
    live: set[str] = set()
    stack = list(all_roots)
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(circuit.children(n))
    order = [n for n in circuit.topo_order() if n in live]

    # ---- which products are fused ---------------------------------------------------------
    # decided in topological order: a product's flattened arity counts a stored child as 1 and
    # a fused product child as that child's flattened arity
    fuse: dict[str, str] = {}
    flat_arity: dict[str, int] = {}
    for n in order:
        g = circuit.group(n)
        if not isinstance(g, ProductGroup):
            continue
        flat_arity[n] = sum(flat_arity[c] if fuse.get(c) == "fused" else 1 for c in g.children)
        stored = n in all_roots or g.attr("fuse") == "scratch" or flat_arity[n] > MAX_FUSED_ARITY
        fuse[n] = "stored" if stored else "fused"

    # ---- rows: inputs by family, then stored groups in topological order ------------------
    var_k = np.array([v.domain.k if v.domain.is_discrete else 0 for v in circuit.variables], dtype=np.int64)
    params: dict[str, ParamSlot] = {}
    group_param: dict[str, str] = {}
    cat_size = 0
    cat_rows = 0
    gauss_rows = 0
    gauss_min_std: list[float] = []
    cat_row_parts: list = []
    cat_norm_size = 0
    cat_norm_fixed = False
    leaf_param_size = 0
    # a table family's table spans the largest domain of the variables its parameter is read on
    table_k: dict[str, int] = {}
    for n in order:
        g = circuit.group(n)
        if isinstance(g, InputGroup) and g.dist.kind in TABLE_FAMILIES:
            dom = circuit.variables[g.var].domain
            table_k[g.params] = max(table_k.get(g.params, 1), int(dom.k))
    rows: dict[str, int] = {}
    next_row = 1
    inputs: list[InputBlock] = []
    input_groups = [circuit.group(n) for n in order if isinstance(circuit.group(n), InputGroup)]
    for family in INPUT_FAMILIES:
        members = [g for g in input_groups if _family(g) == family]
        # table families after the normalised tables (stable order otherwise)
        members.sort(key=lambda g: g.dist.kind in TABLE_FAMILIES)
        block = InputBlock(family, next_row, 0, np.zeros(0, np.int32), np.zeros(0, np.int64))
        var_parts: list[np.ndarray] = []
        idx_parts: list[np.ndarray] = []
        for g in members:
            assert isinstance(g, InputGroup)
            group_param[g.name] = g.params
            if g.params not in params:
                shape = circuit.params[g.params].shape
                if family == "categorical" and g.dist.kind in TABLE_FAMILIES:
                    if not cat_norm_fixed:
                        cat_norm_size, cat_norm_fixed = cat_size, True
                    k = table_k[g.params]
                    params[g.params] = ParamSlot(g.params, g.dist.kind, cat_size, shape, k, g.dist, leaf_param_size)
                    leaf_param_size += g.units * TABLE_PARAM_WIDTH[g.dist.kind]
                    cat_row_parts.append((cat_size, g.units * k, cat_rows, k, None))
                    cat_size += g.units * k
                    cat_rows += g.units
                elif family == "categorical":
                    k = int(g.dist.arg("k")) if g.dist.kind == "categorical" else 2
                    params[g.params] = ParamSlot(g.params, g.dist.kind, cat_size, shape, k)
                    cat_row_parts.append((cat_size, g.units * k, cat_rows, k, None))
                    cat_size += g.units * k
                    cat_rows += g.units
                elif family == "gaussian":
                    params[g.params] = ParamSlot(g.params, "gaussian", gauss_rows, shape)
                    gauss_min_std.extend([float(g.dist.arg("min_std", 1e-3))] * g.units)
                    gauss_rows += g.units
                else:
                    params[g.params] = ParamSlot(g.params, "indicator", 0, shape)
            slot = params[g.params]
            u = np.arange(g.units, dtype=np.int64)
            if family == "categorical":
                idx = slot.offset + u * slot.k
            elif family == "gaussian":
                idx = slot.offset + u
            else:
                idx = np.asarray(circuit.param_value(g.params), dtype=np.int64).reshape(-1)
            rows[g.name] = next_row + block.count
            block.groups.append((g.name, rows[g.name], g.units))
            block.count += g.units
            var_parts.append(np.full(g.units, g.var, dtype=np.int32))
            idx_parts.append(idx)
        if members:
            block.var = np.concatenate(var_parts).astype(np.int32)
            block.index = np.concatenate(idx_parts).astype(np.int64)
        next_row += block.count
        inputs.append(block)
    if not cat_norm_fixed:
        cat_norm_size = cat_size

    # ---- flattened gathers ----------------------------------------------------------------
    flat_cache: dict[str, np.ndarray] = {}

    def flat(name: str) -> np.ndarray:
        """[units, arity] stored rows whose log-values add up to each unit of ``name``."""
        if name in flat_cache:
            return flat_cache[name]
        g = circuit.group(name)
        if isinstance(g, ProductGroup) and fuse[name] == "fused":
            idx = g.child_index(circuit.child_units(name))
            parts = [flat(c)[idx[:, j]] for j, c in enumerate(g.children)]
            res = np.concatenate(parts, axis=1)
        else:
            res = (rows[name] + np.arange(g.units, dtype=np.int64))[:, None]
        flat_cache[name] = res
        return res

    # ---- layers ---------------------------------------------------------------------------
    layer_of: dict[str, int] = {}
    for b in inputs:
        for name, _, _ in b.groups:
            layer_of[name] = 0
    stored_groups = [
        n for n in order if not isinstance(circuit.group(n), InputGroup) and fuse.get(n, "stored") == "stored"
    ]
    deps: dict[str, set[str]] = {}

    def stored_deps(name: str) -> set[str]:
        g = circuit.group(name)
        out: set[str] = set()
        for c in g.children:
            cg = circuit.group(c)
            if isinstance(cg, ProductGroup) and fuse[c] == "fused":
                out |= stored_deps(c)
            else:
                out.add(c)
        return out

    for n in stored_groups:
        deps[n] = stored_deps(n)
    # default: depth over stored groups
    for n in stored_groups:
        layer_of[n] = 1 + max(layer_of[d] for d in deps[n])
    # launch-group key of every stored group: (schedule layer, position inside it); products of
    # a layer run before its sums, so the default depth schedule is (depth, 0 products / 1 sums)
    is_product = {n: isinstance(circuit.group(n), ProductGroup) for n in stored_groups}
    big = len(stored_groups) + 1
    key_of = {n: (layer_of[n], big if not is_product[n] else 0) for n in stored_groups}
    schedule = "depth"
    # follow the pass annotation when it is a valid schedule: every child in a strictly earlier
    # layer, or a stored (scratch) product of the same layer (the pass runs a layer's scratch
    # products first, those reading other products of the layer after them, then its sums)
    ann = {n: circuit.group(n).attr("layer") for n in stored_groups}
    if stored_groups and all(isinstance(v, int) and not isinstance(v, bool) for v in ann.values()):
        in_ann = {n: 0 for b in inputs for n, _, _ in b.groups}
        in_ann.update({n: int(v) for n, v in ann.items()})  # type: ignore[arg-type]

        def ok(n: str, d: str) -> bool:
            return in_ann[d] < in_ann[n] or (in_ann[d] == in_ann[n] and is_product.get(d, False))

        if all(ok(n, d) for n in stored_groups for d in deps[n]):
            ranks = sorted(set(in_ann[n] for n in stored_groups))
            remap = {r: i + 1 for i, r in enumerate(ranks)}
            sub: dict[str, int] = {}
            for n in stored_groups:  # topological order: product chains inside one layer
                if is_product[n]:
                    same = [sub[d] for d in deps[n] if is_product.get(d, False) and in_ann[d] == in_ann[n]]
                    sub[n] = 1 + max(same, default=-1)
            for n in stored_groups:
                layer_of[n] = remap[in_ann[n]]
                key_of[n] = (layer_of[n], sub[n] if is_product[n] else big)
            schedule = "annotated"

    # one launch group per key, in key order (topological order inside a group)
    layers: list[Layer] = []
    for key in sorted(set(key_of.values())):
        ms = [n for n in stored_groups if key_of[n] == key]
        kind = "product" if is_product[ms[0]] else "sum"
        layers.append(Layer(len(layers), kind, ms, step=key[0]))

    # ---- scratch product launches and their live ranges (in launches) ---------------------
    launch_of = {n: i for i, layer in enumerate(layers) for n in layer.groups}
    last_use: dict[str, int] = {}
    for n in stored_groups:
        for d in deps[n]:
            if d in launch_of:
                last_use[d] = max(last_use.get(d, -1), launch_of[n])
    for layer in layers:
        if layer.kind == "product" and not any(n in all_roots for n in layer.groups):
            layer.scratch = True
            for n in layer.groups:
                fuse[n] = "scratch"
    end = {n: last_use.get(n, launch_of[n]) for layer in layers if layer.scratch for n in layer.groups}
    for layer in reversed(layers):  # a reader's end is final before it extends its children's
        if not layer.scratch:
            continue
        layer.live_end = max(end[n] for n in layer.groups)
        for n in layer.groups:
            for d in deps[n]:
                if d in end:  # recomputing n needs d's rows until n's recompute point
                    end[d] = max(end[d], layer.live_end)

    # assign rows to stored groups in layer order (contiguous per layer); scratch launches get
    # virtual rows here, mapped into the shared scratch region at the end
    for layer in layers:
        for n in layer.groups:
            rows[n] = next_row
            next_row += circuit.group(n).units

    # ---- sum parameters ------------------------------------------------------------------
    sum_param_size = 0
    sum_rows = 0
    row_parts: list = []
    edge_chunks: list[np.ndarray] = []
    explicit_parts: list[np.ndarray] = []
    w_size_extra = 0
    # in launch order, so that a layer's groups with parameters of their own read consecutive
    # weights (the engine's batched products view a layer's weights as one [groups, N, K] block)
    sum_groups = [n for layer in layers for n in layer.groups if isinstance(circuit.group(n), SumGroup)]
    for n in sum_groups:
        g = circuit.group(n)
        assert isinstance(g, SumGroup)
        group_param[n] = g.params
        if g.params in params:
            continue
        k = circuit.num_columns(n)
        shape = circuit.params[g.params].shape
        params[g.params] = ParamSlot(g.params, "sum", sum_param_size, shape)
        if g.pattern == "explicit":
            assert g.edges is not None
            row_parts.append((sum_param_size, len(g.edges), sum_rows, 0, np.asarray(g.edges[:, 0])))
            edge_chunks.append(np.ones(len(g.edges), dtype=bool))
            sum_param_size += len(g.edges)
        else:
            row_parts.append((sum_param_size, g.units * k, sum_rows, k, None))
            edge_chunks.append(g.edge_mask(k).reshape(-1))
            sum_param_size += g.units * k
        sum_rows += g.units

    final_layers: list[Layer] = []
    explicit_off = sum_param_size
    emasks: dict[str, np.ndarray] = {}
    sum_index = 0
    for layer in layers:
        plans: list = []
        for n in layer.groups:
            g = circuit.group(n)
            if isinstance(g, ProductGroup):
                idx = g.child_index(circuit.child_units(n))
                cols = np.concatenate([flat(c)[idx[:, j]] for j, c in enumerate(g.children)], axis=1)
                plans.append(ProductGroupPlan(n, rows[n], g.units, cols.shape[1], cols.astype(np.int32), layer.index))
                continue
            assert isinstance(g, SumGroup)
            k = circuit.num_columns(n)
            parts = [flat(c) for c in g.children]
            arity = max(p.shape[1] for p in parts)
            cols = np.zeros((k, arity), dtype=np.int64)
            off = 0
            for p in parts:
                cols[off : off + p.shape[0], : p.shape[1]] = p
                off += p.shape[0]
            slot = params[g.params]
            if g.pattern == "explicit":
                assert g.edges is not None
                gather = np.full(g.units * k, -1, dtype=np.int64)
                gather[g.edges[:, 0] * k + g.edges[:, 1]] = slot.offset + np.arange(len(g.edges))
                explicit_parts.append(gather)
                w_off = explicit_off
                explicit_off += g.units * k
                w_size_extra += g.units * k
            else:
                w_off = slot.offset
            bs = g.attr("bs")
            # a block-sparse sum tiles along its own blocks, so empty blocks skip whole tiles
            hint_m = int(bs) if isinstance(bs, int) and not isinstance(bs, bool) else None
            hint_k = None
            if g.pattern == "block" and g.block is not None:
                hint_m = hint_m or g.block[0]
                hint_k = g.block[1]
            block_m = _tile(g.units, hint_m, 16, BLOCK_M_CAP)
            block_k = _tile(k, hint_k, 16, BLOCK_K_CAP)
            fused = tuple(sorted(_fused_under(circuit, n, fuse)))
            emasks[n] = g.edge_mask(k)
            plans.append(
                SumGroupPlan(
                    n,
                    rows[n],
                    g.units,
                    k,
                    arity,
                    cols.astype(np.int32),
                    w_off,
                    g.params,
                    g.pattern,
                    layer.index,
                    block_m,
                    block_k,
                    np.zeros((0, 2), np.int32),
                    fused,
                    sum_index,
                )
            )
            sum_index += 1
        lay = Layer(layer.index, layer.kind, plans, step=layer.step, scratch=layer.scratch, live_end=layer.live_end)
        if layer.kind == "sum":
            # one launch per layer: the layer's tile sizes are the largest its groups want
            lay.block_m = max(g.block_m for g in plans)
            lay.block_k = max(g.block_k for g in plans)
            lay.arity = max(g.arity for g in plans)
            for g in plans:
                g.block_m, g.block_k = lay.block_m, lay.block_k
                g.tiles = _occupied_tiles(emasks[g.name], lay.block_m, lay.block_k)
        else:
            lay.arity = max(g.arity for g in plans)
        final_layers.append(lay)

    # rows read by exactly one gather entry in the whole plan get their flow from one place: the
    # backward may store it instead of adding atomically
    refs = np.zeros(next_row, dtype=np.int64)
    for lay in final_layers:
        for g in lay.groups:
            idx = g.cols if isinstance(g, SumGroupPlan) else g.idx
            np.add.at(refs, idx.reshape(-1), 1)
    refs[0] = 0
    for lay in final_layers:
        if lay.kind == "sum":
            used = np.concatenate([g.cols.reshape(-1) for g in lay.groups])
            used = used[used != 0]
            lay.exclusive = bool(np.all(refs[used] == 1))

    num_rows, scratch_row, scratch_rows, scratch_units, recompute = _place_scratch(final_layers, next_row)
    root_row = next((g.row for lay in final_layers for g in lay.groups if g.name == root), rows[root])
    rg = circuit.group(root)
    return KernelPlan(
        num_vars=circuit.num_vars,
        num_rows=num_rows,
        inputs=inputs,
        layers=final_layers,
        root=root,
        root_row=root_row,
        root_units=rg.units,
        params=params,
        group_param=group_param,
        fuse={n: fuse[n] for n in order if n in fuse},
        sum_param_size=sum_param_size,
        sum_row_id=RowIds(row_parts, sum_param_size),
        sum_edge=np.concatenate(edge_chunks) if edge_chunks else np.zeros(0, bool),
        sum_num_rows=sum_rows,
        explicit_gather=np.concatenate(explicit_parts) if explicit_parts else np.zeros(0, np.int64),
        w_size=sum_param_size + w_size_extra,
        cat_size=cat_size,
        cat_num_rows=cat_rows,
        cat_row_id=RowIds(cat_row_parts, cat_size),
        gauss_rows=gauss_rows,
        gauss_min_std=np.asarray(gauss_min_std, dtype=np.float64),
        var_k=var_k,
        var_names=[v.name for v in circuit.variables],
        source_hash=circuit_hash(circuit),
        cat_norm_size=cat_norm_size,
        schedule=schedule,
        leaf_param_size=leaf_param_size,
        scratch_row=scratch_row,
        scratch_rows=scratch_rows,
        scratch_units=scratch_units,
        recompute=recompute,
        chains=find_chains(final_layers, num_rows),
    )


def find_chains(layers: list[Layer], num_rows: int, min_len: int = 2) -> list[Chain]:
    """The runs of at least ``min_len`` consecutive sum layers of one tile shape, every one with
    contiguous column tables (:meth:`Layer.contiguous`) and the same number of groups, in which
    every group of a layer after the first reads, of the rows the run's earlier layers write,
    exactly one group's rows, of the layer just below, and no two groups of a layer read the same
    group (module docstring, "Chains"). Greedy, bottom-up: a layer that cannot extend the current
    run starts the next one."""
    owner = np.full(num_rows, -1, dtype=np.int64)  # row -> launch index of the sum layer writing it
    pos = np.full(num_rows, -1, dtype=np.int64)  # row -> position of its group in that layer
    for t, lay in enumerate(layers):
        if lay.kind == "sum":
            for i, g in enumerate(lay.groups):
                owner[g.row : g.row + g.units] = t
                pos[g.row : g.row + g.units] = i

    def reads(g: SumGroupPlan) -> tuple[np.ndarray, np.ndarray]:
        r = np.asarray(g.cols, dtype=np.int64).reshape(-1)
        r = np.unique(r[r != 0])
        return owner[r], pos[r]

    def links(t: int, start: int) -> list[int] | None:
        """For each group of layer ``t``: the position of the one group of layer ``t - 1`` it
        chains to, or None when layer ``t`` cannot extend the run ``[start, t)``."""
        lay, below = layers[t], layers[t - 1]
        if not (lay.kind == "sum" and lay.contiguous() and len(lay.groups) == len(below.groups)):
            return None
        if (lay.block_m, lay.block_k) != (below.block_m, below.block_k):
            return None
        out = []
        for g in lay.groups:
            own, p = reads(g)
            inside = (own >= start) & (own < t)
            mine = set(zip(own[inside].tolist(), p[inside].tolist(), strict=True))
            if len(mine) != 1 or next(iter(mine))[0] != t - 1:
                return None
            out.append(next(iter(mine))[1])
        return out if len(set(out)) == len(out) else None

    chains: list[Chain] = []
    t = 0
    while t < len(layers):
        lay = layers[t]
        if not (lay.kind == "sum" and lay.contiguous()):
            t += 1
            continue
        paths = [[i] for i in range(len(lay.groups))]
        end = t + 1
        while end < len(layers):
            ln = links(end, t)
            if ln is None:
                break
            at = {p[-1]: p for p in paths}
            for i, below in enumerate(ln):
                at[below].append(i)
            end += 1
        if end - t >= min_len:
            chains.append(Chain(t, end, paths))
        t = end
    return chains


def _place_scratch(layers: list[Layer], num_rows: int):
    """Map the virtual rows of scratch product launches into one shared region after the other
    rows (first fit over live ranges ``[launch, live_end]``), and compact the other rows; rewrite
    every row reference of the plan in place. Returns (rows, region start, region rows, scratch
    product rows without reuse, recompute schedule)."""
    spans = []
    in_scratch = np.zeros(num_rows, dtype=bool)
    for lay in layers:
        if lay.scratch:
            a = min(g.row for g in lay.groups)
            u = sum(g.units for g in lay.groups)
            assert max(g.row + g.units for g in lay.groups) == a + u, "a launch's rows are contiguous"
            spans.append((lay, a, u))
            in_scratch[a : a + u] = True
    if not spans:
        return num_rows, num_rows, 0, 0, {}
    keep = ~in_scratch
    phys = np.zeros(num_rows, dtype=np.int64)
    phys[keep] = np.arange(int(keep.sum()))
    base = int(keep.sum())
    live: list[tuple[int, int, int]] = []  # (offset, rows, live_end) of the blocks in use
    size = 0
    for lay, a, u in spans:  # launch order
        live = [blk for blk in live if blk[2] >= lay.index]
        off = 0
        for o, n, _ in sorted(live):
            if off + u <= o:
                break
            off = max(off, o + n)
        live.append((off, u, lay.live_end))
        size = max(size, off + u)
        phys[a : a + u] = base + off + np.arange(u)
    for lay in layers:
        for g in lay.groups:
            g.row = int(phys[g.row])
            if isinstance(g, SumGroupPlan):
                g.cols = phys[g.cols].astype(np.int32)
            else:
                g.idx = phys[g.idx].astype(np.int32)
    recompute: dict[int, list[int]] = {}
    for lay, _a, _u in spans:
        recompute.setdefault(lay.live_end, []).append(lay.index)
    return base + size, base, size, sum(u for _l, _a, u in spans), recompute


def _occupied_tiles(emask: np.ndarray, block_m: int, block_k: int) -> np.ndarray:
    """(node tile, column tile) pairs of a (units, K) edge mask that carry at least one edge."""
    units, k = emask.shape
    nt_m = -(-units // block_m)
    nt_k = -(-k // block_k)
    pad = np.zeros((nt_m * block_m, nt_k * block_k), dtype=bool)
    pad[:units, :k] = emask
    occupied = pad.reshape(nt_m, block_m, nt_k, block_k).any(axis=(1, 3))
    return np.argwhere(occupied).astype(np.int32)


def _family(g: InputGroup) -> str:
    kind = g.dist.kind
    if kind in ("categorical", "bernoulli") or kind in TABLE_FAMILIES:
        return "categorical"
    if kind in ("gaussian", "indicator"):
        return kind
    dists.get(kind)  # raises for unknown families
    raise BackendError(f"group '{g.name}': distribution '{kind}' has no backend kernel", g.span)


def _fused_under(circuit: Circuit, name: str, fuse: dict[str, str]) -> set[str]:
    out: set[str] = set()
    for c in circuit.children(name):
        if fuse.get(c) == "fused":
            out.add(c)
            out |= _fused_under(circuit, c, fuse)
    return out
