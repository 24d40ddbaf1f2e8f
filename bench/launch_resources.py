"""Every launch of one benchmark configuration, compiled for sm_90 without a GPU: grid, warps,
registers, spills, resident warps per SM and how much of a 132-SM card one launch fills.

The model is compiled on the CPU and its forward (and training step) are called with every
launch turned into a compile (``pcir.backend.offline``), so the table shows the kernels, grids
and launch options the engine really chooses at that batch size, with no GPU and no timing:

    python bench/launch_resources.py hclt-128 --batch 1 --paths forward
    python bench/launch_resources.py pd-32 --knob FWD_MIN_WARPS=8

``fill`` is the launch's programs over what the card holds at once (132 SMs times the blocks per
SM its registers and shared memory allow): under 1, part of the card idles for the whole launch.
HCLT's Chow-Liu tree is learnt on the CPU from the harness's images (their random numbers differ
from the GPU's: a tree like the benchmark's, not the same one). Run it in a process of its own
(it replaces Triton's driver)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parent))

SMS = 132  # an H100 SXM / H200


def circuit_for(name: str):
    import torch
    from harness.suite import SMOKE, SUITE, Context, build_pcir

    cfg = {c.name: c for c in [*SUITE, *SMOKE]}.get(name)
    if cfg is None:
        raise SystemExit(f"unknown configuration {name}; known: {', '.join(c.name for c in SUITE)}")
    # HCLT: the tree learnt on the CPU from the harness's images (about 25 s on 2 cores; the
    # CPU's random numbers differ from the GPU's, so it is a tree like the benchmark's, not its)
    return cfg, build_pcir(cfg, Context(device=torch.device("cpu"), pyjuice=None))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=None, help="default: the configuration's")
    ap.add_argument("--paths", default="forward,train", help="forward, train (the training step)")
    ap.add_argument("--precision", default="tf32")
    ap.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE", help="engine knobs")
    ap.add_argument("--hopper", action="store_true", help="PDL as on an sm_90 device (pdl_ok)")
    ap.add_argument("--unique", action="store_true", help="one row per distinct compiled kernel, with its launches")
    args = ap.parse_args(argv)

    import torch

    from pcir.backend import compile as pc_compile
    from pcir.backend import offline
    from pcir.backend import triton_engine as te

    try:
        te.set_knobs(args.knob)
    except ValueError as e:
        raise SystemExit(f"--knob {e}") from None
    offline.use_offline_target(90)
    cfg, circuit = circuit_for(args.config)
    batch = args.batch or cfg.batch
    model = pc_compile(circuit, engine="triton", device="cpu", precision=args.precision)
    model.cuda_graphs = False
    eng = model._engine()
    eng.pdl_ok = args.hopper
    x = torch.zeros((batch, model.num_vars), dtype=torch.long)
    rows = []
    for path in args.paths.split(","):
        launches: list[offline.Launch] = []
        eng.k = offline.Recorder(eng.k, launches)
        if path == "forward":
            with torch.no_grad():
                model(x)
        elif path == "train":
            model.train_step(x, 0.5, 0.1)
        else:
            raise SystemExit(f"unknown path {path!r}: forward, train")
        eng.k = eng.k._module
        rows += [(path, la) for la in launches]
    print(f"{args.config} at batch {batch}, {args.precision}, knobs: {' '.join(args.knob) or 'defaults'}")
    if args.unique:
        return _unique(rows, offline)
    print("| path | # | kernel | grid | programs | warps | regs | stack | shared KiB | warps/SM | fill |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    under = spills = 0
    for i, (path, la) in enumerate(rows):
        r = offline.resources(la.compiled)
        if r is None:
            print(f"| {path} | {i} | {la.kernel} | {la.grid} | {la.programs} | {la.num_warps} | ? | ? | ? | ? | ? |")
            continue
        occ, fill = _occ_fill(offline, r["regs"], r["warps"], r["shared"], la.programs)
        under += fill < 1
        spills += r["stack"] > 0
        print(
            f"| {path} | {i} | {la.kernel} | {'x'.join(map(str, la.grid))} | {la.programs} | {r['warps']} | "
            f"{r['regs']} | {r['stack']} | {r['shared'] / 1024:.1f} | {occ} | {fill:.2f} |"
        )
    print(f"\n{len(rows)} launches; {under} fill less than one wave of the card; {spills} spill")
    return 0


def _occ_fill(offline, regs: int, warps: int, shared: int, programs: int) -> tuple[int, float]:
    """(resident warps per SM, programs over the blocks the whole card holds at once)."""
    occ = offline.warps_per_sm(regs, warps, shared)
    return occ, programs / (SMS * max(occ // warps, 1))


def _unique(rows, offline) -> int:
    """One row per distinct compiled kernel: its launches, their programs (min-max) and fill."""
    groups: dict = {}
    for path, la in rows:
        r = offline.resources(la.compiled) or {}
        key = (path, la.kernel, r.get("warps"), r.get("regs"), r.get("stack"), r.get("shared"))
        groups.setdefault(key, []).append(la.programs)
    print("| path | kernel | launches | programs min-max | warps | regs | stack | shared KiB | warps/SM | fill max |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for (path, kernel, warps, regs, stack, shared), progs in groups.items():
        if regs is None:
            print(f"| {path} | {kernel} | {len(progs)} | {min(progs)}-{max(progs)} | ? | ? | ? | ? | ? | ? |")
            continue
        occ, fill = _occ_fill(offline, regs, warps, shared, max(progs))
        print(
            f"| {path} | {kernel} | {len(progs)} | {min(progs)}-{max(progs)} | {warps} | {regs} | {stack} | "
            f"{shared / 1024:.1f} | {occ} | {fill:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
