"""pcir sample MODEL --checkpoint DIR -n 16 [-o out.png|.npy|.csv]: draw samples."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

NAME = "sample"
HELP = "draw samples from a model or a checkpoint (CSV on stdout, or -o FILE.png/.npy/.csv)"
DESCRIPTION = """Draw N samples from MODEL (with the parameters of --checkpoint when given). Without -o,
the samples are printed as comma-separated rows. -o FILE.png writes image data as a grid (the image
shape comes from --image-shape HxW, the --data set, or a square number of variables)."""
ORDER = 32


def add_arguments(p):
    p.add_argument("model", help="the circuit file the checkpoint was trained from")
    p.add_argument("--checkpoint", help="a run folder (uses its best checkpoint) or a checkpoint folder")
    p.add_argument(
        "--which", choices=["best", "last"], default="best", help="which checkpoint of a run folder (default best)"
    )
    p.add_argument("-n", "--num-samples", type=int, default=16, help="how many samples (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", help="write to FILE.png (image grid), FILE.npy or FILE.csv")
    p.add_argument("--data", help="the dataset, to take the image shape from (for -o FILE.png)")
    p.add_argument("--image-shape", help="image shape as HxW or HxWx3 (for -o FILE.png)")
    p.add_argument("--pipeline", help="the pass pipeline the checkpoint was trained with (pcir train --pipeline)")
    p.add_argument(
        "--device",
        help="sample with the compiled model on this device (cpu, cuda[:N]); default: the numpy reference sampler",
    )


def find_sampler():
    """The sampling query, from whichever layer provides it; None when none is installed."""
    try:
        from ..ir import queries  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(queries, "sample", None)


def draw(circuit, n: int, seed: int):
    """``n`` samples (numpy [n, num_vars]) from ``circuit`` with ``seed``."""
    import numpy as np

    from ..ir.diagnostics import BackendError

    fn = find_sampler()
    if fn is None:
        raise BackendError("sampling is not available in this install (pcir.ir.queries.sample is missing)")
    params = inspect.signature(fn).parameters
    kw = {}
    if "rng" in params:
        kw["rng"] = np.random.default_rng(seed)
    elif "seed" in params:
        kw["seed"] = seed
    return np.asarray(fn(circuit, n, **kw))


def _parse_shape(text: str) -> tuple[int, ...]:
    from ..ir.diagnostics import PcirError

    try:
        shape = tuple(int(t) for t in text.lower().split("x"))
    except ValueError:
        raise PcirError(f"--image-shape '{text}': expected HxW or HxWx3, e.g. 28x28") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise PcirError(f"--image-shape '{text}': expected HxW or HxWx3, e.g. 28x28")
    return shape


def run(args) -> int:
    import numpy as np

    from ..api import load
    from ..checkpoint import load_checkpoint
    from ..data.png import image_grid, write_png
    from ..ir.diagnostics import PcirError
    from ..ir.verify import verify

    if args.num_samples < 1:
        raise PcirError("-n must be at least 1")
    from ..train import apply_pipeline

    circuit = apply_pipeline(verify(load(args.model)), args.pipeline)
    if args.checkpoint:
        circuit = load_checkpoint(args.checkpoint, args.which, circuit).apply(circuit)
    if args.device:
        from ..backend import compile as compile_circuit

        model = compile_circuit(circuit, device=args.device)
        xs = model.sample(args.num_samples, seed=args.seed).detach().cpu().numpy()
    else:
        xs = draw(circuit, args.num_samples, args.seed)
    discrete = all(v.domain.is_discrete for v in circuit.variables)
    if discrete:
        xs = xs.round().astype(np.int64)
    out = Path(args.output) if args.output else None
    if out is None or out.suffix == ".csv":
        fmt = "%d" if discrete else "%.6g"
        header = ",".join(v.name for v in circuit.variables)
        if out is None:
            np.savetxt(sys.stdout, xs, fmt=fmt, delimiter=",", header=header, comments="")
        else:
            np.savetxt(out, xs, fmt=fmt, delimiter=",", header=header, comments="")
    elif out.suffix == ".npy":
        np.save(out, xs)
    elif out.suffix == ".png":
        shape = _image_shape(args, circuit.num_vars)
        max_value = (
            max((v.domain.k - 1 for v in circuit.variables if v.domain.is_discrete), default=1)
            if discrete
            else float(np.max(xs))
        )
        write_png(out, image_grid(xs, shape, max_value))
    else:
        raise PcirError(f"-o {out}: unknown output type (use .png, .npy or .csv)")
    if out is not None:
        print(f"wrote {args.num_samples} samples to {out}")
    return 0


def _image_shape(args, num_vars: int) -> tuple[int, ...]:
    import math

    from ..ir.diagnostics import PcirError

    shape: tuple[int, ...] | None = None
    if args.image_shape:
        shape = _parse_shape(args.image_shape)
    elif args.data:
        from ..data import load_dataset

        shape = load_dataset(args.data).image_shape
    if shape is None:
        side = math.isqrt(num_vars)
        if side * side != num_vars:
            raise PcirError(f"cannot lay out {num_vars} variables as an image", hint="pass --image-shape HxW")
        shape = (side, side)
    if math.prod(shape) != num_vars:
        raise PcirError(
            f"image shape {'x'.join(map(str, shape))} has {math.prod(shape)} pixels, the model has {num_vars} variables"
        )
    return shape
