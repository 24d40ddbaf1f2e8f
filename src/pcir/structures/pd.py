"""Poon-Domingos (PD) structures for data on a grid (images: ``(H, W)`` or ``(H, W, C)``).

Regions are axis-aligned hypercubes of the grid; a region is split at every *split point* inside
it, on every axis, into two sub-regions (a product of their sum groups); each region is a sum
group over all its splits. Sub-regions are shared between parents (a DAG, PyJuice's
``"sum_dominated"`` layout). A region with no split point inside (or deeper than
``max_split_depth`` splits from the whole grid) is a *leaf region*: an aligned product of the
input groups of its variables under a block-diagonal sum (``block_size`` x ``block_size``
blocks, as PyJuice builds it).

Sizes: every non-root region has ``num_latents`` sum units; a region with more than
``max_prod_block_conns`` splits is block-sparse: each block of ``block_size`` sum units reads all
units of ``max_prod_block_conns`` splits chosen at random (seeded); the root has one unit over
every split. Variables are numbered row-major over ``data_shape``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from ..ir.builder import CircuitBuilder
from ..ir.circuit import Circuit
from ..ir.diagnostics import PcirError
from ..ir.distributions import Dist, Domain
from ..ir.verify import verify
from ._common import check_positive, pow2_divisor, resolve_input

Hypercube = tuple[tuple[int, ...], tuple[int, ...]]


def default_block_size(num_latents: int) -> int:
    """PyJuice's PD default: up to 16 for at most 32 latents, else up to 32 (powers of two)."""
    cap = 16 if num_latents <= 32 else 32
    return min(cap, pow2_divisor(num_latents))


def split_points_from_intervals(data_shape: Sequence[int], split_intervals: int | Sequence[int]) -> list[list[int]]:
    if isinstance(split_intervals, int):
        split_intervals = (split_intervals,) * len(data_shape)
    if len(split_intervals) != len(data_shape):
        raise PcirError(
            f"split_intervals {tuple(split_intervals)} must give one interval per axis of {tuple(data_shape)}"
        )
    out = []
    for axis, (size, step) in enumerate(zip(data_shape, split_intervals, strict=True)):
        if not isinstance(step, int) or step < 1:
            raise PcirError(f"split interval of axis {axis} must be an integer >= 1, got {step!r}")
        out.append(list(range(step, size, step)))
    return out


def pd(
    height: int | None = None,
    width: int | None = None,
    num_latents: int = 32,
    *,
    data_shape: Sequence[int] | None = None,
    split_intervals: int | Sequence[int] | None = (4, 4),
    split_points: Sequence[Sequence[int]] | None = None,
    max_split_depth: int | None = None,
    max_prod_block_conns: int = 4,
    block_size: int | None = None,
    input_dist: str | Dist | None = None,
    domain: Domain | None = None,
    seed: int = 0,
) -> Circuit:
    """A PD circuit on a ``height`` x ``width`` grid (or any ``data_shape``).

    Args:
        split_intervals: distance between split points on each axis (an int for all axes); used
            unless ``split_points`` (one sorted list of positions per axis) is given.
        max_split_depth: regions reached after more splits than this become leaf regions (the
            depth of a region is its fewest splits from the whole grid).
        max_prod_block_conns: sums with more splits than this become block-sparse.
        block_size: PyJuice's block size (default: :func:`default_block_size`).
        input_dist: leaf family (default ``categorical(k=256)``, 8-bit pixels).
    """
    if data_shape is None:
        if height is None or width is None:
            raise PcirError("pd needs height and width (or data_shape)")
        data_shape = (height, width)
    shape = tuple(int(s) for s in data_shape)
    for s in shape:
        check_positive("every data_shape entry", s)
    check_positive("num_latents", num_latents)
    check_positive("max_prod_block_conns", max_prod_block_conns)
    if max_split_depth is not None:
        check_positive("max_split_depth", max_split_depth, minimum=0)
    bs = default_block_size(num_latents) if block_size is None else check_positive("block_size", block_size)
    if num_latents % bs:
        raise PcirError(f"num_latents ({num_latents}) must be a multiple of block_size ({bs})")
    if split_points is not None:
        if len(split_points) != len(shape):
            raise PcirError(f"split_points must give one list per axis of {shape}")
        points = []
        for axis, pts in enumerate(split_points):
            pts = sorted(int(p) for p in pts)
            bad = [p for p in pts if not 0 < p < shape[axis]]
            if bad:
                raise PcirError(f"split point {bad[0]} of axis {axis} is outside 1..{shape[axis] - 1}")
            points.append(pts)
    elif split_intervals is not None:
        points = split_points_from_intervals(shape, split_intervals)
    else:
        raise PcirError("pd needs split_intervals or split_points")
    dist, dom = resolve_input(input_dist, None, domain)
    return _build(shape, points, num_latents, bs, max_split_depth, max_prod_block_conns, dist, dom, seed)


def _splits(hc: Hypercube, points: list[list[int]]):
    lo, hi = hc
    for axis in range(len(lo)):
        for sp in points[axis]:
            if lo[axis] < sp < hi[axis]:
                a = (lo, hi[:axis] + (sp,) + hi[axis + 1 :])
                b = (lo[:axis] + (sp,) + lo[axis + 1 :], hi)
                yield axis, sp, a, b


def _region_name(hc: Hypercube) -> str:
    return "r" + "x".join(f"{a}_{b}" for a, b in zip(hc[0], hc[1], strict=True))


def _build(shape, points, num_latents, bs, max_split_depth, max_conns, dist, dom, seed) -> Circuit:
    nvars = int(np.prod(shape))
    root_hc: Hypercube = (tuple(0 for _ in shape), tuple(shape))

    # fewest splits from the root to every region (BFS), so max_split_depth does not depend on
    # the order in which shared regions are first met
    depth = {root_hc: 0}
    queue = deque([root_hc])
    while queue:
        hc = queue.popleft()
        if max_split_depth is not None and depth[hc] >= max_split_depth:
            continue
        for _, _, a, b in _splits(hc, points):
            for sub in (a, b):
                if sub not in depth:
                    depth[sub] = depth[hc] + 1
                    queue.append(sub)

    b = CircuitBuilder(seed=seed)
    b.variables(nvars, dom)
    b.attrs.update(structure="pd", num_latents=num_latents)
    inputs: dict[int, str] = {}
    rng = np.random.default_rng(seed)
    made: dict[Hypercube, str] = {}
    nb = num_latents // bs

    def is_leaf(hc: Hypercube) -> bool:
        if max_split_depth is not None and depth[hc] >= max_split_depth:
            return True
        return next(_splits(hc, points), None) is None

    def leaf_region(hc: Hypercube, units: int) -> str:
        grids = np.meshgrid(*[np.arange(a, c) for a, c in zip(hc[0], hc[1], strict=True)], indexing="ij")
        vs = np.ravel_multi_index([g.ravel() for g in grids], shape).tolist()
        chs = []
        for v in sorted(vs):
            if v not in inputs:
                inputs[v] = b.input(v, num_latents, dist, name=f"in{v}")
            chs.append(inputs[v])
        name = _region_name(hc)
        prod = b.product(chs, pattern="aligned", name=f"p.{name}")
        if units == num_latents:
            return b.sum([prod], num_latents, mask=np.eye(nb, dtype=bool), block=(bs, bs), name=f"s.{name}")
        return b.sum([prod], units, name=f"s.{name}")

    def build(hc: Hypercube) -> str:
        # iterative post-order: regions can be deep (fine split points on a long axis)
        stack = [(hc, False)]
        while stack:
            cur, expanded = stack.pop()
            if cur in made:
                continue
            if is_leaf(cur):
                made[cur] = leaf_region(cur, 1 if cur == root_hc else num_latents)
                continue
            subs = [s for _, _, a, c in _splits(cur, points) for s in (a, c)]
            if not expanded:
                stack.append((cur, True))
                stack.extend((s, False) for s in reversed(subs) if s not in made)
                continue
            name = _region_name(cur)
            prods = [
                b.product([made[a], made[c]], pattern="aligned", name=f"p.{name}.a{axis}s{sp}")
                for axis, sp, a, c in _splits(cur, points)
            ]
            if cur == root_hc:
                made[cur] = b.sum(prods, 1, name=f"s.{name}")
            elif len(prods) <= max_conns:
                made[cur] = b.sum(prods, num_latents, name=f"s.{name}")
            else:
                mask = np.zeros((nb, len(prods)), dtype=bool)
                for i in range(nb):
                    mask[i, rng.choice(len(prods), size=max_conns, replace=False)] = True
                made[cur] = b.sum(prods, num_latents, mask=mask, block=(bs, num_latents), name=f"s.{name}")
        return made[hc]

    b.root(build(root_hc))
    return verify(b.build())
