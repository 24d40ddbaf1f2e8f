"""pcir train MODEL --data DATA: EM training with validation, early stopping and checkpoints."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

NAME = "train"
HELP = "train a circuit on data with EM (checkpoints, early stopping, report and learning curves)"
DESCRIPTION = """Train MODEL (.pc, .pcir, ...) on DATA with mini-batch or full-batch EM.

Every epoch: the validation log-likelihood, a checkpoint in OUT (OUT/last; OUT/best when validation
improved), early stopping after --patience epochs without improvement. After a kill, --resume
continues from OUT/last. At the end the best parameters are evaluated on every split and written to
OUT/report.json (with bits per dimension for image data) and OUT/curves.png.

DATA: a shipped name (nltcs), fashion-mnist, a folder or path prefix dir/NAME with
NAME.{train,valid,test}.data, a .npz with train/valid/test arrays, or a single file (.npy, .csv,
.data, idx) used for training only."""
ORDER = 30


def add_data_arguments(p, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="dataset name or path (see pcir train --help)")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="marginalise missing values (NaN, '?', empty fields) instead of rejecting them",
    )


def add_device_arguments(p) -> None:
    p.add_argument("--device", help="cpu or cuda[:N] (default: $PCIR_DEVICE, else cuda when available)")
    p.add_argument("--pipeline", help="pass pipeline run before compiling (default: the backend's choice)")


def add_arguments(p):
    p.add_argument("model", help="the circuit file (.pc, .pcir or an imported format)")
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=20, help="maximum number of epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=512, help="samples per batch (default 512)")
    p.add_argument(
        "--em",
        choices=["mini", "full"],
        default="mini",
        help="mini-batch EM (an update per batch) or full-batch EM (one per epoch)",
    )
    p.add_argument(
        "--full-epochs",
        type=int,
        default=0,
        help="after --epochs of mini-batch EM, this many epochs of full-batch EM (default 0)",
    )
    p.add_argument("--step-size", type=float, help="EM step size in (0, 1] (default 0.1 for mini, 1.0 for full)")
    p.add_argument(
        "--step-size-final", type=float, help="mini-batch EM: anneal the step size linearly to this by the last epoch"
    )
    p.add_argument("--pseudocount", type=float, default=0.1, help="EM pseudocount (Laplace smoothing, default 0.1)")
    p.add_argument(
        "--soften",
        type=float,
        default=1.0,
        metavar="BETA",
        help="data softening: EM sees each observed discrete value as soft evidence, BETA on the value "
        "seen and 1 - BETA spread over the others (default 1: off; e.g. 0.999)",
    )
    p.add_argument(
        "--entropy",
        type=float,
        default=0.0,
        metavar="TAU",
        help="entropy regularisation: every EM step maximises sum p log theta + TAU * H(theta) for each "
        "sum node and categorical/bernoulli leaf (default 0: off; e.g. 0.001 to 0.1)",
    )
    p.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mini-batch EM: leave out each epoch's last batch when it is short, a different rest every "
        "epoch (default; --no-drop-last gives it a full step like the others)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without validation improvement (0: never; default 5)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the batch shuffles (default 0)")
    p.add_argument("--eval-batch-size", type=int, help="samples per batch when evaluating (default: --batch-size)")
    add_device_arguments(p)
    p.add_argument("--out", help="run folder for checkpoints and the report (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    add_distributed_arguments(p)


def add_distributed_arguments(p) -> None:
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training, one process per GPU started by torchrun (automatic when torchrun set WORLD_SIZE)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="give up on a dead or stuck rank after this long (default: $PCIR_DIST_TIMEOUT, else 300)",
    )


def default_out(model: str, data: str) -> Path:
    d = Path(data.rstrip("/")).name.split(".")[0] or "data"
    return Path("runs") / f"{Path(model).stem}-{d}"


def _clear_run(out: Path) -> None:
    """Remove what a run writes (links, epoch folders, report), nothing else."""
    for name in ("last", "best"):
        if (out / name).is_symlink():
            (out / name).unlink()
    for d in out.glob("epoch-*"):
        shutil.rmtree(d, ignore_errors=True)
    for f in ("report.json", "curves.png"):
        (out / f).unlink(missing_ok=True)


def run(args) -> int:
    from ..distributed import launched
    from ..train import default_device

    comm = None
    if getattr(args, "distributed", False) or launched():
        from ..distributed import init

        # before anything slow, so that a rank that cannot join fails fast
        comm = init(device=args.device or default_device(), timeout_s=args.dist_timeout)
    rc = _run(args, comm)
    if comm is not None:
        comm.close()  # not after an error: tearing down a broken group can itself hang
    return rc


def _run(args, comm) -> int:
    from ..api import load
    from ..data import load_dataset
    from ..ir.verify import verify
    from ..train import TrainConfig, check_device, default_device, device_name, log_line, train

    main = comm is None or comm.is_main
    quiet = lambda *a, **k: None  # noqa: E731
    say = print if main else quiet  # rank 0 reports for everyone
    circuit = verify(load(args.model))
    dataset = load_dataset(args.data)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        em=args.em,
        full_epochs=args.full_epochs,
        step_size=args.step_size,
        step_size_final=args.step_size_final,
        pseudocount=args.pseudocount,
        soften=args.soften,
        entropy=args.entropy,
        patience=args.patience,
        seed=args.seed,
        eval_batch_size=args.eval_batch_size,
        allow_missing=args.allow_missing,
        drop_last=args.drop_last,
    )
    device = str(comm.device) if comm is not None else check_device(args.device or default_device())
    out = Path(args.out) if args.out else default_out(args.model, args.data)
    if args.overwrite and not args.resume and main:
        _clear_run(out)
    s = circuit.stats()
    say(
        f"model   {args.model}: {circuit.num_vars} variables, {s['nodes']} nodes, {s['edges']} edges, {s['params']} parameters"
    )
    say(f"data    {dataset.describe()}")
    for note in dataset.notes:
        say(f"        {note}")
    ranks = f", {comm.world_size} ranks ({comm.backend}): global batch split between them" if comm else ""
    say(f"device  {device} ({device_name(device)}){ranks}")
    step = config.step_for_epoch(1)
    final = config.step_for_epoch(config.epochs)
    steps = f"{step:g}" if final == step else f"{step:g} -> {final:g}"
    full = f" + {config.full_epochs} full-batch" if config.full_epochs else ""
    say(
        f"em      {config.em}-batch, step size {steps}, pseudocount {config.pseudocount:g}"
        + (f", soften {config.soften:g}" if config.soften < 1 else "")
        + (f", entropy {config.entropy:g}" if config.entropy > 0 else "")
        + f", batch {config.batch_size}, "
        f"{config.epochs} epochs{full}, patience {config.patience}"
    )
    say(f"out     {out}", flush=True)

    def compile_fn(c, device):
        from ..train import compile_model

        return compile_model(c, device, **({"pipeline": args.pipeline} if args.pipeline else {}))

    meta = {"model": {"path": str(args.model), **s}, "pipeline": args.pipeline}
    result = train(
        circuit,
        dataset,
        config,
        out=out,
        device=device,
        resume=args.resume,
        progress=not args.no_progress and main,
        compile_fn=compile_fn,
        meta=meta,
        log=log_line if main else quiet,
        comm=comm,
    )
    say(format_summary(result.report))
    say(f"report  {out / 'report.json'}; checkpoints {out / 'best'} (epoch {result.best_epoch}), {out / 'last'}")
    return 0


def format_summary(report: dict) -> str:
    """One line per split: mean log-likelihood (and bits per dimension for images)."""
    lines = []
    bpd = report.get("bpd") or {}
    for split in ("train", "valid", "test"):
        ll = report.get(f"{split}_ll")
        if ll is None:
            continue
        extra = f"  ({bpd[split]:.4f} bits/dim)" if split in bpd and bpd[split] is not None else ""
        lines.append(f"{split:<6}  mean log-likelihood {ll:.4f}{extra}")
    if report.get("time_per_epoch_s") is not None:
        lines.append(
            f"time    {report['time_per_epoch_s']:.3f} s/epoch on {report.get('device_name')} ({report.get('device')})"
        )
    return "\n".join(lines)
