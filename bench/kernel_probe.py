"""Time variants of the generated sum-layer kernels on one configuration (GPU only).

The engine's forward and backward are captured as CUDA graphs and replayed, once per variant;
per-layer forward times (CUDA graphs of one launch) show where a variant wins. A variant is a set
of knobs of the plan, the code generator and the engine (joined by ``+``), so a change can be
measured before it becomes the default; the model is compiled again for each variant:

    python bench/kernel_probe.py --config hclt-128 --batch 1,512 --variants base,nocg,ntfwd

``base``: the defaults. ``nocg``: contiguous gathers off (every column's rows from the table);
``nostatic``: table-driven layers on the kernels with a runtime arity (default: unrolled);
``ntfwd``: the sum forward feature-major at every batch size (``sum_fwd``; by default batch tiles
of 64 run the batch-major ``sum_fwdt``); ``bm128``/``bk128``: node/column tiles up to 128;
``small<X>``: batch tiles of 32 on sum launches of fewer than X * SMs tiles;
``stages<N>``/``warps4``: launch options on every sum launch; ``fs<N>``: ``num_stages`` of the
sum forward only; ``ab_a1``/``ab_noexp``/``ab_now``: ablations (wrong results, timing only) that
drop the gathers of all but one row per column, the exponentials, or the weight loads;
``ab_noatomic``: the column flows of non-exclusive layers stored instead of added atomically;
``dense``: dense layers loop over the tile index, not a tile list; ``leafnode``: leaf programs with leaf tiles fastest; ``nobmm``: no layer by
batched matrix product (triton_engine.BMM); ``bmm0``/``bmm4m``: its edge threshold 0 / 4M; ``fill1``: full groups only; ``units0``: groups
of any size; ``nobmm3``: no batched products at precision tf32x3; ``nosplit``: the
categorical counts with tl.dot's tf32x3 instead of two tf32 products; ``scatter``: every categorical
table's expected counts by scatter (one atomic add per leaf and sample) instead of the one-hot
product (``stats_ms``); ``nosumalias``: the training backward keeps the sums' G in the flow
buffer, not in their value rows (triton_engine.SUM_ALIAS; the probe's backward is the plain one,
so time it with bench/run.py's train step); ``pdl``/``pdlpre``: the sum forward with
programmatic dependent launch (triton_engine.PDL 2) / its prefetching loop alone (PDL 1; the
ablations edit the PDL 0 loop only); ``pdl`` applies to the feature-major kernel only (small
batch tiles; ``pdl+pdlfwdt`` to the batch-major one too); ``nopdl`` the plain loop, whatever the
default; ``pdlwait`` (PDL 3) the plain loop after the wait, under the same launch; ``fw8``/``fw16``:
the sum forward on at least 8/16 warps (triton_engine.FWD_MIN_WARPS); ``scw8``/``scw16``: the alias's
column kernels on at least 8/16 (SC_MIN_WARPS; time it with bench/run.py's train step); ``nochain``:
chained sum layers (plan.chains) one launch per layer again (triton_engine.CHAIN off); ``chain64``:
chained launches only where a step fits 64 x 64 (CHAIN_MAX_TILE); ``chainbb16``/``chainbb32``: chained launches
on batch tiles of 16/32 at every step size (CHAIN_BB; by default 16 from batch 64 on only where a
step is at most 32 x 32); ``nobmmfuse``: a batched-product layer's column maxima and factors in two passes again
(BMM_FUSE_MAX_K 0; by default one pass where a group has at most 256 columns); ``nochainbwd``:
the chained runs' backward one launch per layer again
(CHAIN_BWD off; by default one launch per run where a step fits 64 x 64); ``chainbwd128``: the
chained backward on steps up to 128 x 128 (CHAIN_BWD_MAX_TILE). ``novec``/``vec2``/``vec4``/``vec8``:
the chained launches' VEC form (products reduced in registers, not tl.dot) never / up to batch
2, 4, 8 (CHAIN_VEC_MAX_B; default 1); ``vect64``: the forward's on steps up to 64 x 64 only
(CHAIN_VEC_MAX_TILE, default 128); ``vecbwd128``: the backward's up to 128 x 128
(CHAIN_VEC_BWD_MAX_TILE, default 64); ``vecw4``/``vecw8``: on 4/8 warps (CHAIN_VEC_WARPS); ``novecbwd``: the forward's
only (CHAIN_VEC_BWD); ``vecsub16``/``vecsub64``: its backward's node sub-tile (CHAIN_VEC_SUB).
``nofull``: chained runs of whole
weight tiles loaded through masks again (CHAIN_FULL off). ``ab_cnow``/``ab_cnogather``/``ab_cnoatomic``/``ab_cnobar``: ablations of the chained forward
(timing only): no weight loads past the first step's, no gathers of the children's values, no
group maxima, no barrier between steps. Variants measured and dropped are in bench/RESULTS.md (the source edits
they needed are in the git history of this file and of codegen.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.suite import SUITE, Context, build_pcir  # noqa: E402

import pcir  # noqa: E402
from pcir.backend import codegen  # noqa: E402
from pcir.backend import plan as plan_mod  # noqa: E402
from pcir.backend import triton_engine as te  # noqa: E402

# variant part -> (module, attribute, value)
KNOBS = {
    "nocg": (te, "CONTIG_GATHER", False),
    "ntfwd": (te, "TRANS_FWD_MIN_BB", 1 << 30),
    "nostatic": (te, "STATIC_GATHER", False),
    "bm128": (plan_mod, "BLOCK_M_CAP", 128),
    "bk128": (plan_mod, "BLOCK_K_CAP", 128),
    "scatter": (te, "COUNT_SCATTER_K", 0),
    "dense": (te, "DENSE_LOOP", True),
    "nofuse": (te, "BWD_FUSED", False),
    "fuseall": (te, "FUSE_MM_MAX_TILES", float("inf")),
    "fusemm0": (te, "FUSE_MM_MAX_TILES", -1.0),
    "fusemm1": (te, "FUSE_MM_MAX_TILES", 1.0),
    "fusemm4": (te, "FUSE_MM_MAX_TILES", 4.0),
    "leafnode": (te, "LEAF_BATCH_FASTEST", False),
    "nobmm": (te, "BMM", False),
    "bmm0": (te, "BMM_MIN_EDGES", 0),
    "bmm4m": (te, "BMM_MIN_EDGES", 1 << 22),
    "fill1": (te, "BMM_MIN_FILL", 1.0),
    "units0": (te, "BMM_MIN_UNITS", 0),
    "nobmm3": (te, "BMM_TF32X3", False),
    "nosplit": (codegen, "COUNTS_SPLIT", False),
    "cbu32": (te, "COUNT_BU", 32),
    "cbu128": (te, "COUNT_BU", 128),
    "cbc256": (te, "COUNT_BC_MAX", 256),
    "cbc64": (te, "COUNT_BC_MAX", 64),
    "cw8": (te, "COUNT_WARPS", 8),
    "fbb128": (te, "FWD_BB_LARGE", 128),
    "nosumalias": (te, "SUM_ALIAS", False),
    "scw8": (te, "SC_MIN_WARPS", 8),
    "scw16": (te, "SC_MIN_WARPS", 16),
    "fw8": (te, "FWD_MIN_WARPS", 8),
    "fw16": (te, "FWD_MIN_WARPS", 16),
    "pdl": (te, "PDL", 2),
    "pdlpre": (te, "PDL", 1),
    "nopdl": (te, "PDL", 0),
    "pdlwait": (te, "PDL", 3),
    "pdlfwdt": (te, "PDL_FWDT", True),
    "noleafrows": (te, "LEAF_ROWS", False),
    "lrbb128": (te, "LEAF_ROWS_BB", 128),
    "lrbb32": (te, "LEAF_ROWS_BB", 32),
    "lre8k": (te, "LEAF_ROWS_ELEMS", 8192),
    "nochain": (te, "CHAIN", False),
    "chain64": (te, "CHAIN_MAX_TILE", 64),
    "chainbb16": (te, "CHAIN_BB", 16),
    "chainbb32": (te, "CHAIN_BB", 32),
    "nobmmfuse": (te, "BMM_FUSE_MAX_K", 0),
    "nochainbwd": (te, "CHAIN_BWD", False),
    "chainbwd128": (te, "CHAIN_BWD_MAX_TILE", 128),
    "novec": (te, "CHAIN_VEC_MAX_B", 0),
    "vec4": (te, "CHAIN_VEC_MAX_B", 4),
    "vec8": (te, "CHAIN_VEC_MAX_B", 8),
    "vec2": (te, "CHAIN_VEC_MAX_B", 2),
    "vect64": (te, "CHAIN_VEC_MAX_TILE", 64),
    "vecbwd128": (te, "CHAIN_VEC_BWD_MAX_TILE", 128),
    "vecw4": (te, "CHAIN_VEC_WARPS", 4),
    "vecw8": (te, "CHAIN_VEC_WARPS", 8),
    "vecsub16": (te, "CHAIN_VEC_SUB", 16),
    "vecsub64": (te, "CHAIN_VEC_SUB", 64),
    "novecbwd": (te, "CHAIN_VEC_BWD", False),
    "nofull": (te, "CHAIN_FULL", False),
    "lre2k": (te, "LEAF_ROWS_ELEMS", 2048),
    "lrw8": (te, "LEAF_ROWS_WARPS", 8),
}


# ablations (timing only, results wrong): edits of the forward's templates (codegen attribute ->
# [(old, new)]) that remove one part of its work, to see which part the time goes to; the
# fifth session's measurements (bench/RESULTS.md) ran on the templates of f944595, where the
# gathers were inline: these are the same edits on today's templates
ABLATIONS = {
    "ab_a1": {"GATHER": [("for a in range(0, A):", "for a in range(0, 1):")]},  # one row per column
    "ab_noexp": {
        "SUM_KERNELS": [
            ("e = tl.exp(c - safe[None, :])", "e = c - safe[None, :]"),
            ("e = tl.exp(c - safe[:, None])", "e = c - safe[:, None]"),
        ]
    },
    "ab_noatomic": {  # the column flows stored, not added atomically (shared child rows: wrong)
        "SUM_KERNELS": [
            (
                'tl.atomic_add(F + r[:, None] * B + b[None, :], fc, mask=m2 & (r[:, None] != 0), sem="relaxed")',
                "tl.store(F + r[:, None] * B + b[None, :], fc, mask=m2 & (r[:, None] != 0))",
            )
        ]
    },
    "ab_now": {  # no weight loads in the forward (masked off)
        "SUM_KERNELS": [
            (
                "mask=sm[:, None] & km[None, :], other=0.0)\n            new = tl.maximum",
                "mask=sm[:, None] & km[None, :] & (K < 0), other=0.0)\n            new = tl.maximum",
            ),
            (
                "mask=km[:, None] & sm[None, :], other=0.0)\n            new = tl.maximum",
                "mask=km[:, None] & sm[None, :] & (K < 0), other=0.0)\n            new = tl.maximum",
            ),
        ]
    },
    # the chained forward (SUM_CHAIN's sum_fwd_chain): what a step's time goes to
    "ab_cnow": {  # no weight loads past the first step's
        "SUM_CHAIN": [
            ("w1 = _chain_w(W, w_off1, K1, units1, s, k, BK, FULL)", "w1 = w"),
        ]
    },
    "ab_cnogather": {  # the children's values not read
        "SUM_CHAIN": [
            (
                'c += _chain_in(V, tl.sum(tl.where(ia == a, r0, 0)), k, b, B, m2)\n        c = tl.where(m2, c, float("-inf"))\n        # the next',
                'c += tl.zeros([BK, BB], dtype=tl.float32)\n        c = tl.where(m2, c, float("-inf"))\n        # the next',
            ),
        ]
    },
    "ab_cnoatomic": {  # no group maxima
        "SUM_CHAIN": [
            (
                'tl.atomic_max(M + grp * B + b, mx, mask=bm, sem="relaxed")\n        tl.debug_barrier()\n        row, units',
                "tl.debug_barrier()\n        row, units",
            ),
        ]
    },
    "ab_cnobar": {  # no barrier between steps (a step may read rows not yet stored)
        "SUM_CHAIN": [
            ('sem="relaxed")\n        tl.debug_barrier()\n        row, units', 'sem="relaxed")\n        row, units'),
        ]
    },
}


def unknown_parts(name: str) -> list[str]:
    """The parts of variant ``name`` (joined by ``+``) that name no knob, ablation or launch
    option: a typo would otherwise time the defaults under another name."""

    def known(part: str) -> bool:
        if part in KNOBS or part in ABLATIONS or part in ("base", "warps4"):
            return True
        for prefix in ("small", "fs", "stages"):
            if part.startswith(prefix):
                try:
                    float(part[len(prefix) :])
                    return True
                except ValueError:
                    return False
        return False

    return [p for p in name.split("+") if not known(p)]


@contextlib.contextmanager
def knobs(name: str):
    """Set the knobs of variant ``name`` for the duration (restored after)."""
    saved = []
    try:
        for part in name.split("+"):
            if part in KNOBS:
                mod, attr, val = KNOBS[part]
            elif part.startswith("small"):
                mod, attr, val = te, "SMALL_LAYER", float(part[5:])
            elif part in ABLATIONS:
                for attr, edits in ABLATIONS[part].items():
                    text = getattr(codegen, attr)
                    for a, b in edits:
                        assert a in text, (part, a)
                        text = text.replace(a, b)
                    saved.append((codegen, attr, getattr(codegen, attr)))
                    setattr(codegen, attr, text)
                continue
            elif part.startswith("fs"):
                mod, attr, val = te, "FWD_OPTS", {"num_stages": int(part[2:])}
            else:
                continue
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, val)
        yield
    finally:
        for mod, attr, val in reversed(saved):
            setattr(mod, attr, val)


class _Launch:
    """``kernel[grid](...)`` with extra launch options."""

    def __init__(self, fn, **opts):
        self.fn, self.opts = fn, opts

    def __getitem__(self, grid):
        run = self.fn[grid]
        return lambda *a, **kw: run(*a, **{**kw, **self.opts})


def with_launch_options(mod, name: str):
    """``mod`` with ``stages<N>``/``warps4`` applied to every sum launch."""
    opts = {}
    for part in name.split("+"):
        if part.startswith("stages"):
            opts["num_stages"] = int(part[6:])
        if part == "warps4":
            opts["num_warps"] = 4
    if not opts:
        return mod

    class Wrapped:
        def __getattr__(self, attr):
            fn = getattr(mod, attr)
            return _Launch(fn, **opts) if attr.startswith("sum_") else fn

    return Wrapped()


def layer_shape(layer, L) -> dict:
    """What one sum layer launches: node / column / parameter tiles, groups, the longest
    loops, and its multiply-adds per sample (edges)."""
    return {
        "groups": len(layer.groups),
        "units": sum(g.units for g in layer.groups),
        "edges": int(sum(g.units * g.k for g in layer.groups)),
        "arity": L.arity,
        "tiles_fwd": L.n_fwd,
        "tiles_col": L.n_col,
        "tiles_pf": L.n_pf,
        "max_k": L.max_k,
        "bm_bk": [layer.block_m, layer.block_k],
        "contig": bool(L.contig),
        "dense": [bool(L.dense_fwd), bool(L.dense_col)],
    }


def time_graph(fn, reps: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="hclt-128")
    ap.add_argument("--batch", default="1,512")
    ap.add_argument("--variants", default="base,static")
    ap.add_argument(
        "--layers",
        default="0,10,40",
        help="sum layers timed one by one (forward); 'all': every sum layer, forward and backward, with its shape",
    )
    ap.add_argument("--precision", default="tf32")
    ap.add_argument("--pipeline", default=None, help="pass pipeline (default: the backend's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bad = {n: unknown_parts(n) for n in args.variants.split(",") if unknown_parts(n)}
    if bad:
        raise SystemExit(
            f"unknown variant parts {bad}; known: base, warps4, small<X>, fs<N>, stages<N>, "
            + ", ".join(sorted([*KNOBS, *ABLATIONS]))
        )
    dev = torch.device("cuda")
    cfg = {c.name: c for c in SUITE}[args.config]
    ctx = Context(dev, None)
    circuit = build_pcir(cfg, ctx)
    rows = []
    for name in args.variants.split(","):
        with knobs(name):
            model = pcir.compile(circuit, device="cuda", precision=args.precision, pipeline=args.pipeline)
            eng = model._engine()
            eng.k = with_launch_options(eng.k, name)
            model._normalised_cached()
            _, _, logp, W = model._cache
            sums = [i for i, L in enumerate(eng.layers) if hasattr(L, "variant")]
            for B in [int(b) for b in args.batch.split(",")]:
                x = ctx.dataset(cfg)[:B].contiguous()
                xf, _ = model._prepare(x, None, defer=True)
                V, M = eng.forward(W, logp, model.gauss, xf)  # compiles this batch's kernels
                ones = torch.ones((model.plan.root_units, B), device=dev)
                fwd = time_graph(functools.partial(eng.forward, W, logp, model.gauss, xf, precompile=False))
                bwd = time_graph(functools.partial(eng.backward, W, V, M, xf, ones))
                F, _ = eng.backward(W, V, M, xf, ones)
                cat = torch.zeros(model.plan.cat_size, device=dev)
                stats = time_graph(functools.partial(eng.input_stats, F, xf, model.gauss, cat=cat))
                per, per_bwd, shape = {}, {}, {}
                chosen = range(len(sums)) if args.layers == "all" else [int(s) for s in args.layers.split(",")]
                PF = torch.zeros(model.plan.w_size, device=dev)
                E = torch.empty((max(eng.max_columns, eng._bwd_e_rows(B)), B), device=dev)
                for li in chosen:
                    if li >= len(sums):
                        continue
                    L = eng.layers[sums[li]]
                    one = functools.partial(eng.sum_forward, L, V, W, M, E)
                    per[li] = round(time_graph(one, 200) * 1000, 1)
                    if args.layers == "all":
                        back = functools.partial(eng.sum_backward, L, V, F, W, M, PF, E)
                        per_bwd[li] = round(time_graph(back, 100) * 1000, 1)
                        shape[li] = layer_shape(model.plan.layers[sums[li]], L)
                        shape[li]["bmm"] = bool(getattr(eng, "use_bmm", lambda *a: False)(L, B))
                row = {
                    "config": cfg.name,
                    "B": B,
                    "variant": name,
                    "fwd_ms": round(fwd, 4),
                    "bwd_ms": round(bwd, 4),
                    "stats_ms": round(stats, 4),
                    "root_ll_mean": round(float(V[model.plan.root_row].mean()), 4),
                    "layer_fwd_us": per,
                }
                if per_bwd:
                    row["layer_bwd_us"] = per_bwd
                    row["layer_shape"] = shape
                rows.append(row)
                print(json.dumps(row), flush=True)
            del model, eng, V, M, F
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
