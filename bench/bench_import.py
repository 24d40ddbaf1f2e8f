"""Import speed on a large synthetic PSDD-like circuit (about 60K nodes by default).

Writes a random PSDD (and its vtree) in the usual text format: a random vtree over ``--vars``
binary variables, two literals (and sometimes a T node) per variable, and at every internal vtree
node about ``nodes / (vars - 1)`` decision nodes of ``--elements`` elements each (primes from the
left child's nodes, subs from the right child's, so sub-circuits are shared). Then imports it and
prints the time, the number of node groups and the sizes; optionally verifies, evaluates a small
batch with the reference evaluator and exports it back.

    python bench/bench_import.py                      # ~60K nodes
    python bench/bench_import.py --nodes 200000 --keep /tmp/big.psdd
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def random_vtree(n: int, rng: np.random.Generator) -> tuple[list[str], dict[int, tuple], int]:
    """Vtree lines (file order), node table and root id for variables 1..n."""
    lines: list[str] = []
    nodes: dict[int, tuple] = {}
    frontier = []
    for v in range(1, n + 1):
        vid = len(nodes)
        nodes[vid] = ("L", v)
        lines.append(f"L {vid} {v}")
        frontier.append(vid)
    rng.shuffle(frontier)
    while len(frontier) > 1:
        # merge neighbours: a random mix of balanced and right-linear shapes
        i = int(rng.integers(len(frontier) - 1))
        a, b = frontier[i], frontier[i + 1]
        vid = len(nodes)
        nodes[vid] = ("I", a, b)
        lines.append(f"I {vid} {a} {b}")
        frontier[i : i + 2] = [vid]
    return lines, nodes, frontier[0]


def write_psdd(path: Path, n_vars: int, n_nodes: int, elements: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    vlines, vt, root = random_vtree(n_vars, rng)
    path.with_suffix(".vtree").write_text(f"vtree {len(vlines)}\n" + "\n".join(vlines) + "\n")
    per_internal = max(1, (n_nodes - 2 * n_vars) // max(1, n_vars - 1))
    out: list[str] = []
    at: dict[int, list[int]] = {}  # vtree node -> psdd node ids normalised for it
    nid = 0
    for vid in sorted(vt):
        t = vt[vid]
        if t[0] == "L":
            v = t[1]
            ids = []
            for lit in (v, -v):
                out.append(f"L {nid} {vid} {lit}")
                ids.append(nid)
                nid += 1
            if rng.random() < 0.5:
                out.append(f"T {nid} {vid} {v} {math.log(rng.uniform(0.05, 0.95))!r}")
                ids.append(nid)
                nid += 1
            at[vid] = ids
            continue
        left, right = at[t[1]], at[t[2]]
        count = 1 if vid == root else int(rng.integers(max(1, per_internal // 2), per_internal * 3 // 2 + 1))
        ids = []
        for _ in range(count):
            k = int(rng.integers(max(1, elements - 2), elements + 3))
            primes = rng.choice(left, size=min(k, len(left)), replace=False)
            w = rng.uniform(0.05, 1.0, size=len(primes))
            w = np.log(w / w.sum())
            elems = " ".join(
                f"{p} {right[int(rng.integers(len(right)))]} {float(lw)!r}" for p, lw in zip(primes, w, strict=True)
            )
            out.append(f"D {nid} {vid} {len(primes)} {elems}")
            ids.append(nid)
            nid += 1
        at[vid] = ids
    path.write_text(f"c synthetic PSDD-like circuit (seed {seed})\npsdd {nid}\n" + "\n".join(out) + "\n")
    return nid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=60_000, help="about this many PSDD nodes (lines)")
    ap.add_argument("--vars", type=int, default=256)
    ap.add_argument("--elements", type=int, default=4, help="mean elements per decision node")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="write the PSDD here (and X.vtree next to it) instead of a temp dir")
    ap.add_argument("--check", action="store_true", help="also verify, evaluate 16 samples and export back")
    ap.add_argument("--passes", action="store_true", help="also run the default pass pipeline and time it")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from pcir.frontend.formats import export_circuit, import_file

    tmp = None
    if args.keep:
        path = Path(args.keep)
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "synthetic.psdd"
    t0 = time.perf_counter()
    n = write_psdd(path, args.vars, args.nodes, args.elements, args.seed)
    t1 = time.perf_counter()
    c = import_file(path)
    t2 = time.perf_counter()
    s = c.stats()
    print(f"file: {path} ({n} psdd nodes, {path.stat().st_size / 1e6:.1f} MB, written in {t1 - t0:.2f} s)")
    print(
        f"import: {t2 - t1:.2f} s -> {s['groups']} groups, {s['nodes']} nodes, {s['edges']} edges, {s['params']} parameters"
    )
    if args.check:
        from pcir.ir import log_likelihood, verify

        t = time.perf_counter()
        verify(c)
        print(f"verify: {time.perf_counter() - t:.2f} s")
        x = np.random.default_rng(0).integers(0, 2, size=(16, c.num_vars))
        t = time.perf_counter()
        ll = log_likelihood(c, x)
        print(f"reference log-likelihood of 16 samples: {time.perf_counter() - t:.2f} s (mean {ll.mean():.3f})")
        t = time.perf_counter()
        text = export_circuit(c, "psdd")
        print(f"export psdd: {time.perf_counter() - t:.2f} s ({len(text) / 1e6:.1f} MB)")
    if args.passes:
        from pcir.passes.pipeline import DEFAULT_PIPELINE, run_pipeline

        t = time.perf_counter()
        out, _ = run_pipeline(c, DEFAULT_PIPELINE, timings=False)
        print(f"passes ({DEFAULT_PIPELINE}): {time.perf_counter() - t:.2f} s -> {len(out)} groups")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
