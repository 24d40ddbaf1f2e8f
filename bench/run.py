"""pcir beside PyJuice 2.6.3: one command, a fixed suite, one process, one card.

    python bench/run.py                      # the whole suite (GPU machine), PyJuice if importable
    python bench/run.py --quick              # a few configurations
    python bench/run.py --only 'hclt-(32|512)$' --profile --json out.json
    TRITON_INTERPRET=1 python bench/run.py --smoke --device cpu --no-pyjuice   # check the harness

For every configuration (see ``harness/suite.py`` and docs/benchmarks.md) it builds the same
structure on both sides, compiles it, takes one first step (Triton JIT included), then times the
forward pass and the train step (forward + flows + mini-batch EM step) as the median of
device-event timings over rotated input batches, and records peak GPU memory. PyJuice is timed
eagerly and then with its CUDA graphs recorded (its fastest mode; the ratios are against that).
The card's copy bandwidth and matmul rates are measured in the same run and give each
configuration's floor (docs/benchmarks.md says how FLOPs and bytes are counted). Each
configuration runs in its own try/except, so a failure (OOM, error) is recorded and the run goes
on. The JSON is rewritten after every configuration, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sparse_configs as sparse  # noqa: E402  (imported PSDD configurations: family "psdd")
from harness import pcir_side, pyjuice_side, report  # noqa: E402
from harness.suite import QUICK, SMOKE, SUITE, Context, build_pcir, build_pyjuice, pcir_graph_counts  # noqa: E402
from harness.work import card_ceilings, circuit_work, floor_ms  # noqa: E402

import pcir  # noqa: E402
from pcir import structures as st  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--smoke", action="store_true", help="tiny configurations of every family (harness check)")
    ap.add_argument("--only", metavar="REGEX", help="configurations whose name matches (re.search)")
    ap.add_argument("--configs", metavar="A,B,...", help="exactly these configurations, in this order")
    ap.add_argument("--skip", metavar="REGEX", help="leave out configurations whose name matches")
    ap.add_argument("--no-pyjuice", action="store_true", help="pcir only")
    ap.add_argument(
        "--pcir-eager", action="store_true", help="also time pcir with its CUDA graphs off (eager_* fields)"
    )
    ap.add_argument(
        "--pyjuice-eager-small",
        action="store_true",
        help="time PyJuice eagerly first at batches under 64 too (its first eager step at batch 1 "
        "ran past 75-160 s on an H200; by default the graph-recording step is its first there)",
    )
    ap.add_argument("--json", metavar="OUT", help="write the results here (default out/bench/last.json)")
    ap.add_argument("--md", metavar="OUT", help="write the tables here (default: the JSON path with .md)")
    ap.add_argument(
        "--profile",
        nargs="?",
        const=".*",
        metavar="REGEX",
        help="per-layer kernel times, launch counts and top kernels (all configurations, or those matching)",
    )
    ap.add_argument("--precision", default="tf32", choices=["tf32", "tf32x3", "fp32", "bf16"])
    ap.add_argument("--pipeline", default=None, help="pass pipeline for pcir.compile (default: none)")
    ap.add_argument("--device", default=None, help="default cuda")
    ap.add_argument("--budget-s", type=float, default=None, help="start no configuration after this many seconds")
    ap.add_argument("--target-s", type=float, default=0.4, help="seconds spent timing each measurement")
    ap.add_argument("--max-iters", type=int, default=20)
    ap.add_argument(
        "--config-timeout-s",
        type=float,
        default=300.0,
        help="abandon a configuration after this many seconds (SIGALRM; its partial row is kept; 0: never)",
    )
    ap.add_argument(
        "--isolate",
        action="store_true",
        help="run each configuration in a process of its own with empty Triton and pcir caches, so that "
        "both sides' compile times are cold (in one process, later configurations reuse kernels that "
        "earlier ones compiled: PyJuice's in memory, pcir's from Triton's disk cache)",
    )
    ap.add_argument("--label", default="", help="free text recorded in the JSON (commit, what changed)")
    ap.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set pcir.backend.triton_engine.NAME to the Python literal VALUE for the run (repeatable; "
        "e.g. SUM_ALIAS=False, PDL=2): an A/B of a default in one call, recorded in the JSON",
    )
    ap.add_argument("--from-json", metavar="FILE", help="only print the tables of an earlier run's JSON")
    return ap.parse_args(argv)


def select(args) -> list:
    configs = SMOKE + sparse.SPARSE_SMOKE if args.smoke else SUITE + sparse.SPARSE_SUITE
    if args.configs:
        by_name = {c.name: c for c in configs}
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
        configs = [by_name[n] for n in names]
    if args.quick:
        configs = [c for c in configs if c.name in QUICK]
    if args.only:
        configs = [c for c in configs if re.search(args.only, c.name)]
    if args.skip:
        configs = [c for c in configs if not re.search(args.skip, c.name)]
    return configs


def import_pyjuice(args) -> tuple[object | None, str]:
    if args.no_pyjuice:
        return None, "disabled (--no-pyjuice)"
    try:
        import pyjuice

        try:
            from importlib.metadata import version

            return pyjuice, version("pyjuice")
        except Exception:  # noqa: BLE001  (a source checkout has no metadata)
            return pyjuice, getattr(pyjuice, "__version__", "?")
    except Exception as e:  # noqa: BLE001  (optional: any import failure means pcir only)
        return None, f"not importable: {type(e).__name__}: {e}"[:300]


def environment(juice_info: str, args) -> dict:
    import numpy
    import triton

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "numpy": numpy.__version__,
        "pcir": pcir.__version__,
        "pyjuice": juice_info,
        "label": args.label + (" knobs: " + ", ".join(args.knob) if getattr(args, "knob", None) else ""),
        "host": platform.node(),
    }


def error_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return (f"{type(e).__name__}: {e}"[:600] + "\n" + "".join(tb[-3:])[-1500:]).strip()


class ConfigTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that the per-side ``except Exception`` lets it through."""


def _alarm(signum, frame):
    raise ConfigTimeout()


def run_config(cfg, ctx: Context, card: dict, args, row: dict) -> dict:
    """Fill ``row`` (the caller's, so that a timeout keeps what was measured) for one configuration."""
    device = ctx.device
    timer_kw = {"target_s": args.target_s, "max_iters": args.max_iters}
    profile = bool(args.profile and re.search(args.profile, cfg.name))
    try:
        t0 = time.perf_counter()
        circuit = sparse.build_pcir(cfg, ctx) if sparse.is_sparse(cfg) else build_pcir(cfg, ctx)
        row["struct_s"] = round(time.perf_counter() - t0, 3)
        if sparse.is_sparse(cfg):
            row.update(sparse.describe(cfg, circuit))
        if cfg.family == "hclt":
            tree = ctx.tree(cfg)
            row["tree"] = {"source": tree.source, "seconds": round(tree.seconds, 2), "root": tree.root}
        s = circuit.stats()
        work = circuit_work(circuit, cfg.batch)
        row["pcir_counts"] = {
            "nodes": s["nodes"],
            "edges": s["edges"],
            "params": s["params"],
            "sum_params": work["sum_params"],
        }
        row["work"] = work
        for phase in ("fwd", "train"):
            row.update(floor_ms(work, card, phase, args.precision))
        try:
            row["pcir_as_pyjuice"] = st.pyjuice_counts(circuit, cfg.pyjuice_block_size())
        except Exception as e:  # noqa: BLE001
            row["pcir_as_pyjuice_error"] = str(e)[:200]
        batches = ctx.batches(cfg)
    except Exception as e:  # noqa: BLE001
        row["error"] = error_text(e)
        return row
    try:
        row["pcir"] = pcir_side.run(
            cfg,
            circuit,
            batches,
            device,
            precision=args.precision,
            # an imported circuit is compiled through the passes (their node reordering is the point)
            pipeline=args.pipeline or ("default" if sparse.is_sparse(cfg) else None),
            profile=profile,
            timer_kw=timer_kw,
            eager_too=args.pcir_eager,
        )
    except Exception as e:  # noqa: BLE001
        row["pcir"] = {"error": error_text(e)}
        pcir_side.free(device)
    if ctx.pyjuice is not None:
        try:
            t0 = time.perf_counter()
            ns = sparse.build_pyjuice(cfg, ctx, circuit) if sparse.is_sparse(cfg) else build_pyjuice(cfg, ctx)
            row["pyjuice_struct_s"] = round(time.perf_counter() - t0, 3)
            row["pyjuice"] = pyjuice_side.run(
                cfg,
                ns,
                batches,
                device,
                juice=ctx.pyjuice,
                timer_kw=timer_kw,
                profile=profile,
                eager=args.pyjuice_eager_small or cfg.batch >= pyjuice_side.EAGER_MIN_BATCH,
            )
            del ns
            pcir_side.free(device)  # PyJuice's model is gone with its run's frame
            pj = row["pyjuice"]
            row["graph_counts_match"] = (pj["graph_nodes"], pj["graph_edges"]) == pcir_graph_counts(circuit)
        except Exception as e:  # noqa: BLE001
            row["pyjuice"] = {"error": error_text(e)}
            pcir_side.free(device)
    notes = []
    if cfg.family == "rat":
        notes.append("random splits differ per side (each its own RNG); sizes equal")
    asj, pj = row.get("pcir_as_pyjuice"), row.get("pyjuice") or {}
    if asj and pj.get("nodes") is not None:
        if (asj["nodes"], asj["edges"], asj["params"]) != (pj["nodes"], pj["edges"], pj["params"]):
            notes.append("compiled counts differ (see docs/benchmarks.md)")
    if row.get("graph_counts_match") is False:
        notes.append("node graphs differ in size")
    if pj.get("eager_skipped"):
        notes.append("PyJuice eager not timed: its first step recorded the graphs (--pyjuice-eager-small)")
    if sparse.is_sparse(cfg) and sparse.note(row):
        notes.append(sparse.note(row))
    row["note"] = "; ".join(notes)
    report.add_ratios(row)
    return row


def summary_line(row: dict) -> str:
    o, p, r = row.get("pcir") or {}, row.get("pyjuice") or {}, row.get("ratio") or {}
    bits = [f"{row['config']:>16s}"]
    if "error" in row:
        return bits[0] + " ERROR " + row["error"].splitlines()[0]
    bits.append(f"pcir fwd {o.get('fwd_ms', '-')} train {o.get('train_ms', '-')} ms")
    if p:
        bits.append(f"PJ fwd {p.get('fwd_ms', '-')} train {p.get('train_ms', '-')} ms")
        bits.append(f"ratios {r}")
    for side, d in (("pcir", o), ("pyjuice", p)):
        if "error" in d:
            bits.append(f"{side} ERROR {d['error'].splitlines()[0][:160]}")
    return " | ".join(bits)


def write(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


def tables(doc: dict) -> str:
    rows = [r for r in doc["rows"] if "error" not in r]
    card = doc["card"]
    ceil = ", ".join(f"{k} {card[k]}" for k in ("copy_TBps", "fp32_TFLOPs", "tf32_TFLOPs", "bf16_TFLOPs") if k in card)
    out = [
        f"## {doc['env']['date']} on {card.get('card')} ({ceil})",
        f"pcir {doc['env']['pcir']} ({doc['args'].get('precision')}), PyJuice {doc['env']['pyjuice']}, "
        f"torch {doc['env']['torch']}, triton {doc['env']['triton']}. {doc['env'].get('label', '')}",
        "",
        "Times in ms (median), ratios = pcir / PyJuice with CUDA graphs ('!' = target missed), "
        "roof = card floor / measured train step. Compile: "
        + (
            "each configuration in a process of its own with empty caches (--isolate), cold on both sides."
            if doc["args"].get("isolate")
            else "one process; later configurations reuse kernels that earlier ones compiled."
        ),
        "",
        report.speed_table(rows),
        "",
        report.size_table(rows),
        "",
    ]
    failed = [r for r in doc["rows"] if "error" in r]
    for r in failed:
        out.append(f"- {r['config']}: ERROR {r['error'].splitlines()[0]}")
    miss = report.misses(rows)
    if miss:
        out.append("Targets missed:")
        out += [f"- {m}" for m in miss]
    for s in doc.get("skipped", []):
        out.append(f"- skipped {s}")
    build = doc.get("pyjuice_cuda_build")
    if build:
        ok = [k.rsplit(".", 1)[-1] for k, v in build.items() if isinstance(v, list) and v[0] is True]
        out.append(
            f"- PyJuice's CUDA extensions built before the rows under batch 16 (untimed, not in its compile): "
            f"{build.get('total_s')} s; available: {', '.join(ok) or 'none'}"
        )
    prof = report.profile_text(rows)
    if prof:
        out += ["", prof]
    return "\n".join(out)


def isolated_row(cfg, args, argv: list[str], work: Path) -> dict:
    """``cfg``'s row from a child ``run.py`` of its own (the same arguments, this configuration
    only), whose Triton and pcir caches are new, empty folders: cold compiles on both sides."""
    import os
    import shutil
    import subprocess

    child = work / cfg.name
    env = dict(os.environ, TRITON_CACHE_DIR=str(child / "triton"), PCIR_CACHE_DIR=str(child / "pcir"))
    keep, skip = [], False
    for a in argv:  # the parent's arguments less the selection, the outputs and --isolate
        if skip:
            skip = False
            continue
        if a in ("--isolate", "--quick"):
            continue
        if a in ("--only", "--configs", "--skip", "--json", "--md", "--budget-s"):
            skip = True
            continue
        if a.split("=")[0] in ("--only", "--configs", "--skip", "--json", "--md", "--budget-s"):
            continue
        keep.append(a)
    out = child / "row.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *keep, "--configs", cfg.name, "--json", str(out)]
    limit = (args.config_timeout_s or 3600) * 2 + 120  # the child's own alarm, its setup and card measurement
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"config": cfg.name, "pcir": {"error": f"isolated run killed after {limit:.0f} s"}, "isolated": {}}
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    if proc.returncode != 0 or not rows:
        tail = (proc.stdout + proc.stderr)[-400:]
        return {
            "config": cfg.name,
            "pcir": {"error": f"isolated run failed (rc {proc.returncode}): {tail}"},
            "isolated": {},
        }
    row = rows[0]
    # what the child wrote into its empty caches (its compiles were cold); then they go
    row["isolated"] = {
        f"{name}_cache_files": sum(1 for f in (child / name).rglob("*") if f.is_file()) for name in ("pcir", "triton")
    }
    shutil.rmtree(child, ignore_errors=True)
    return row


def apply_knobs(items: list[str]) -> dict:
    """``NAME=VALUE`` -> set ``pcir.backend.triton_engine.NAME`` (triton_engine.set_knobs) and
    return what was set; a bad item ends the run with its reason."""
    from pcir.backend import triton_engine as te

    try:
        return te.set_knobs(items)
    except ValueError as e:
        raise SystemExit(f"--knob {e}") from None


def main(argv=None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_json:
        print(tables(json.loads(Path(args.from_json).read_text())))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    apply_knobs(args.knob)
    configs = select(args)
    if not configs:
        print("no configuration selected", file=sys.stderr)
        return 2
    juice, juice_info = import_pyjuice(args)
    if juice is not None and device.type != "cuda":
        juice, juice_info = None, "needs a CUDA device"
    json_path = Path(args.json) if args.json else HERE.parent / "out" / "bench" / "last.json"
    md_path = Path(args.md) if args.md else json_path.with_suffix(".md")
    t_start = time.perf_counter()
    card = card_ceilings(device)
    doc = {"card": card, "env": environment(juice_info, args), "args": vars(args), "rows": [], "skipped": []}
    print(json.dumps({"card": card, "env": doc["env"]}), flush=True)
    ctx = Context(device=device, pyjuice=juice)
    work = None
    if args.isolate:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="pcir-bench-"))
    for cfg in configs:
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            doc["skipped"].append(f"{cfg.name} (time budget {args.budget_s:.0f} s spent)")
            print(f"skip {cfg.name}: time budget spent", flush=True)
            continue
        t0 = time.perf_counter()
        if work is not None:
            row = isolated_row(cfg, args, raw_argv, work)
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            doc["rows"].append(row)
            doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
            write(doc, json_path)
            print(summary_line(row) + f" [{row['wall_s']} s, own process]", flush=True)
            continue
        if juice is not None and cfg.batch < 16 and "pyjuice_cuda_build" not in doc:
            # PyJuice's small-batch CUDA kernels build with nvcc on their first use, for longer
            # than a row's time limit: built here, before the row's alarm, the seconds apart
            from pyjuice_prebuild import prebuild

            t1 = time.perf_counter()
            doc["pyjuice_cuda_build"] = prebuild()
            doc["pyjuice_cuda_build"]["total_s"] = round(time.perf_counter() - t1, 2)
            print(json.dumps({"pyjuice_cuda_build": doc["pyjuice_cuda_build"]}), flush=True)
        row: dict = {"config": cfg.name, "family": cfg.family, "latents": cfg.latents, "batch": cfg.batch}
        if args.config_timeout_s:
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(max(1, int(args.config_timeout_s)))
        try:
            run_config(cfg, ctx, card, args, row)
        except ConfigTimeout:
            row["timeout"] = f"abandoned after {args.config_timeout_s:.0f} s"
            for side in ("pcir", "pyjuice"):
                if side in row and "fwd_ms" not in row[side]:
                    row[side].setdefault("error", row["timeout"])
            if "pcir" in row and "pyjuice" not in row and ctx.pyjuice is not None:
                row["pyjuice"] = {"error": row["timeout"]}
            elif "pcir" not in row:
                row["pcir"] = {"error": row["timeout"]}
            pcir_side.free(device)
        finally:
            if args.config_timeout_s:
                signal.alarm(0)
        report.add_ratios(row)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        doc["rows"].append(row)
        doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        write(doc, json_path)
        print(summary_line(row) + f" [{row['wall_s']} s]", flush=True)
    if work is not None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    text = tables(doc)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text + "\n")
    print("\n" + text, flush=True)
    print(f"\nwrote {json_path} and {md_path} ({doc.get('elapsed_s', 0)} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
