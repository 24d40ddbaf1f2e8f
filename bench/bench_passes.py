"""Benchmark: the default pass pipeline on an HCLT with 784 variables x 512 units (lazy params).

    PYTHONPATH=src python bench/bench_passes.py [--vars 784] [--units 512] [--spec SPEC]

Prints one line per pass (seconds) and the statistics table. The circuit is built with lazily
initialised parameters, so building it costs nothing and the passes must not materialise them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pcir.ir import Circuit, CircuitBuilder, Dist, Domain
from pcir.passes import DEFAULT_PIPELINE, run_pipeline


def hclt(num_vars: int, units: int, k: int = 256, seed: int = 0, reach: int = 30) -> Circuit:
    """An HCLT-shaped circuit on a random tree (each variable's parent among the `reach` before it)."""
    rng = np.random.default_rng(seed)
    parent = [-1] + [int(rng.integers(max(0, v - reach), v)) for v in range(1, num_vars)]
    children: dict[int, list[int]] = {v: [] for v in range(num_vars)}
    for v in range(1, num_vars):
        children[parent[v]].append(v)
    b = CircuitBuilder(seed=seed)
    xs = b.variables(num_vars, Domain.categorical(k))
    inputs = [b.input(x, units, Dist.make("categorical", k=k), name=f"in{x}") for x in xs]
    out: dict[int, str] = {}
    for v in reversed(range(num_vars)):
        if not children[v]:
            out[v] = inputs[v]
            continue
        p = b.product([inputs[v]] + [out[c] for c in children[v]], name=f"p{v}")
        out[v] = b.sum([p], 1 if v == 0 else units, name=f"s{v}")
    b.root(out[0])
    return b.build()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vars", type=int, default=784)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--spec", default=DEFAULT_PIPELINE)
    ap.add_argument("--no-verify", action="store_true", help="skip verification between passes")
    args = ap.parse_args()
    t0 = time.perf_counter()
    c = hclt(args.vars, args.units)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    out, report = run_pipeline(c, args.spec, verify_each=not args.no_verify)
    total = time.perf_counter() - t0
    print(f"hclt {args.vars} vars x {args.units} units: {len(c)} groups, built in {t_build:.2f} s")
    for r in report.records:
        print(f"  {r.spec}: {r.seconds:.3f} s")
    print(f"pipeline {args.spec}: {total:.2f} s (verification and statistics included)")
    print(report.format(timings=False), end="")


if __name__ == "__main__":
    main()
