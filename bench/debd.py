"""Reproduce the HCLT table on the binary density-estimation datasets (debd).

Builds an HCLT (pcir.structures.hclt) from each training set, trains it with EM through the
compiled runtime (pcir.train) and prints the test log-likelihoods next to the published HCLT
numbers (Liu & Van den Broeck, NeurIPS 2021, mean test LL over 5 seeds).

    python bench/debd.py --datasets nltcs --latents 16 --epochs 5 --device cpu      # smoke, CPU
    python bench/debd.py --datasets all --latents 128 --epochs 100 --full-epochs 20 --device cuda

The data folder is --root, else $PCIR_DATA_DIR, else ../shared/data/debd next to the repository
(layout NAME/NAME.{train,valid,test}.data). Results go to --out (default
bench/results/debd-<device>.json) and a markdown table next to it; runs keep their checkpoints under
--runs (default runs/debd). Default recipe (after Juice.jl/PyJuice): mini-batch EM, batch 512,
step size annealed 0.5 -> 0.05, pseudocount 0.1, then full-batch EM epochs, early stopping on valid.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

PUBLISHED = {
    "nltcs": -5.99,
    "plants": -14.26,
    "baudio": -39.77,
    "jester": -52.46,
    "bnetflix": -56.27,
    "accidents": -26.74,
    "pumsb_star": -23.65,
    "dna": -79.06,
    "bbc": -251.05,
}
REPO = Path(__file__).resolve().parents[1]


def data_root(arg: str | None) -> Path:
    from pcir import knobs

    for cand in (
        arg,
        knobs.get().data_dir,
        REPO.parent / "shared" / "data" / "debd",
        REPO.parent.parent / "shared" / "data" / "debd",
    ):
        if cand and (Path(cand) / "nltcs" / "nltcs.train.data").is_file():
            return Path(cand)
    sys.exit("debd data not found: pass --root DIR (with NAME/NAME.train.data) or set PCIR_DATA_DIR")


def build_hclt(train_x, latents: int, seed: int, mi_pseudocount: float = 0.0, root: int = -1):
    """Call pcir.structures.hclt with whatever names its signature uses (``mi_pseudocount``: the
    Chow-Liu tree's Laplace smoothing, passed only when > 0; ``root``: the tree's root variable,
    passed only when >= 0)."""
    try:
        from pcir.structures import hclt
    except ImportError:
        sys.exit("pcir.structures.hclt is not installed in this checkout")
    fn = getattr(hclt, "hclt", hclt)
    params = inspect.signature(fn).parameters
    kw = {}
    for name in ("num_latents", "latents", "num_hidden", "hidden"):
        if name in params:
            kw[name] = latents
            break
    if "seed" in params:
        kw["seed"] = seed
    if mi_pseudocount > 0:
        if "mi_pseudocount" not in params:
            sys.exit("this checkout's hclt has no mi_pseudocount")
        kw["mi_pseudocount"] = mi_pseudocount
    if root >= 0:
        kw["root"] = root
    return fn(train_x, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="all", help="comma-separated names or 'all' (default)")
    ap.add_argument("--latents", type=int, default=128, help="HCLT latent states per variable (default 128)")
    ap.add_argument("--epochs", type=int, default=100, help="mini-batch EM epochs (default 100)")
    ap.add_argument("--full-epochs", type=int, default=20, help="full-batch EM epochs after them (default 20)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--step-size", type=float, default=0.5)
    ap.add_argument("--step-size-final", type=float, default=0.05)
    ap.add_argument("--pseudocount", type=float, default=0.1)
    ap.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mini-batch EM: leave out each epoch's short last batch (default; --no-drop-last keeps it)",
    )
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--pipeline", default=None, help="pass pipeline for pcir.compile (default: the backend's)")
    ap.add_argument("--root", help="folder with NAME/NAME.{train,valid,test}.data")
    ap.add_argument("--runs", default="runs/debd", help="where each dataset's run folder goes")
    ap.add_argument("--out", help="results JSON (default bench/results/debd-<device>.json)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from pcir.data import load_dataset
    from pcir.train import TrainConfig, check_device, compile_model, default_device, device_name, train

    names = list(PUBLISHED) if args.datasets == "all" else [d.strip() for d in args.datasets.split(",")]
    unknown = [n for n in names if n not in PUBLISHED]
    if unknown:
        sys.exit(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(PUBLISHED)}")
    root = data_root(args.root)
    device = check_device(args.device or default_device())
    card = device_name(device)
    rows = []
    for name in names:
        ds = load_dataset(root / name / name)
        t0 = time.perf_counter()
        circuit = build_hclt(ds["train"], args.latents, args.seed)
        build_s = time.perf_counter() - t0
        cfg = TrainConfig(
            epochs=args.epochs,
            full_epochs=args.full_epochs,
            batch_size=args.batch_size,
            em="mini",
            step_size=args.step_size,
            step_size_final=args.step_size_final,
            pseudocount=args.pseudocount,
            drop_last=args.drop_last,
            patience=args.patience,
            seed=args.seed,
        )
        out = Path(args.runs) / f"{name}-h{args.latents}-s{args.seed}"
        print(
            f"== {name}: {ds.describe()}; HCLT with {args.latents} latents ({circuit.stats()['params']} parameters, built in {build_s:.1f}s)"
        )

        def compile_fn(c, device):
            return compile_model(c, device, **({"pipeline": args.pipeline} if args.pipeline else {}))

        res = train(
            circuit,
            ds,
            cfg,
            out=out,
            device=device,
            resume=(out / "last").is_symlink(),
            progress=not args.no_progress,
            compile_fn=compile_fn,
            meta={"model": {"structure": "hclt", "latents": args.latents, **circuit.stats()}},
        )
        r = res.report
        rows.append(
            {
                "dataset": name,
                "vars": ds.num_vars,
                "test_ll": r["test_ll"],
                "valid_ll": r["valid_ll"],
                "train_ll": r["train_ll"],
                "published": PUBLISHED[name],
                "delta": r["test_ll"] - PUBLISHED[name],
                "epochs_run": r["epochs_run"],
                "best_epoch": r["best_epoch"],
                "time_per_epoch_s": r["time_per_epoch_s"],
                "params": circuit.stats()["params"],
            }
        )
        print(table(rows[-1:], header=False))
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "no_progress")}
    result = {"device": device, "card": card, "settings": settings, "rows": rows}
    out_json = Path(args.out) if args.out else REPO / "bench" / "results" / f"debd-{device.split(':')[0]}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    md = f"HCLT ({args.latents} latents) on {card} ({device}); settings: {json.dumps(settings)}\n\n{table(rows)}\n"
    out_json.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")
    return 0


def table(rows, header: bool = True) -> str:
    lines = []
    if header:
        lines.append("| dataset | vars | test LL | published HCLT | difference | epochs (best) | s/epoch |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mark = " (better)" if r["delta"] >= 0 else ""
        lines.append(
            f"| {r['dataset']} | {r['vars']} | {r['test_ll']:.3f} | {r['published']:.2f} | {r['delta']:+.3f}{mark} | "
            f"{r['epochs_run']} ({r['best_epoch']}) | {r['time_per_epoch_s']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
