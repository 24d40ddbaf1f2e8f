"""pcir viz FILE -o out.svg|out.dot|out.png: draw the IR (after an optional pipeline)."""

from __future__ import annotations

NAME = "viz"
HELP = "draw a circuit's IR as a graph (DOT always; SVG/PNG with graphviz installed)"
DESCRIPTION = (
    "Write the circuit's groups as a graph: kind, units, scope, block size, layer and fusion in each box. "
    "-p runs a pass pipeline first, so you can see what the passes did. .dot needs nothing; .svg/.png call "
    "Graphviz's 'dot' (Debian: apt-get install graphviz)."
)
ORDER = 21

FORMATS = ("dot", "svg", "png", "pdf")


def add_arguments(p):
    p.add_argument("file", help="circuit file (.pc, .pcir, ...)")
    p.add_argument("-p", "--passes", default="", metavar="SPEC", help="run this pipeline first (default: none)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="out.dot, out.svg, out.png or out.pdf")


def run(args) -> int:
    import shutil
    import subprocess
    from pathlib import Path

    from ..api import load
    from ..ir.diagnostics import PcirError
    from ..passes import run_pipeline
    from ..passes.dot import to_dot

    out_path = Path(args.output)
    fmt = out_path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise PcirError(f"{args.output}: unknown output format '.{fmt}' (use {', '.join('.' + f for f in FORMATS)})")
    circuit = load(args.file)
    if args.passes:
        circuit, _ = run_pipeline(circuit, args.passes)
    title = f"{args.file}" + (f" after {args.passes}" if args.passes else "")
    text = to_dot(circuit, title)
    if fmt == "dot":
        out_path.write_text(text)
        return 0
    dot = shutil.which("dot")
    if dot is None:
        raise PcirError(
            f"cannot write {args.output}: Graphviz's 'dot' is not installed",
            hint="install graphviz (Debian/Ubuntu: apt-get install graphviz), or write a .dot file",
        )
    proc = subprocess.run([dot, f"-T{fmt}", "-o", str(out_path)], input=text, text=True, capture_output=True)
    if proc.returncode != 0:
        raise PcirError(f"dot failed writing {args.output}: {proc.stderr.strip()}")
    return 0
