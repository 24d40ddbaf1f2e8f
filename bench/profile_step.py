"""Where one train step goes, per phase: forward, forward_backward, em_step (CUDA graphs on and
off; the train step is ``train_step``, as ``bench/run.py`` times it), the top CUDA kernels of one eager train step (torch.profiler), per-layer kernel times, and
the kernel plan (layers, tiles, exclusive flags, variants, parameter runs).

    python bench/profile_step.py                                  # pd-32, hmm-2048, hmm-64, hclt-128
    python bench/profile_step.py --configs pd-32 --json out.json

Circuits and data are built exactly as ``bench/run.py`` builds them (``harness.suite``); HCLT
trees use PyJuice's estimator when PyJuice is importable, else pcir's own (same sizes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness.profile import count_launches, per_layer  # noqa: E402
from harness.suite import SUITE, Context, build_pcir  # noqa: E402

import pcir  # noqa: E402
from pcir.backend import codegen  # noqa: E402

STEP, PC = 0.1, 0.1


def timed(fn, batches, device, iters=15):
    for i in range(2):
        fn(batches[i % len(batches)])
    torch.cuda.synchronize(device)
    out = []
    for i in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        x = batches[i % len(batches)]
        s.record()
        fn(x)
        e.record()
        e.synchronize()
        out.append(s.elapsed_time(e))
    return round(statistics.median(out), 4)


def plan_info(model) -> dict:
    p = model.plan
    eng = model._engine()
    layers = []
    for L, EL in zip(p.layers, eng.layers, strict=True):
        d = {"i": L.index, "kind": L.kind, "groups": len(L.groups), "arity": L.arity, "excl": L.exclusive}
        if L.kind == "sum":
            d.update(
                tile=[L.block_m, L.block_k],
                variant=EL.variant,
                n_fwd=EL.n_fwd,
                n_col=EL.n_col,
                n_pf=EL.n_pf,
                units=sum(g.units for g in L.groups),
                k_max=max(g.k for g in L.groups),
                params=len({g.params for g in L.groups}),
            )
        else:
            d.update(n=EL.n, units=sum(g.units for g in L.groups))
        layers.append(d)
    return {
        "stats": p.stats(),
        "variants": codegen.variants(p),
        "sum_runs": len(p.runs("sum")),
        "sum_runs_ragged": sum(1 for r in p.runs("sum") if r[2] == 0),
        "cat_runs": p.runs("cat")[:4],
        "cat_size": p.cat_size,
        "count_programs": [
            getattr(eng, "count_n", None),
            getattr(eng, "count_cmax", None),
            getattr(eng, "count_bc", None),
        ],
        "layers": layers,
    }


def profile_config(cfg, ctx, device, args) -> dict:
    row: dict = {"config": cfg.name}
    circuit = build_pcir(cfg, ctx)
    batches = ctx.batches(cfg)
    t0 = time.perf_counter()
    model = pcir.compile(circuit, device=device, precision=args.precision)
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row["plan"] = plan_info(model)

    def step(x):  # as bench/run.py's train step
        model.train_step(x, STEP, PC)

    def fwd(x):
        with torch.no_grad():
            model(x)

    t0 = time.perf_counter()
    for _ in range(3):  # JIT, then graph capture
        fwd(batches[0])
        step(batches[0])
    torch.cuda.synchronize(device)
    row["warmup_s"] = round(time.perf_counter() - t0, 2)
    for graphs in (True, False):
        model.cuda_graphs = graphs
        tag = "graphs" if graphs else "eager"
        row[f"{tag}_fwd_ms"] = timed(fwd, batches, device)
        row[f"{tag}_fb_ms"] = timed(lambda x: model.forward_backward(x), batches, device)
        row[f"{tag}_em_ms"] = timed(lambda x: model.em_step(STEP, PC), batches, device)
        row[f"{tag}_train_ms"] = timed(step, batches, device)
    model.cuda_graphs = False
    x = batches[0]
    try:
        pl = per_layer(model, x, device, step)
        if "layers" in pl:
            lay = sorted(pl["layers"], key=lambda r: -(r["fwd_ms"] + r["bwd_ms"]))[:10]
            pl["layers_top"] = [
                {k: r.get(k) for k in ("layer", "groups", "tile", "arity", "fwd_ms", "bwd_ms", "bwd_kernels")}
                for r in lay
            ]
            pl["layers_fwd_ms"] = round(sum(r["fwd_ms"] for r in pl["layers"]), 4)
            pl["layers_bwd_ms"] = round(sum(r["bwd_ms"] for r in pl["layers"]), 4)
            del pl["layers"]
        row["per_layer"] = pl
    except Exception as e:  # noqa: BLE001
        row["per_layer"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    row["prof_train_eager"] = count_launches(lambda: step(x), device, top=15)
    row["prof_fwd_eager"] = count_launches(lambda: fwd(x), device, top=8)
    row["prof_fb_eager"] = count_launches(lambda: model.forward_backward(x), device, top=8)
    row["prof_em_eager"] = count_launches(lambda: model.em_step(STEP, PC), device, top=8)
    model.cuda_graphs = True
    row["prof_train_graphs"] = count_launches(lambda: step(x), device, top=15)
    model = None  # noqa: F841  (release the GPU memory)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    return row


def show(row: dict) -> None:
    print(f"\n===== {row['config']} =====")
    if "error" in row:
        print("ERROR", row["error"])
        return
    p = row["plan"]
    print(
        f"compile {row['compile_s']} s warmup {row['warmup_s']} s; stats {p['stats']}; variants {p['variants']}; "
        f"sum runs {p['sum_runs']} (ragged {p['sum_runs_ragged']}); cat runs {p['cat_runs']} size {p['cat_size']}; "
        f"count programs/cmax/bc {p['count_programs']}"
    )
    for L in p["layers"][:6] + (["..."] if len(p["layers"]) > 8 else []) + p["layers"][-2:]:
        print("  ", L)
    for tag in ("graphs", "eager"):
        print(
            f"  {tag:6s} fwd {row[f'{tag}_fwd_ms']} fb {row[f'{tag}_fb_ms']} em {row[f'{tag}_em_ms']} "
            f"train {row[f'{tag}_train_ms']} ms"
        )
    pl = row["per_layer"]
    print("  per-layer:", {k: v for k, v in pl.items() if k not in ("layers_top", "by_kernel")})
    for r in pl.get("layers_top", []):
        print("    ", r)
    for k, v in pl.get("by_kernel", {}).items():
        print("    ", k, v)
    for key in ("prof_train_eager", "prof_fwd_eager", "prof_fb_eager", "prof_em_eager", "prof_train_graphs"):
        d = row[key]
        print(f"  {key}: kernels {d['kernels']} device {d['kernel_ms']} ms wall {d['wall_ms_profiled']} ms")
        for t in d["top"]:
            print(f"      {t['ms']:9.4f} ms x{t['count']:5d}  {t['name']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="pd-32,hmm-2048,hmm-64,hclt-128")
    ap.add_argument("--precision", default="tf32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    try:
        import pyjuice as juice
    except Exception:  # noqa: BLE001
        juice = None
    ctx = Context(device=device, pyjuice=juice)
    by_name = {c.name: c for c in SUITE}
    rows = []
    print(torch.cuda.get_device_name(device), torch.__version__, flush=True)
    for name in args.configs.split(","):
        try:
            row = profile_config(by_name[name], ctx, device, args)
        except Exception:  # noqa: BLE001
            import traceback

            row = {"config": name, "error": traceback.format_exc()[-1500:]}
        rows.append(row)
        show(row)
        sys.stdout.flush()
        if args.json:
            Path(args.json).write_text(
                json.dumps({"card": torch.cuda.get_device_name(device), "rows": rows}, indent=1, default=str)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
