"""Shared memory of every generated sum kernel, compiled for a GPU target on a machine without one.

Triton compiles to a target named here (default ``cuda:90``, H100/H200) without a device, so a
kernel that will not launch on the card (``OutOfResources: shared memory``) is found on the CPU::

    python bench/kernel_resources.py pd-32 hclt-128 --target cuda:90

It lowers the configuration's circuit (``bench/harness/suite.py``; HCLT on a path-shaped tree,
which has the same kernel variants' shapes), generates the Triton module and compiles each sum
kernel variant (tile sizes, and arity where it is compiled in) with the batch tile the engine uses
for the configuration's batch. Prints one line per kernel:
shared memory, warps and pipeline stages, and ``OVER`` where the shared memory exceeds
``--limit`` (227 KiB on sm_90).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# argument name -> Triton type; read off each kernel's own argument list, so the tool follows the
# generated signatures as they change (constexpr arguments other than BB are not expected)
ARG_TYPES = {
    "V": "*fp32",
    "W": "*fp32",
    "F": "*fp32",
    "M": "*fp32",
    "PF": "*fp32",
    "E": "*fp32",
    "COLS": "*i32",
    "TAB": "*i64",
    "TABN": "*i64",
    "TABC": "*i64",
    "TABP": "*i64",
    "LIST": "*i64",
    "B": "i32",
    "A": "i32",
    "CH": "i32",
    "NN": "i32",
    "NP": "i32",
    "LE": "i32",
    "SH": "i32",
    "RG": "*i32",
}
# the sum kernels the engine launches (sum_bwd_prep / sum_bwd_mm: two steps in one launch)
KINDS = ("sum_fwd", "sum_fwdt", "sum_bwd_prep", "sum_bwd_mm", "sum_bwd_params", "sum_bwd_cols")
BACKWARD = ("sum_bwd_prep", "sum_bwd_mm", "sum_bwd_params", "sum_bwd_cols")


def circuit_for(name: str):
    from harness.suite import SUITE

    from pcir import structures as st

    cfg = {c.name: c for c in SUITE}.get(name)
    if cfg is None:
        raise SystemExit(f"unknown configuration {name}; known: {', '.join(c.name for c in SUITE)}")
    if cfg.family == "hclt":  # no data needed: the kernel shapes depend on latents and arities only
        tree = [(i, i - 1) for i in range(1, 40)] + [(40 + j, j % 40) for j in range(60)]
        return cfg, st.hclt(tree=tree, num_vars=100, num_latents=cfg.latents, input_dist="categorical(k=256)")
    from harness.suite import Context, build_pcir

    return cfg, build_pcir(cfg, Context(device=None, pyjuice=None))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--target", default="cuda:90", help="backend:arch, e.g. cuda:90 (H100/H200) or cuda:80")
    ap.add_argument("--limit", type=int, default=232448, help="bytes of shared memory a block may use")
    ap.add_argument("--precision", default="tf32")
    ap.add_argument(
        "--pdl", type=int, default=0, choices=(0, 1, 2, 3), help="the sum forward's PDL (triton_engine.PDL) to compile"
    )
    ap.add_argument(
        "--regs",
        action="store_true",
        help="also registers per thread and local (spill) bytes of each kernel (Triton's bundled cuobjdump)",
    )
    ap.add_argument(
        "--both-sc",
        action="store_true",
        help="compile the column kernels with and without SC (the sums' G computed for their "
        "children: triton_engine.SUM_ALIAS), to compare their resources",
    )
    ap.add_argument("--min-warps", type=int, default=0, help="launch every kernel with at least this many warps")
    args = ap.parse_args(argv)

    from triton.backends.compiler import GPUTarget

    from pcir.backend.codegen import generate, variants
    from pcir.backend.loader import load_source
    from pcir.backend.plan import lower
    from pcir.backend.triton_engine import WARPS_LARGE_TILE, _batch_tile

    backend, arch = args.target.split(":")
    target = GPUTarget(backend, int(arch), 32)
    over = 0
    for name in args.configs:
        cfg, circuit = circuit_for(name)
        plan = lower(circuit)
        mod = load_source(generate(plan, args.precision), plan.source_hash, args.precision)
        bb = _batch_tile(cfg.batch)
        for i, variant in enumerate(variants(plan)):
            mine = [layer for layer in plan.layers if layer.kind == "sum" and (layer.block_m, layer.block_k) == variant]
            # the launch options and compile-time flags the engine gives this variant's layers
            warps = max(WARPS_LARGE_TILE if variant[0] * variant[1] >= 64 * 64 else 4, args.min_warps)
            flags = {
                "BB": bb,
                "BC": bb,
                "T": bb >= 64,
                "CG": any(layer.contiguous() for layer in mine),
                "DENSE": False,
                "EXCL": all(layer.exclusive for layer in mine),
                "SC": all(layer.exclusive for layer in mine),  # the children's G (sum alias): the larger kernel
                "PDL": args.pdl,
            }
            # table-driven layers run the kernels with the arity a compile-time constant (suffix s)
            arity = max(layer.arity for layer in mine)
            for kind, sfx in [(k, s) for k in KINDS for s in ("", "s")]:
                fn = getattr(mod, f"{kind}_v{i}{sfx}", None)
                if fn is None:
                    continue
                fl = {**flags, "A": arity} if sfx else flags
                # both loops of the sum forward (listed column tiles, and every tile in order: the
                # layers dense_fwd marks and the DENSE_LOOP knob; a type error of one loop's
                # loop-carried index showed only on a GPU)
                declared = {p.name for p in fn.params if p.is_constexpr}
                dense = (False, True) if "DENSE" in declared else (False,)
                scs = (False, True) if args.both_sc and "SC" in declared else (fl["SC"],)
                for d in dense:
                    for sc in scs:
                        kname = kind + sfx + (" dense" if d else "") + (f" SC={int(sc)}" if len(scs) > 1 else "")
                        fl2 = {**fl, "DENSE": d, "SC": sc}
                        over += _compile_one(name, i, variant, bb, kname, kind, fn, fl2, warps, args, target)
    return 1 if over else 0


def _compile_one(name, i, variant, bb, kname, kind, fn, fl, warps, args, target) -> int:
    """Compile one kernel with the flags ``fl`` and print its resources: the problems found."""
    import triton
    from triton.compiler import ASTSource

    from pcir.backend.triton_engine import BWD_STAGES

    over = 0
    try:
        # constant exactly where the kernel declares it (a value for each from fl)
        declared = {p.name for p in fn.params if p.is_constexpr}
        sig = {a: ("constexpr" if a in declared else ARG_TYPES[a]) for a in fn.arg_names}
        const = {a: fl[a] for a in fn.arg_names if a in declared}
        opts = {"num_warps": warps}
        if kind in BACKWARD:
            opts["num_stages"] = BWD_STAGES
        if "PDL" in declared and args.pdl >= 2:
            opts["launch_pdl"] = True
        k = triton.compile(ASTSource(fn, sig, constexprs=const), target=target, options=opts)
        md = k.metadata
        flag = " OVER" if md.shared > args.limit else ""
        if "PDL" in declared and args.pdl >= 2:
            ptx = k.asm.get("ptx", "")
            ok = "griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx
            flag += " pdl" if ok and md.launch_pdl else " NO-PDL"
            over += not (ok and md.launch_pdl)
        over += md.shared > args.limit
        if args.regs:
            flag += _regs(k)
        print(
            f"{name:>16s} v{i} {str(tuple(variant)):<14s} BB={bb} {kname:<16s} "
            f"shared={md.shared:>7d} warps={md.num_warps} stages={md.num_stages}{flag}"
        )
    except Exception as e:  # noqa: BLE001  (report and go on)
        over += 1
        print(f"{name:>16s} v{i} {kname}: {type(e).__name__}: {str(e)[:200]}")
    return over


def _regs(k) -> str:
    """' regs=N stack=N local=N warps/SM=N' of a compiled kernel (pcir.backend.offline)."""
    from pcir.backend.offline import resources, warps_per_sm

    r = resources(k)
    if r is None:
        return " regs=?"
    occ = warps_per_sm(r["regs"], r["warps"], r["shared"])
    return f" regs={r['regs']} stack={r['stack']} local={r['local']} warps/SM={occ}"


if __name__ == "__main__":
    sys.exit(main())
