"""Where a cold compile goes (GPU only): each run is a process of its own with empty Triton and
pcir caches, and reports the seconds of ``pcir.compile``, of building the engine (which compiles
the row-wise EM kernels), of the first forward (which compiles every kernel of that batch on a
thread pool, ``pcir.backend.precompile``), of the first train step, and the kernels in Triton's
cache afterwards, with the pool's thread count as given (and ``--merge 0``: small layers keep
their own tile shape, ``plan.MERGE_VARIANT_UNITS = 0``):

    python bench/compile_probe.py --config hclt-32 --threads 16,1 --merge 1,0
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


def child(config: str, threads: int, merge: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from harness.suite import SUITE, Context, build_pcir

    import pcir
    from pcir.backend import plan as plan_mod
    from pcir.backend import precompile

    precompile.compile_threads = lambda: threads  # type: ignore[assignment]
    if not merge:
        plan_mod.MERGE_VARIANT_UNITS = 0
    dev = torch.device("cuda")
    cfg = {c.name: c for c in SUITE}[config]
    ctx = Context(dev, None)
    circuit = build_pcir(cfg, ctx)
    x = ctx.dataset(cfg)[: cfg.batch].contiguous()
    out: dict = {"config": config, "threads": threads, "merge": merge}

    def timed(key, fn):
        torch.cuda.synchronize(dev)
        t = time.perf_counter()
        r = fn()
        torch.cuda.synchronize(dev)
        out[key] = round(time.perf_counter() - t, 3)
        return r

    model = timed("compile_api_s", lambda: pcir.compile(circuit, device="cuda", precision="tf32"))
    timed("engine_s", model._engine)
    with torch.no_grad():
        timed("first_forward_s", lambda: model(x))
    timed("first_step_s", lambda: (model.forward_backward(x), model.em_step(0.1, 0.1)))
    with torch.no_grad():
        timed("second_forward_s", lambda: model(x))
    cache = Path(os.environ["TRITON_CACHE_DIR"])
    names = sorted(p.stem for p in cache.rglob("*.cubin"))
    out["kernels"] = len(names)
    out["kernel_names"] = names
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="hclt-32")
    ap.add_argument("--threads", default="16,1")
    ap.add_argument("--merge", default="1")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        n, merge = (int(v) for v in args.child.split(":"))
        print(json.dumps(child(args.config, n, merge)), flush=True)
        return 0
    runs = [(int(t), int(m)) for m in args.merge.split(",") for t in args.threads.split(",")]
    for n, merge in runs:
        with tempfile.TemporaryDirectory() as tc, tempfile.TemporaryDirectory() as pc:
            env = dict(os.environ, TRITON_CACHE_DIR=tc, PCIR_CACHE_DIR=pc)
            cmd = [sys.executable, __file__, "--config", args.config, "--child", f"{n}:{merge}"]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            print(r.stdout.strip() or r.stderr[-2000:], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
