"""pcir eval MODEL --data DATA [--checkpoint DIR]: mean log-likelihoods of the data splits."""

from __future__ import annotations

import json

from .train import add_data_arguments, add_device_arguments

NAME = "eval"
HELP = "mean log-likelihood (and bits/dim for images) of a model or a checkpoint on data"
DESCRIPTION = """Evaluate MODEL on the splits of DATA: mean log-likelihood per sample (natural log) and,
for image data, bits per dimension. With --checkpoint, the parameters come from a checkpoint
(a run folder, whose best checkpoint is used, or one checkpoint folder)."""
ORDER = 31


def add_arguments(p):
    p.add_argument("model", help="the circuit file the checkpoint was trained from")
    add_data_arguments(p)
    p.add_argument("--checkpoint", help="a run folder (uses its best checkpoint) or a checkpoint folder")
    p.add_argument(
        "--which", choices=["best", "last"], default="best", help="which checkpoint of a run folder (default best)"
    )
    p.add_argument(
        "--split", choices=["all", "train", "valid", "test"], default="all", help="which split(s) (default all)"
    )
    p.add_argument("--batch-size", type=int, default=512, help="samples per batch (default 512)")
    add_device_arguments(p)
    p.add_argument(
        "--reference",
        action="store_true",
        help="use the reference evaluator (numpy, slow) instead of the compiled model",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    import numpy as np

    from ..api import load
    from ..checkpoint import load_checkpoint
    from ..data import SPLITS, check_table, load_dataset
    from ..ir.diagnostics import DataError
    from ..ir.verify import verify
    from ..train import (
        DeviceSplit,
        bits_per_dim,
        check_device,
        compile_model,
        default_device,
        device_name,
        evaluate,
        load_params,
    )

    circuit = verify(load(args.model))
    dataset = load_dataset(args.data)
    splits = [s for s in SPLITS if dataset.has(s)] if args.split == "all" else [args.split]
    for s in splits:
        if not dataset.has(s):
            raise DataError(f"dataset '{dataset.name}' has no {s} split (it has: {', '.join(dataset.splits)})")
    results: dict[str, dict] = {}
    if args.reference:
        from ..ir.evaluator import log_likelihood

        device = "reference"
        if args.checkpoint:
            circuit = load_checkpoint(args.checkpoint, args.which, circuit).apply(circuit)
        for s in splits:
            x, miss = check_table(dataset.splits[s], circuit, args.allow_missing)
            lls = np.concatenate(
                [
                    log_likelihood(
                        circuit, x[i : i + args.batch_size], None if miss is None else miss[i : i + args.batch_size]
                    )
                    for i in range(0, len(x), args.batch_size)
                ]
            )
            results[s] = {"mean_ll": float(lls.mean()), "n": int(len(lls))}
    else:
        device = check_device(args.device or default_device())
        model = compile_model(circuit, device, **({"pipeline": args.pipeline} if args.pipeline else {}))
        if args.checkpoint:
            load_params(model, load_checkpoint(args.checkpoint, args.which, model.to_circuit()).params)
        discrete = all(v.domain.is_discrete for v in circuit.variables)
        for s in splits:
            x, miss = check_table(dataset.splits[s], circuit, args.allow_missing)
            lls = evaluate(model, DeviceSplit(x, miss, discrete, model.device), args.batch_size)
            results[s] = {"mean_ll": float(lls.mean()), "n": int(len(lls))}
    for r in results.values():
        if dataset.image_shape is not None:
            r["bpd"] = bits_per_dim(r["mean_ll"], circuit.num_vars)
    if args.json:
        dev = {"device": device, "device_name": device_name(device) if device != "reference" else "numpy"}
        print(
            json.dumps(
                {"model": args.model, "data": dataset.name, "checkpoint": args.checkpoint, **dev, "splits": results},
                indent=1,
            )
        )
        return 0
    src = f" with {args.checkpoint} ({args.which})" if args.checkpoint else ""
    print(f"{args.model}{src} on {dataset.name} [{device}]")
    for s, r in results.items():
        extra = f"  {r['bpd']:.4f} bits/dim" if "bpd" in r else ""
        print(f"{s:<6} {r['n']:>7} samples  mean log-likelihood {r['mean_ll']:.4f}{extra}")
    return 0
