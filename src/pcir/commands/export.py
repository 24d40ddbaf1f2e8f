"""pcir export MODEL --format F: write a circuit in another tool's format."""

from __future__ import annotations

import sys

NAME = "export"
HELP = "export a circuit (.pc, .pcir or an imported format) as jpc, psdd, spn or spflow"
ORDER = 31


def add_arguments(p):
    from ..frontend.formats import EXPORT_FORMATS

    p.add_argument("file", help="the circuit to export (.pc, .pcir, .jpc, .psdd, ...)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="the target format")
    p.add_argument(
        "-o",
        "--output",
        help="the file to write (a .gz name compresses; a psdd with a vtree also writes X.vtree); default: stdout",
    )


def run(args) -> int:
    from ..api import load
    from ..frontend.formats import export_circuit, export_file

    c = load(args.file)
    if args.output is None:
        sys.stdout.write(export_circuit(c, args.format))
        return 0
    written = export_file(c, args.format, args.output)
    print(f"{args.file} -> {', '.join(map(str, written))} ({args.format})")
    return 0
