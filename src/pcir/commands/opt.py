"""pcir opt FILE -p SPEC: run a pass pipeline and print the resulting IR."""

from __future__ import annotations

import sys

NAME = "opt"
HELP = "run a pass pipeline on a circuit (.pc or .pcir) and print the optimised IR"
DESCRIPTION = (
    "Run a pass pipeline (default: the compile pipeline) on a circuit and print the resulting .pcir text, "
    "which can be fed back in. Pipelines are specs like 'collapse-nodes,partition-blocks{max-block=64},group-layers'; "
    "--list-passes shows every pass and its options."
)
ORDER = 20


def add_arguments(p):
    from ..passes import DEFAULT_PIPELINE

    p.add_argument("file", nargs="?", help="circuit file (.pc, .pcir, ...)")
    p.add_argument(
        "-p", "--passes", default=DEFAULT_PIPELINE, metavar="SPEC", help=f"pipeline spec (default: {DEFAULT_PIPELINE})"
    )
    p.add_argument(
        "--print-after-all", action="store_true", help="print the IR after every pass (stderr, arrays abbreviated)"
    )
    p.add_argument("--dump-dir", metavar="D", help="write 000-input.pcir, 001-<pass>.pcir, ... to directory D")
    p.add_argument("--stats", action="store_true", help="print statistics and timings of every pass (stderr)")
    p.add_argument("--no-verify", action="store_true", help="do not verify the circuit between passes")
    p.add_argument("--summarize", action="store_true", help="abbreviate large arrays in the output (not parseable)")
    p.add_argument("--list-passes", action="store_true", help="list the passes and their options, then exit")
    p.add_argument("-o", "--output", metavar="OUT", help="write the IR to OUT instead of stdout")


def run(args) -> int:
    from ..ir.diagnostics import PcirError
    from ..ir.printer import print_ir
    from ..passes import describe_passes, run_pipeline

    if args.list_passes:
        sys.stdout.write(describe_passes())
        return 0
    if not args.file:
        raise PcirError("pcir opt: a circuit file is required (or --list-passes)")
    from ..api import load

    circuit = load(args.file)
    out, report = run_pipeline(
        circuit,
        args.passes,
        print_after_all=args.print_after_all,
        dump_dir=args.dump_dir,
        verify_each=not args.no_verify,
        stream=sys.stderr,
    )
    text = print_ir(out, summarize=args.summarize)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if args.stats:
        sys.stderr.write(report.format())
    return 0
