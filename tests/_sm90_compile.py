"""Compile every kernel the runtime launches for sm_90, on a machine without a GPU (run by
tests/test_backend_sm90.py in a process of its own).

Triton's interpreter, which runs the CPU tests, checks no types: a loop-carried variable that
starts as int32 and becomes int64 (the PDL loop's dense index, thirteenth session) runs there and
fails to compile on a GPU. Here Triton's driver is replaced by one that names an sm_90 device,
every launch of the engine is turned into ``warmup`` (compile, do not run: precompile's
WarmupKernels) and the model's own paths are called on the CPU, so each kernel is compiled with
the argument types and constants the engine really gives it.

    python tests/_sm90_compile.py CIRCUIT BATCH [NAME=VALUE ...] [--hopper]

prints one line per compiled kernel and a last line ``compiled N kernels``; exits 1 naming the
path whose kernel did not compile."""

from __future__ import annotations

import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402

from pcir.backend import offline  # noqa: E402


def main(argv: list[str]) -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_backend_gathers import CIRCUITS, block_sparse
    from test_backend_helpers import data_for

    from pcir.backend import compile as pc_compile
    from pcir.backend import triton_engine as te
    from pcir.ir.diagnostics import DataError

    hopper = "--hopper" in argv
    args = [a for a in argv if a != "--hopper"]
    name, batch, knob_items = args[0], int(args[1]), args[2:]
    te.set_knobs(knob_items)
    offline.use_offline_target(90)
    launches: list[offline.Launch] = []
    if name == "hclt256":  # MNIST-shaped tables: the leaves' rows form on 16 x 256 tiles
        import numpy as np

        from pcir import structures
        from pcir.ir import Domain

        data = np.random.default_rng(0).integers(0, 256, (300, 6))
        c = structures.hclt(data, num_latents=20, domain=Domain.categorical(256))
    elif name == "hmm128":  # a chained launch on 128 x 128 tiles (16 warps)
        from pcir import structures

        c = structures.hmm(4, 128, 6)
    else:
        c = CIRCUITS[name]() if name != "block_sparse" else block_sparse()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    m.cuda_graphs = False
    eng = m._engine()
    eng.pdl_ok = hopper  # griddepcontrol: what a Hopper device would get
    eng.k = offline.Recorder(eng.k, launches)
    x, miss = data_for(c, batch, seed=1, p_missing=0.2)
    x, miss = torch.as_tensor(x), torch.as_tensor(miss)
    paths = [
        ("forward", lambda: m(x, miss)),
        ("forward_backward + em_step", lambda: (m.forward_backward(x, miss), m.em_step(0.5, 0.1))),
        ("train_step", lambda: m.train_step(x, 0.5, 0.1, missing=miss)),
        ("marginal", lambda: m.marginal(x, miss)),
        ("conditional", lambda: m.conditional(x, miss)),
        ("data check", lambda: eng.check_data(xf, bounds, bounds, torch.zeros(nv, dtype=torch.int8))),
        # the graphed forward's: integer data read through the address in a word (check_data_at)
        (
            "data check through an address",
            lambda: eng.check_data_at(
                torch.zeros(1, dtype=torch.int64),
                tuple(xf.shape),
                torch.int64,
                bounds,
                bounds,
                torch.zeros(nv, dtype=torch.int8),
            ),
        ),  # fmt: skip
        # ... signalling its verdict to a second word (the graphs of a second call: runtime _data_ok)
        (
            "data check through an address, signalling",
            lambda: eng.check_data_at(
                word,
                tuple(xf.shape),
                torch.int64,
                bounds,
                bounds,
                torch.zeros(nv, dtype=torch.int8),
                signal=(word[1:], torch.zeros(1, dtype=torch.int32)),
            ),
        ),  # fmt: skip
    ]  # map and sample launch these kernels too, then read the values, which a warmup leaves unset
    xf, nv = x.float().contiguous(), x.shape[1]
    bounds = torch.zeros(nv, dtype=torch.float32)
    word = torch.zeros(2, dtype=torch.int64)
    for what, fn in paths:
        t0 = time.perf_counter()
        try:
            fn()
        except DataError as e:
            if "only discrete variables" not in str(e):
                raise
            print(f"{what}: not for continuous variables", flush=True)
            continue
        except Exception as e:  # noqa: BLE001  (the first failing path is the answer)
            print(f"{what}: {type(e).__name__}: {str(e)[:3000]}", flush=True)
            return 1
        print(f"{what}: ok ({time.perf_counter() - t0:.1f} s)", flush=True)
    for la in launches:
        print(f"  {la.kernel} grid={la.grid} warps={la.num_warps}", flush=True)
    print(f"compiled {len(launches)} launches: {' '.join(sorted({la.kernel for la in launches}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
