"""pcir ir FILE: print the canonical IR."""

from __future__ import annotations

import sys

NAME = "ir"
HELP = "print the canonical IR (.pcir text) of a circuit file"
ORDER = 11


def add_arguments(p):
    p.add_argument("file")
    p.add_argument("--summarize", action="store_true", help="abbreviate large arrays (not parseable)")
    p.add_argument("--materialize", action="store_true", help="print concrete values for seeded parameters")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")


def run(args) -> int:
    from ..api import load
    from ..ir.printer import print_ir

    c = load(args.file)
    if args.materialize:
        c = c.materialized()
    text = print_ir(c, summarize=args.summarize)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
