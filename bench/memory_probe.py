"""What is live at the peak of one train step: the tensors allocated when the step's GPU memory
was highest, by size, each with the line of pcir (or torch) that allocated it.

    python bench/memory_probe.py                          # hclt-128, pd-128, hmm-512
    python bench/memory_probe.py --configs hclt-512 --top 12 --json out.json

Circuits and data are built exactly as ``bench/run.py`` builds them (``harness.suite``). The
step (``train_step``, as ``bench/run.py`` times it) runs eagerly (the module's CUDA graphs off, so every
allocation is seen) after two warm-up steps, under ``torch.cuda.memory._record_memory_history``;
the trace is replayed to find the moment of the peak. ``bench/run.py``'s peak column is the same
step's ``max_memory_allocated`` (with graphs), which this should match within the graphs'
static inputs and outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness.suite import SUITE, Context, build_pcir  # noqa: E402

import pcir  # noqa: E402

STEP, PC = 0.1, 0.1


def _site(frames: list[dict]) -> str:
    """The innermost frame in pcir (else the innermost Python frame) of an allocation."""
    py = [f for f in frames if f.get("filename", "").endswith(".py")]
    for f in py:
        if "/pcir/" in f["filename"]:
            return f"{Path(f['filename']).name}:{f['line']} {f['name']}"
    return f"{Path(py[0]['filename']).name}:{py[0]['line']} {py[0]['name']}" if py else "?"


def peak_live(trace: list[dict]) -> tuple[int, list[tuple[int, str]]]:
    """(peak bytes, [(bytes, site)] live at the peak) from one device's allocator trace."""
    live: dict[int, tuple[int, str]] = {}
    cur = best = 0
    best_live: dict[int, tuple[int, str]] = {}
    for ev in trace:
        act = ev["action"]
        if act == "alloc":
            live[ev["addr"]] = (ev["size"], _site(ev.get("frames", [])))
            cur += ev["size"]
            if cur > best:
                best, best_live = cur, dict(live)
        elif act == "free_completed" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])[0]
    return best, sorted(best_live.values(), reverse=True)


def probe(cfg, ctx, device, top: int) -> dict:
    circuit = build_pcir(cfg, ctx)
    model = pcir.compile(circuit, device=device)
    model.cuda_graphs = False
    x = ctx.batches(cfg)[0]

    def step():  # as bench/run.py's train step
        model.train_step(x, STEP, PC)

    for _ in range(2):
        step()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    step()
    torch.cuda.synchronize(device)
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak = torch.cuda.max_memory_allocated(device)
    trace = snap["device_traces"][device.index or 0]
    step_peak, live = peak_live(trace)
    params = {n: t.numel() * t.element_size() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    out = {
        "config": cfg.name,
        "rows": model.plan.num_rows,
        "leaf_end": getattr(model._engine(), "leaf_end", None),
        "before_step_mib": round(before / 2**20, 1),
        "peak_mib": round(peak / 2**20, 1),
        "step_extra_at_peak_mib": round(step_peak / 2**20, 1),
        "module_tensors_mib": {n: round(b / 2**20, 1) for n, b in params.items() if b >= 2**20},
        "live_at_peak": [[round(b / 2**20, 1), s] for b, s in live[:top]],
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="hclt-128,pd-128,hmm-512")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("memory_probe needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    try:
        import pyjuice  # noqa: F401  (HCLT trees with PyJuice's estimator, as bench/run.py)

        pj = pyjuice
    except ImportError:
        pj = None
    ctx = Context(device=device, pyjuice=pj)
    names = {c.name: c for c in SUITE}
    rows = []
    for name in args.configs.split(","):
        r = probe(names[name], ctx, device, args.top)
        rows.append(r)
        print(
            f"== {name}: rows {r['rows']} leaf_end {r['leaf_end']}  peak {r['peak_mib']} MiB "
            f"(before the step {r['before_step_mib']}, the step's own at its peak {r['step_extra_at_peak_mib']})"
        )
        print("   module tensors:", ", ".join(f"{k} {v}" for k, v in r["module_tensors_mib"].items()))
        for mib, site in r["live_at_peak"]:
            print(f"   {mib:>9.1f} MiB  {site}")
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
