"""pcir compile FILE: lower a circuit to a kernel plan and Triton source; print either."""

from __future__ import annotations

import sys

NAME = "compile"
HELP = "compile a circuit (.pc/.pcir) for the Triton backend; print the kernel plan or the generated source"
ORDER = 30


def add_arguments(p):
    p.add_argument("file")
    p.add_argument(
        "-p", "--pipeline", default=None, help="pass pipeline spec to run first ('default' for the default pipeline)"
    )
    p.add_argument(
        "--emit", choices=["plan", "triton", "summary"], default="summary", help="what to print (default: summary)"
    )
    p.add_argument("--device", default=None, help="device to build the module on (cpu, cuda); checks that it loads")
    p.add_argument(
        "--precision", default="tf32x3", choices=["tf32", "tf32x3", "fp32", "bf16"], help="sum-layer matmul precision"
    )
    p.add_argument("--dump-dir", default=None, help="write the IR after each pass, the plan and the source here")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")


def run(args) -> int:
    from ..api import load
    from ..backend.codegen import generate
    from ..backend.plan import lower
    from ..ir.verify import verify

    circuit = verify(load(args.file))
    if args.pipeline:
        from ..passes import DEFAULT_PIPELINE, run_pipeline

        spec = DEFAULT_PIPELINE if args.pipeline == "default" else args.pipeline
        circuit, _ = run_pipeline(circuit, spec, dump_dir=args.dump_dir, timings=False)
    plan = lower(circuit)
    if args.device or args.dump_dir:
        from ..backend import compile as pc_compile

        pc_compile(circuit, device=args.device, precision=args.precision, dump_dir=args.dump_dir)
    if args.emit == "plan":
        text = plan.to_text()
    elif args.emit == "triton":
        text = generate(plan, precision=args.precision)
    else:
        s = plan.stats()
        text = f"{args.file}: " + ", ".join(f"{k}={v}" for k, v in s.items()) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
