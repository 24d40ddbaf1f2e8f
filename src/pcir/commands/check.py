"""pcir check FILE: parse and verify."""

from __future__ import annotations

NAME = "check"
HELP = "parse and verify a circuit file (.pc or .pcir); exit 1 with a diagnostic on error"
ORDER = 10


def add_arguments(p):
    p.add_argument("file")
    p.add_argument("--no-smooth", action="store_true", help="waive the smoothness rule")
    p.add_argument("--no-decomposable", action="store_true", help="waive the decomposability rule")


def run(args) -> int:
    from ..api import load
    from ..ir.verify import verify

    c = load(args.file)
    verify(c, smooth=not args.no_smooth, decomposable=not args.no_decomposable)
    s = c.stats()
    print(
        f"{args.file}: ok ({c.num_vars} variables, {s['groups']} groups, {s['nodes']} nodes, {s['edges']} edges, {s['params']} parameters)"
    )
    return 0
