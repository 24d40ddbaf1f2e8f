"""Parse + lower a loop-generated HCLT over 784 variables with 512 units (~1M PC nodes).

    PYTHONPATH=src python bench/bench_frontend.py [--vars 784] [--units 512] [--repeat 3]

Prints the seconds spent parsing and lowering the `.pc` text (best of --repeat), then verifying
the circuit, and the circuit's size. Lowering is one builder call per node group (a few thousand
here), never per PC node, so this takes seconds.
"""

from __future__ import annotations

import argparse
import time

SOURCE = """\
# HCLT over an MNIST-sized image: 784 pixels, a latent with M states per pixel, a binary-heap tree
N = {n}
M = {m}
parent = [-1] + [(v - 1) // 2 for v in 1..N]
var x[N]: categorical(256)

for v in 0..N {{
  L[v] = categorical(x[v], units=M)
}}
for v in reversed(0..N) {{
  kids = children(parent, v)
  Z[v] = L[v] if len(kids) == 0 else prod(L[v], [sum(Z[c], units=M) for c in kids])
}}
S = sum(Z[0])
root S
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vars", type=int, default=784)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from pcir.frontend import parse_pc
    from pcir.ir import verify

    text = SOURCE.format(n=args.vars, m=args.units)
    parse_pc("var x: binary\nroot sum(bernoulli(x, units=1))\n")  # build the (cached) lark parser first
    best = float("inf")
    circuit = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        circuit = parse_pc(text, filename="hclt784.pc")
        best = min(best, time.perf_counter() - t0)
    assert circuit is not None
    t0 = time.perf_counter()
    verify(circuit)
    t_verify = time.perf_counter() - t0
    s = circuit.stats()
    print(f"parse+lower: {best:.3f} s  (HCLT, {args.vars} variables, {args.units} units, best of {args.repeat})")
    print(f"verify:      {t_verify:.3f} s")
    print(
        f"circuit:     {s['groups']} groups, {s['nodes']:,} PC nodes, {s['edges']:,} edges, {s['params']:,} parameters"
    )


if __name__ == "__main__":
    main()
