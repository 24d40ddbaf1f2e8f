"""pcir import FILE: read another tool's circuit file (jpc, psdd, spn, spflow) into pcir."""

from __future__ import annotations

import sys

NAME = "import"
HELP = "import a circuit from another tool's format (jpc, psdd[+vtree], spn, spflow) as .pcir or .pc"
ORDER = 30


def add_arguments(p):
    from ..frontend.formats import FORMATS

    p.add_argument("file", help="the circuit file (gzipped or not)")
    p.add_argument("--format", choices=FORMATS, help="the file's format (default: from its name or first line)")
    p.add_argument("--vtree", help="a PSDD's vtree file (default: X.vtree next to X.psdd, when it exists)")
    p.add_argument("-o", "--output", help="write to this .pcir or .pc file (default: .pcir text on stdout)")


def run(args) -> int:
    from ..frontend.formats import import_file
    from ..frontend.formats._common import FormatError, write_atomic
    from ..ir.printer import print_ir
    from ..ir.verify import verify

    c = import_file(args.file, args.format, vtree=args.vtree)
    verify(c)
    out = args.output
    if out is None:
        sys.stdout.write(print_ir(c))
        return 0
    if out.endswith(".pcir"):
        text = print_ir(c)
    elif out.endswith(".pc"):
        try:
            from ..frontend import emit_pc  # type: ignore[attr-defined]

            text = emit_pc(c)
        except ImportError:  # the .pc emitter (pcir.frontend.emit) is not in this build yet
            raise FormatError(
                "writing .pc needs pcir.frontend.emit_pc, which this build does not have yet",
                hint="write .pcir instead (-o model.pcir); every command reads it",
            ) from None
    else:
        raise FormatError(f"{out}: the output must end in .pcir or .pc")
    write_atomic(out, text)
    s = c.stats()
    print(f"{args.file} -> {out}: {c.num_vars} variables, {s['groups']} groups, {s['nodes']} nodes, {s['edges']} edges")
    return 0
