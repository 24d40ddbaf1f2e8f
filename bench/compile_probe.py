"""Where a cold compile goes (GPU only): each run is a process of its own with empty Triton and
pcir caches, and reports the seconds of ``pcir.compile``, of building the engine (which compiles
the row-wise EM kernels), of the first forward (which compiles every kernel of that batch on a
thread pool, ``pcir.backend.precompile``), of the first forward_backward and em_step, of the next two
train steps (the second captures CUDA graphs), and the kernels in Triton's
cache after each phase (``new_<phase>``: the kernels that phase compiled), with the pool's
thread count as given:

    python bench/compile_probe.py --config hclt-32 --threads 16,1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(config: str, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from harness.suite import SUITE, Context, build_pcir

    import pcir
    from pcir.backend import precompile

    precompile.compile_threads = lambda: threads  # type: ignore[assignment]
    dev = torch.device("cuda")
    cfg = {c.name: c for c in SUITE}[config]
    ctx = Context(dev, None)
    circuit = build_pcir(cfg, ctx)
    x = ctx.dataset(cfg)[: cfg.batch].contiguous()
    out: dict = {"config": config, "threads": threads}
    cache = Path(os.environ["TRITON_CACHE_DIR"])
    seen: set[str] = set()

    def timed(key, fn):
        torch.cuda.synchronize(dev)
        t = time.perf_counter()
        r = fn()
        torch.cuda.synchronize(dev)
        out[key] = round(time.perf_counter() - t, 3)
        names = {f"{p.stem}@{p.parent.name[:6]}" for p in cache.rglob("*.cubin")}  # name@specialisation
        out[f"new_{key[:-2]}"] = sorted(names - seen)
        seen.update(names)
        return r

    model = timed("compile_api_s", lambda: pcir.compile(circuit, device="cuda", precision="tf32"))
    timed("engine_s", model._engine)
    with torch.no_grad():
        timed("first_forward_s", lambda: model(x))
    timed("first_fb_s", lambda: model.forward_backward(x))
    timed("first_em_s", lambda: model.em_step(0.1, 0.1))
    timed("second_step_s", lambda: (model.forward_backward(x), model.em_step(0.1, 0.1)))
    timed("third_step_s", lambda: (model.forward_backward(x), model.em_step(0.1, 0.1)))
    out["kernels"] = len(seen)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="hclt-32")
    ap.add_argument("--threads", default="16,1")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.config, args.child)), flush=True)
        return 0
    for n in (int(t) for t in args.threads.split(",")):
        with tempfile.TemporaryDirectory() as tc, tempfile.TemporaryDirectory() as pc:
            env = dict(os.environ, TRITON_CACHE_DIR=tc, PCIR_CACHE_DIR=pc)
            cmd = [sys.executable, __file__, "--config", args.config, "--child", str(n)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            print(r.stdout.strip() or r.stderr[-2000:], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
