"""Time variants of the generated sum-layer kernels on one configuration (GPU only).

The engine's forward and backward are captured as CUDA graphs and replayed, once per variant of
the generated module; per-layer forward times (eager, CUDA events) show where a variant wins.
Variants are text edits of ``pcir.backend.codegen.generate``'s output plus launch options, so a
template change can be measured before it is made for real:

    python bench/kernel_probe.py --config hclt-128 --batch 1,512 --variants base,static

``base`` is the module as generated; ``static``: the arity loop unrolled (``A: tl.constexpr``,
``tl.static_range``); ``stages1``/``stages2``: ``num_stages`` on the sum launches; ``warps4``:
4 warps on every sum launch; ``scatter``: every categorical table's expected counts by
scatter (one atomic add per leaf and sample) instead of the one-hot product (``stats_ms``);
``relaxed``: every atomic with ``sem="relaxed"`` instead of Triton's default ``acq_rel``.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.suite import SUITE, Context, build_pcir  # noqa: E402

import pcir  # noqa: E402
from pcir.backend import codegen, loader  # noqa: E402


def variant_source(src: str, name: str) -> str:
    if "static" in name.split("+"):
        src = src.replace(", B, A, BB: tl.constexpr", ", B, A: tl.constexpr, BB: tl.constexpr")
        src = src.replace(", B, A, CH, BB: tl.constexpr", ", B, A: tl.constexpr, CH, BB: tl.constexpr")
        src = re.sub(r"for a in range\(0, A\)", "for a in tl.static_range(A)", src)
    if "relaxed" in name.split("+"):  # every atomic with relaxed memory ordering (default acq_rel)
        src = re.sub(r"(tl\.atomic_(?:add|max)\(.*)\)$", r'\1, sem="relaxed")', src, flags=re.M)
    return src


class _Launch:
    """``kernel[grid](...)`` with extra launch options."""

    def __init__(self, fn, **opts):
        self.fn, self.opts = fn, opts

    def __getitem__(self, grid):
        run = self.fn[grid]
        return lambda *a, **kw: run(*a, **{**kw, **self.opts})


def load_variant(plan, precision: str, name: str):
    mod = loader.load_source(variant_source(codegen.generate(plan, precision), name))
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
    ap.add_argument("--layers", default="0,10,40", help="sum layers timed one by one (forward)")
    ap.add_argument("--precision", default="tf32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    cfg = {c.name: c for c in SUITE}[args.config]
    ctx = Context(dev, None)
    model = pcir.compile(build_pcir(cfg, ctx), device="cuda", precision=args.precision)
    eng = model._engine()
    base_k = eng.k
    model._normalised_cached()
    _, _, logp, W = model._cache
    sums = [i for i, L in enumerate(eng.layers) if hasattr(L, "variant")]
    rows = []
    for B in [int(b) for b in args.batch.split(",")]:
        x = ctx.dataset(cfg)[:B].contiguous()
        xf, _ = model._prepare(x, None, defer=True)
        for name in args.variants.split(","):
            # (a name without source edits or launch options loads the engine's own module again)
            eng.k = load_variant(model.plan, args.precision, name)
            if "scatter" in name.split("+"):
                from pcir.backend import triton_engine as te

                keep, te.COUNT_SCATTER_K = te.COUNT_SCATTER_K, 0
                stats_eng = te.TritonEngine(model.plan, dev, eng.k, args.precision)
                te.COUNT_SCATTER_K = keep
            else:
                stats_eng = eng
            V, M = eng.forward(W, logp, model.gauss, xf, precompile=False)
            ones = torch.ones((model.plan.root_units, B), device=dev)
            fwd = time_graph(functools.partial(eng.forward, W, logp, model.gauss, xf, precompile=False))
            bwd = time_graph(functools.partial(eng.backward, W, V, M, xf, ones))
            F, _ = eng.backward(W, V, M, xf, ones)
            cat = torch.zeros(model.plan.cat_size, device=dev)
            stats = time_graph(functools.partial(stats_eng.input_stats, F, xf, model.gauss, cat=cat))
            per = {}
            for li in [int(s) for s in args.layers.split(",")]:
                if li >= len(sums):
                    continue
                L = eng.layers[sums[li]]
                fn = getattr(eng.k, f"sum_fwd_v{L.variant}")
                BB = 16
                while BB < min(B, 64):
                    BB *= 2
                nb = -(-B // BB)

                def one(L=L, fn=fn, BB=BB, nb=nb, V=V, M=M, B=B):
                    fn[(L.n_fwd, nb)](V, W, L.cols, L.fwd, L.fwd_list, M, B, L.arity, BB=BB, num_warps=L.num_warps)

                per[li] = round(time_graph(one, 200) * 1000, 1)
            row = {
                "config": cfg.name,
                "B": B,
                "variant": name,
                "fwd_ms": round(fwd, 4),
                "bwd_ms": round(bwd, 4),
                "stats_ms": round(stats, 4),
            }
            row["layer_fwd_us"] = per
            rows.append(row)
            print(json.dumps(row), flush=True)
    eng.k = base_k
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
