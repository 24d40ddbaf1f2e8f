"""pcir gen KIND ...: generate a structure (HCLT, PD, RAT-SPN, HMM) and write it."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "gen"
HELP = "generate a circuit structure (hclt, pd, rat-spn, hmm) as .pcir or .pc"
DESCRIPTION = """Generate a circuit structure and write it as .pcir (the IR text) or .pc (the language).

Examples:
  pcir gen hclt --data train.data --latents 32 -o model.pc
  pcir gen pd --height 28 --width 28 --latents 32 --split-intervals 4,4 -o pd.pcir
  pcir gen rat-spn --vars 784 --latents 32 --depth 5 --repetitions 16 -o rat.pcir
  pcir gen hmm --length 32 --states 64 --vocab 33279 -o hmm.pcir

Parameters are written as seeded initialisations (init(random, seed=...)), not values, so large
structures stay small on disk; `pcir ir --materialize` prints concrete values."""
ORDER = 30


def _ints(text: str, what: str) -> list[int]:
    from ..ir.diagnostics import PcirError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PcirError(f"{what} must be comma-separated integers, got '{text}'") from None


def add_arguments(p):
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    def common(sp, dist_default: str | None):
        sp.add_argument("-o", "--output", help="write here (.pcir or .pc); default: .pcir text on stdout")
        sp.add_argument("--seed", type=int, default=0, help="seed of the parameter initialisation and random choices")
        sp.add_argument(
            "--input-dist",
            default=dist_default,
            help="leaf family, e.g. categorical, bernoulli, binomial, discrete_logistic(n=256), gaussian",
        )

    h = sub.add_parser("hclt", help="hidden Chow-Liu tree learnt from data")
    h.add_argument("--data", required=True, help="training data: comma-separated rows (.data/.csv/.txt) or .npy")
    h.add_argument("--latents", type=int, required=True, help="latent states per variable")
    h.add_argument("--tie-inputs", action="store_true", help="share one parameter array among all input groups")
    h.add_argument("--mi-estimator", default="auto", choices=["auto", "exact", "soft"])
    h.add_argument("--max-rows", type=int, help="estimate mutual information on at most this many rows")
    h.add_argument(
        "--mi-pseudocount",
        type=float,
        default=0.0,
        help="Laplace smoothing of the pairwise counts behind the tree (exact estimator; default 0)",
    )
    h.add_argument("--device", help="cpu or cuda for the mutual information (default: cuda when available)")
    common(h, None)

    d = sub.add_parser("pd", help="Poon-Domingos structure on a grid")
    d.add_argument("--height", type=int, required=True)
    d.add_argument("--width", type=int, required=True)
    d.add_argument("--channels", type=int, help="a third grid axis (e.g. 3 for RGB)")
    d.add_argument("--latents", type=int, required=True)
    d.add_argument("--split-intervals", default="4,4", help="distance between split points per axis (default 4,4)")
    d.add_argument("--split-points", help="explicit split points: one comma list per axis, axes separated by ';'")
    d.add_argument("--max-split-depth", type=int)
    d.add_argument("--max-prod-block-conns", type=int, default=4)
    d.add_argument("--block-size", type=int)
    d.add_argument("--categories", type=int, default=256, help="values per variable (default 256)")
    common(d, None)

    r = sub.add_parser("rat-spn", help="random tensorised SPN")
    r.add_argument("--vars", type=int, required=True, help="number of variables")
    r.add_argument("--latents", type=int, required=True)
    r.add_argument("--depth", type=int, required=True)
    r.add_argument("--repetitions", type=int, required=True)
    r.add_argument("--pieces", type=int, default=2, help="parts per split (default 2)")
    r.add_argument("--categories", type=int, default=256, help="values per variable (default 256)")
    common(r, None)

    m = sub.add_parser("hmm", help="hidden Markov model")
    m.add_argument("--length", type=int, required=True, help="sequence length")
    m.add_argument("--states", type=int, required=True, help="hidden states")
    m.add_argument("--vocab", type=int, required=True, help="vocabulary size")
    m.add_argument("--inhomogeneous", action="store_true", help="separate parameters for every step")
    common(m, None)


def _domain(args):
    """categorical(--categories) unless the leaf family fixes the domain itself."""
    from ..ir.distributions import Domain

    fam = (args.input_dist or "categorical").split("(")[0].strip()
    return None if fam in ("gaussian", "bernoulli") else Domain.categorical(args.categories)


def build(args):
    """The circuit the arguments describe."""
    from .. import structures as st

    if args.kind == "hclt":
        from .query import load_data

        x, miss = load_data(args.data)
        if miss.any():
            from ..ir.diagnostics import DataError

            r, c = map(int, next(zip(*miss.nonzero(), strict=True)))
            raise DataError(f"{args.data}: missing value at row {r}, column {c}: a Chow-Liu tree needs complete data")
        return st.hclt(
            x,
            args.latents,
            input_dist=args.input_dist,
            tie_inputs=args.tie_inputs,
            seed=args.seed,
            mi_estimator=args.mi_estimator,
            max_rows=args.max_rows,
            device=args.device,
            mi_pseudocount=args.mi_pseudocount,
        )
    if args.kind == "pd":
        shape = (args.height, args.width) + ((args.channels,) if args.channels else ())
        points = None
        if args.split_points:
            points = [_ints(axis, "--split-points") for axis in args.split_points.split(";")]
        intervals = _ints(args.split_intervals, "--split-intervals")
        if len(intervals) == 1:
            intervals = intervals * len(shape)
        elif args.channels and len(intervals) == 2:
            intervals = intervals + [args.channels]
        return st.pd(
            data_shape=shape,
            num_latents=args.latents,
            split_intervals=tuple(intervals),
            split_points=points,
            max_split_depth=args.max_split_depth,
            max_prod_block_conns=args.max_prod_block_conns,
            block_size=args.block_size,
            input_dist=args.input_dist,
            domain=_domain(args),
            seed=args.seed,
        )
    if args.kind == "rat-spn":
        return st.rat_spn(
            args.vars,
            args.latents,
            args.depth,
            args.repetitions,
            num_pieces=args.pieces,
            input_dist=args.input_dist,
            domain=_domain(args),
            seed=args.seed,
        )
    return st.hmm(
        args.length,
        args.states,
        args.vocab,
        homogeneous=not args.inhomogeneous,
        input_dist=args.input_dist,
        seed=args.seed,
    )


def write(circuit, output: str | None) -> None:
    """Write ``circuit`` as .pcir (or .pc through the frontend's emitter); stdout without a path."""
    from ..ir.diagnostics import PcirError
    from ..ir.printer import print_ir

    if output is None:
        sys.stdout.write(print_ir(circuit))
        return
    path = Path(output)
    if path.suffix == ".pc":
        try:
            from ..frontend import save_pc  # type: ignore[attr-defined]

            save_pc(circuit, path)  # large arrays go to a .npz beside the .pc
        except ImportError:
            raise PcirError(
                f"{output}: writing .pc needs pcir.frontend.save_pc (the .pc emitter), which this installation lacks",
                hint="write .pcir instead (same content, the IR text); pcir check and pcir ir read it",
            ) from None
        return
    if path.suffix != ".pcir":
        raise PcirError(f"{output}: unknown output format '{path.suffix}' (use .pcir or .pc)")
    path.write_text(print_ir(circuit))


def run(args) -> int:
    c = build(args)
    write(c, args.output)
    s = c.stats()
    where = args.output or "stdout"
    print(
        f"{args.kind}: {c.num_vars} variables, {s['groups']} groups, {s['nodes']} nodes, {s['edges']} edges -> {where}",
        file=sys.stderr,
    )
    return 0
