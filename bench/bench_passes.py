"""Benchmark: the default pass pipeline on an HCLT with 784 variables x 512 units (lazy params).

    PYTHONPATH=src python bench/bench_passes.py [--vars 784] [--units 512] [--spec SPEC]

Prints one line per pass (seconds) and the statistics table. The circuit is built with lazily
initialised parameters, so building it costs nothing and the passes must not materialise them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pcir.ir import Circuit
from pcir.passes import DEFAULT_PIPELINE, run_pipeline
from pcir.structures.hclt import hclt


def random_tree(num_vars: int, seed: int = 0, reach: int = 30) -> list[tuple[int, int]]:
    """A random tree (each variable's parent among the ``reach`` before it): Chow-Liu-like depth."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(max(0, v - reach), v)), v) for v in range(1, num_vars)]


def build(num_vars: int, units: int) -> Circuit:
    return hclt(num_latents=units, tree=random_tree(num_vars), num_vars=num_vars, input_dist="categorical(k=256)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vars", type=int, default=784)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--spec", default=DEFAULT_PIPELINE)
    ap.add_argument("--no-verify", action="store_true", help="skip verification between passes")
    args = ap.parse_args()
    t0 = time.perf_counter()
    c = build(args.vars, args.units)
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
