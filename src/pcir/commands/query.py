"""pcir query ll|marginal|conditional|sample|map MODEL ...: queries with the reference evaluator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

NAME = "query"
HELP = "answer queries on a circuit: ll, marginal, conditional, sample, map"
DESCRIPTION = """Answer queries on a circuit (reference evaluator: numpy, float64).

Data files: comma-separated rows (.data, .csv, .txt; '?', 'nan' or an empty field is a missing
value) or .npy (NaN is missing). Outputs are comma-separated text, on stdout or in -o FILE
(.npy writes the array).

  pcir query ll model.pcir --data test.data              one log-likelihood per row
  pcir query marginal model.pcir --data partial.csv      missing entries summed out
  pcir query conditional model.pcir --data partial.csv --targets 3,5
                                                         row,var,P(x=0),P(x=1),... per target
  pcir query sample model.pcir -n 10 --seed 0            unconditional samples
  pcir query sample model.pcir --evidence partial.csv    fill in the missing entries by sampling
  pcir query map model.pcir --data partial.csv           most probable completion of each row

--compiled (or --device DEV) answers with the compiled model instead (pcir.compile: the kernels,
float32, on DEV or the default device), the same queries with the same output format."""
ORDER = 40
KINDS = ("ll", "marginal", "conditional", "sample", "map")


def load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 data [N, V], bool missing [N, V]) from comma-separated text or .npy."""
    from ..ir.diagnostics import DataError

    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file")
    if p.suffix == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: not a numeric .npy array ({e})") from None
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise DataError(f"{path}: expected a 2-D array [rows, variables], got shape {x.shape}")
        return x, np.isnan(x)
    rows: list[list[float]] = []
    width = None
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise DataError(f"{path}:{lineno}: {len(fields)} values, expected {width} as in the first row")
        row = []
        for col, f in enumerate(fields):
            if f in ("", "?", "nan", "NaN", "NA"):
                row.append(np.nan)
                continue
            try:
                row.append(float(f))
            except ValueError:
                raise DataError(f"{path}:{lineno}: column {col}: '{f}' is not a number") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no data rows")
    x = np.array(rows, dtype=np.float64)
    return x, np.isnan(x)


def add_arguments(p):
    p.add_argument("kind", choices=KINDS, metavar="QUERY", help="one of: " + ", ".join(KINDS))
    p.add_argument("model", help="circuit file (.pcir, .pc, or an importable format)")
    p.add_argument("--data", help="data rows (ll, marginal, conditional, map)")
    p.add_argument("--targets", help="conditional: target variables (indices or names, comma-separated)")
    p.add_argument("--method", default="auto", choices=["auto", "flows", "enumerate"], help="conditional: algorithm")
    p.add_argument("-n", "--num-samples", type=int, help="sample: how many (default 1 per evidence row, else 1)")
    p.add_argument("--evidence", help="sample: rows of evidence; missing entries are sampled")
    p.add_argument("--seed", type=int, default=0, help="sample: random seed")
    p.add_argument("-o", "--output", help="write the result here (.npy or text)")
    p.add_argument(
        "--checkpoint", help="answer with the parameters of this checkpoint (a run folder or checkpoint folder)"
    )
    p.add_argument("--which", choices=["best", "last"], default="best", help="with --checkpoint on a run folder")
    p.add_argument("--pipeline", help="the pass pipeline the checkpoint was trained with (pcir train --pipeline)")
    p.add_argument("--compiled", action="store_true", help="answer with the compiled model (kernels, float32)")
    p.add_argument("--device", help="with the compiled model on this device (cpu, cuda, cuda:1; implies --compiled)")


def _fmt(v: float) -> str:
    if np.isnan(v):
        return "nan"
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _emit(array: np.ndarray, output: str | None, header: str | None = None) -> None:
    if output and output.endswith(".npy"):
        np.save(output, array)
        return
    lines = [] if header is None else [header]
    a = np.atleast_2d(array) if array.ndim > 1 else array[:, None]
    lines.extend(",".join(_fmt(v) for v in row) for row in a)
    text = "\n".join(lines) + "\n"
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)


def run(args) -> int:
    from ..api import load
    from ..ir import queries
    from ..ir.diagnostics import PcirError

    c = load(args.model)
    if args.checkpoint or args.pipeline:
        from ..checkpoint import load_checkpoint
        from ..ir.verify import verify
        from ..train import apply_pipeline

        c = apply_pipeline(verify(c), args.pipeline)
        if args.checkpoint:
            c = load_checkpoint(args.checkpoint, args.which, c).apply(c)
    if args.compiled or args.device:
        queries = _CompiledQueries(c, args.device)  # type: ignore[assignment]
    if args.kind == "sample":
        if args.evidence:
            ev, miss = load_data(args.evidence)
            n = args.num_samples
            if n is not None and ev.shape[0] == 1:
                ev, miss = np.repeat(ev, n, axis=0), np.repeat(miss, n, axis=0)
                n = None
            out = queries.sample(c, n, evidence=ev, missing=miss, seed=args.seed)
        else:
            out = queries.sample(c, args.num_samples or 1, seed=args.seed)
        _emit(out, args.output)
        return 0
    if args.kind == "map" and not args.data:
        _emit(queries.map_assignment(c), args.output)
        return 0
    if not args.data:
        raise PcirError(f"pcir query {args.kind} needs --data FILE")
    x, miss = load_data(args.data)
    if args.kind in ("ll", "marginal"):
        if args.kind == "ll" and miss.any():
            r, col = map(int, next(zip(*miss.nonzero(), strict=True)))
            raise PcirError(
                f"{args.data}: missing value at row {r}, column {col}",
                hint="use 'pcir query marginal' to sum missing values out",
            )
        _emit(queries.log_likelihood(c, x, miss), args.output)
        return 0
    if args.kind == "map":
        _emit(queries.map_assignment(c, x, miss), args.output)
        return 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    res = queries.conditional(c, x, miss, targets, method=args.method)
    if args.output and args.output.endswith(".npy"):
        kmax = max(v.shape[1] for v in res.values())
        arr = np.full((x.shape[0], len(res), kmax), np.nan)
        for j, v in enumerate(res):
            arr[:, j, : res[v].shape[1]] = res[v]
        np.save(args.output, arr)
        return 0
    kmax = max(v.shape[1] for v in res.values())
    rows = []
    for b in range(x.shape[0]):
        for v, probs in res.items():
            vals = [_fmt(b), c.variables[v].name] + [repr(float(p)) for p in probs[b]] + [""] * (kmax - probs.shape[1])
            rows.append(",".join(vals))
    text = "row,var," + ",".join(f"P(x={a})" for a in range(kmax)) + "\n" + "\n".join(rows) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


class _CompiledQueries:
    """The reference query functions' signatures, answered by the compiled model (numpy out)."""

    def __init__(self, circuit, device: str | None):
        from ..backend import compile as compile_circuit

        # fp32 products in the sum layers: queries want accuracy more than throughput
        self.model = compile_circuit(circuit, device=device, precision="fp32")

    @staticmethod
    def _np(t) -> np.ndarray:
        return t.detach().cpu().double().numpy()

    def log_likelihood(self, c, x, missing=None) -> np.ndarray:
        return self._np(self.model.marginal(x, missing))

    def sample(self, c, n=None, evidence=None, missing=None, seed=0) -> np.ndarray:
        return self._np(self.model.sample(n, evidence, missing, seed))

    def map_assignment(self, c, x=None, missing=None) -> np.ndarray:
        return self._np(self.model.map(x, missing))

    def conditional(self, c, x, missing=None, targets=None, method="auto") -> dict[int, np.ndarray]:
        return {v: self._np(p) for v, p in self.model.conditional(x, missing, targets, method=method).items()}
