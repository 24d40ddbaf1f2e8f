"""A small grid per debd dataset, selected by validation, then seeds: the HCLT table of issue 8.

For every dataset, every point of the grid (the product of the comma lists below; ``--set``
changes the lists for one dataset) trains an HCLT with EM (seed 0) exactly as ``bench/debd.py``
does; the point with the best *validation* log-likelihood is selected, and with ``--seeds S`` the
selected point is trained again with seeds 1..S-1. The table reports the selected point's test
log-likelihood (mean and standard deviation over the seeds) next to the published HCLT numbers
(Liu & Van den Broeck 2021, mean of 5 seeds). Test numbers never take part in a choice.

    python bench/debd_sweep.py --datasets nltcs --latents 4 --epochs 2 --device cpu        # smoke
    python bench/debd_sweep.py --datasets all --latents 128,256 --pseudocount 0.01,0.03,0.1 \\
        --drop-last 1 --epochs 200 --full-epochs 20 --patience 0 --seeds 5 --budget-s 560 --device cuda
    python bench/debd_sweep.py --combine A.json B.json ... --out C.json    # select across result files

``--jobs N`` runs N trainings at a time, each in its own (spawned) process. On one GPU keep the
default 1: on an H200, 8 at a time made every epoch 6-13x slower than alone (bnetflix HCLT-128:
0.465 against 0.035 s/epoch), less throughput than one after the other; these small circuits
are bound by kernel launches, and CUDA contexts of separate processes only take turns.

Each run keeps its best parameters in memory (on the device) instead of writing checkpoints, and
checks that putting them back reproduces the best validation score. ``--budget-s`` is a wall-clock
budget: runs not started by then are skipped, runs under way stop after their current epoch
(keeping their best parameters) and are marked ``cut``. Results (``--out``, JSON, and a markdown
table next to it) are rewritten after every run, so an interrupted sweep still leaves its finished
runs; ``--resume FILE`` takes the finished, uncut runs of an earlier sweep with the same settings
instead of training them again (the table then is the same as one uninterrupted sweep's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import debd  # noqa: E402  (PUBLISHED, data_root, build_hclt)

REPO = Path(__file__).resolve().parents[1]
# grid axes: (name, type, default values)
AXES = (
    ("latents", int, "128"),
    ("pseudocount", float, "0.1"),
    ("batch_size", int, "512"),
    ("step_size", float, "0.5"),
    ("step_size_final", float, "0.05"),
    ("epochs", int, "200"),
    ("full_epochs", int, "20"),
    ("drop_last", int, "1"),  # 1 (as pcir train): mini-batch EM leaves out each epoch's short last batch
    ("soften", float, "1"),  # data softening (1: off), see TrainConfig.soften
    ("entropy", float, "0"),  # entropy regularisation (0: off), see TrainConfig.entropy
    ("init", float, "0"),  # 0: pcir's random initialisation; p > 0: near-uniform, weights ~ 1 + p * U(0, 1)
    ("stepwise", int, "0"),  # 1: mini-batch EM averages the flows (stepwise EM), not the parameters
    ("full_pseudocount", float, "-1"),  # pseudocount of the full-batch epochs (-1: the pseudocount)
    ("mi_pseudocount", float, "0"),  # Laplace smoothing of the Chow-Liu tree's pairwise counts (hclt)
    ("tree_root", int, "-1"),  # the tree's root variable (-1: its centre, hclt's default)
    ("average", float, "0"),  # > 0: validate and keep an average of the parameters (decay per epoch)
)
AXIS_TYPES = {name: typ for name, typ, _ in AXES}
SHORT = {
    "latents": "h",
    "pseudocount": "pc",
    "batch_size": "b",
    "step_size": "s",
    "step_size_final": "to",
    "epochs": "e",
    "full_epochs": "f",
    "drop_last": "dl",
    "soften": "sf",
    "entropy": "en",
    "init": "in",
    "stepwise": "sw",
    "full_pseudocount": "fpc",
    "mi_pseudocount": "mp",
    "tree_root": "rt",
    "average": "av",
}
# axes added after sweeps were recorded: left out of names and keys at this value, so that the
# runs of those sweeps keep their names and can be reused
LEGACY_DEFAULTS = {
    "drop_last": 0,
    "soften": 1.0,
    "entropy": 0.0,
    "init": 0.0,
    "stepwise": 0,
    "full_pseudocount": -1.0,
    "mi_pseudocount": 0.0,
    "tree_root": -1,
    "average": 0.0,
}


def parse_list(name: str, text: str) -> list:
    typ = AXIS_TYPES[name]
    try:
        vals = [typ(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SystemExit(
            f"--{name.replace('_', '-')}: '{text}' is not a comma-separated list of {typ.__name__}"
        ) from None
    if not vals:
        raise SystemExit(f"--{name.replace('_', '-')}: no values")
    return list(dict.fromkeys(vals))


def parse_set(items: list[str], names: list[str]) -> dict[str, dict[str, list]]:
    """``--set DATASET:AXIS=V1,V2`` -> {dataset: {axis: values}}."""
    out: dict[str, dict[str, list]] = {}
    for item in items:
        try:
            ds, rest = item.split(":", 1)
            axis, vals = rest.split("=", 1)
        except ValueError:
            raise SystemExit(f"--set '{item}': expected DATASET:AXIS=V1,V2 (e.g. dna:latents=64,128)") from None
        axis = axis.strip().replace("-", "_")
        if axis not in AXIS_TYPES:
            raise SystemExit(f"--set '{item}': unknown axis '{axis}' (one of {', '.join(AXIS_TYPES)})")
        if ds not in names:
            raise SystemExit(f"--set '{item}': dataset '{ds}' is not among --datasets")
        out.setdefault(ds, {})[axis] = parse_list(axis, vals)
    return out


def grid_for(dataset: str, axes: dict[str, list], overrides: dict[str, dict[str, list]]) -> list[dict]:
    lists = {**axes, **overrides.get(dataset, {})}
    names = [n for n, _, _ in AXES]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(lists[n] for n in names))]


def _legacy(k: str, v) -> bool:
    return k in LEGACY_DEFAULTS and v == LEGACY_DEFAULTS[k]


def point_name(p: dict) -> str:
    return "-".join(
        f"{SHORT[k]}{p[k]:g}" if isinstance(p[k], float) else f"{SHORT[k]}{p[k]}"
        for k in SHORT
        if k in p and not _legacy(k, p[k])
    )


def run_key(dataset: str, point: dict, seed: int, fixed: dict) -> str:
    point = {k: v for k, v in point.items() if not _legacy(k, v)}
    return json.dumps({"dataset": dataset, "seed": seed, **point, **fixed}, sort_keys=True)


# ---- one training run (in a worker process) ---------------------------------------------------------
def _device_trainer_class():
    import torch

    from pcir.train import Trainer

    class DeviceSnapshotTrainer(Trainer):
        """Keeps the best parameters as device tensors (clones of the model's nn.Parameters)
        instead of copying the whole circuit to the host at every improvement."""

        def snapshot_params(self):
            params = dict(self.model.named_parameters()) if isinstance(self.model, torch.nn.Module) else {}
            if not params:
                return super().snapshot_params()
            return {k: p.detach().clone() for k, p in params.items()}

        def restore_params(self, snapshot):
            if snapshot and all(isinstance(v, torch.Tensor) for v in snapshot.values()):
                set_state(self.model, snapshot)
            else:
                super().restore_params(snapshot)

    return DeviceSnapshotTrainer


def set_state(model, state) -> None:
    import torch

    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(state[k])


def near_uniform_init(model, perturbation: float, seed: int) -> None:
    """Every sum node's and categorical leaf's weights proportional to ``1 + perturbation * u``,
    u ~ U(0, 1) (Juice.jl's ``init_parameters(pc; perturbation)``), instead of pcir's random
    initialisation (categorical rows ~ U(0.05, 1), normalised): EM starts near uniform."""
    import torch

    gen = torch.Generator().manual_seed(1_000_003 * int(seed) + 17)
    with torch.no_grad():
        for name in ("sum_logits", "cat_logits"):
            t = getattr(model, name, None)
            if t is None or not t.numel():
                continue
            u = torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)
            t.copy_(torch.where(torch.isfinite(t), torch.log1p(perturbation * u), t))


def stepwise_em(trainer, model, n_train: int, num_vars: int) -> None:
    """Mini-batch EM as stepwise (online) EM: the flows of every batch, scaled to the training set's
    size, go into running statistics ``S = (1 - step) S + step * (n / batch rows) * flows``, and the
    parameters are the plain M-step of ``S`` (step 1), where pcir's mini-batch EM averages the
    parameters (``theta = (1 - step) theta + step * M(flows)``). A node that a batch barely
    reaches then barely moves. Full-batch epochs are unchanged."""
    import torch

    state = {"mini": False, "stats": None}
    run_epoch, em_step = trainer._run_epoch, model.em_step

    def _run_epoch(epoch: int):
        state["mini"] = trainer.config.mode_for_epoch(epoch) == "mini"
        return run_epoch(epoch)

    @torch.no_grad()
    def _em_step(step_size: float = 1.0, pseudocount: float = 0.0, **kw):
        if not state["mini"]:
            return em_step(step_size=step_size, pseudocount=pseudocount, **kw)
        flows = model.flow_tensors()
        rows = float(flows[1].sum()) / max(num_vars, 1)  # every variable's leaf counts sum to the batch rows
        scale = n_train / rows if rows > 0 else 0.0
        if state["stats"] is None:
            state["stats"] = [f.detach().clone().mul_(scale) for f in flows]
        else:
            for st, f in zip(state["stats"], flows, strict=True):
                st.mul_(1.0 - step_size).add_(f, alpha=step_size * scale)
        for st, f in zip(state["stats"], flows, strict=True):
            f.copy_(st)
        return em_step(step_size=1.0, pseudocount=pseudocount, **kw)

    trainer._run_epoch = _run_epoch
    model.em_step = _em_step
    _step_through_em_step(model)


def _step_through_em_step(model) -> None:
    """Make ``model.train_step`` (which the training loop calls for mini-batch EM) the two calls
    ``forward_backward`` and ``model.em_step``, so that a replaced ``em_step`` takes effect."""

    def train_step(x, step_size: float = 1.0, pseudocount: float = 0.0, missing=None, **kw):
        ll = model.forward_backward(x) if missing is None else model.forward_backward(x, missing)
        model.em_step(step_size=step_size, pseudocount=pseudocount, **kw)
        return ll

    model.train_step = train_step


def full_batch_pseudocount(trainer, model, pseudocount: float) -> None:
    """The full-batch epochs after mini-batch EM use this pseudocount instead of the mini-batch
    one. The pseudocount is added per node and per EM step: over a mini-batch of B rows it weighs
    about n / B times more than over the n rows of a full-batch step."""
    run_epoch, em_step = trainer._run_epoch, model.em_step
    state = {"full": False}

    def _run_epoch(epoch: int):
        state["full"] = trainer.config.mode_for_epoch(epoch) == "full"
        return run_epoch(epoch)

    def _em_step(step_size: float = 1.0, pseudocount: float = 0.0, **kw):
        return em_step(step_size=step_size, pseudocount=pseudocount if not state["full"] else pc, **kw)

    pc = float(pseudocount)
    trainer._run_epoch = _run_epoch
    model.em_step = _em_step
    _step_through_em_step(model)


def parameter_average(trainer, model, decay: float) -> None:
    """Polyak averaging of EM's iterates: after every epoch the average ``a <- decay * a +
    (1 - decay) * p`` of the sums' weights and the categorical tables, in probability space (an
    average of distributions is a distribution), is what validation scores and what the trainer
    keeps as its best parameters; training itself goes on from the plain iterates."""
    import torch

    run_epoch = trainer._run_epoch
    state: dict = {"avg": None}

    def probabilities():
        with torch.no_grad():
            logw, logp = model._normalised()
            return torch.exp(logw).double(), torch.exp(logp[: model.cat_logits.numel()]).double()

    def load(pair) -> None:
        with torch.no_grad():
            model.sum_logits.copy_(torch.log(pair[0]).to(model.sum_logits.dtype))
            model.cat_logits.copy_(torch.log(pair[1]).to(model.cat_logits.dtype))

    def _run_epoch(epoch: int):
        rec = run_epoch(epoch)  # trains, then validates the plain iterate
        cur = probabilities()
        avg = state["avg"]
        state["avg"] = cur if avg is None else tuple(decay * a + (1 - decay) * c for a, c in zip(avg, cur, strict=True))
        if "valid" in trainer.data:
            plain = {k: p.detach().clone() for k, p in model.named_parameters()}
            load(state["avg"])
            rec.valid_ll = trainer._mean_ll(trainer.data["valid"])
            state["avg_params"] = {k: p.detach().clone() for k, p in model.named_parameters()}
            set_state(model, plain)
        return rec

    def snapshot_params():  # the trainer keeps its best epoch's average, not its iterate
        return {k: v.clone() for k, v in state["avg_params"].items()}

    trainer._run_epoch = _run_epoch
    trainer.snapshot_params = snapshot_params


def run_one(task: dict) -> dict:
    """Train one (dataset, grid point, seed); returns its row (never raises: errors are rows)."""
    t_start = time.time()
    row = {
        "dataset": task["dataset"],
        "seed": task["seed"],
        "point": task["point"],
        "name": point_name(task["point"]),
        "phase": task["phase"],
        "key": task["key"],
    }
    deadline = task["deadline"]
    if deadline is not None and time.time() > deadline:
        return {**row, "status": "skipped", "reason": "budget spent before the run started"}
    try:
        import torch

        from pcir.data import load_dataset
        from pcir.train import TrainConfig, compile_model

        if task["threads"]:
            torch.set_num_threads(task["threads"])
        p = task["point"]
        ds = load_dataset(Path(task["root"]) / task["dataset"] / task["dataset"])
        t0 = time.perf_counter()
        circuit = debd.build_hclt(
            ds["train"], p["latents"], task["seed"], float(p.get("mi_pseudocount", 0.0)), int(p.get("tree_root", -1))
        )
        kw = {"pipeline": task["pipeline"]} if task["pipeline"] else {}
        model = (task.get("compile_fn") or compile_model)(circuit, task["device"], **kw)
        if float(p.get("init", 0.0)) > 0:
            near_uniform_init(model, float(p["init"]), task["seed"])
        setup_s = time.perf_counter() - t0
        cfg = TrainConfig(
            epochs=p["epochs"],
            full_epochs=p["full_epochs"],
            batch_size=p["batch_size"],
            em="mini",
            step_size=p["step_size"],
            step_size_final=p["step_size_final"],
            pseudocount=p["pseudocount"],
            patience=task["patience"],
            seed=task["seed"],
            eval_batch_size=task["eval_batch_size"],
            drop_last=bool(p.get("drop_last", 0)),
            soften=float(p.get("soften", 1.0)),
            entropy=float(p.get("entropy", 0.0)),
        )
        cut = []

        def should_stop() -> bool:
            if deadline is not None and time.time() > deadline:
                cut.append(True)
                return True
            return False

        trainer = _device_trainer_class()(
            model,
            circuit,
            ds,
            cfg,
            out=None,
            device=task["device"],
            progress=False,
            log=lambda s: None,
            should_stop=should_stop,
        )
        if int(p.get("stepwise", 0)):
            stepwise_em(trainer, model, int(ds["train"].shape[0]), ds.num_vars)
        if float(p.get("full_pseudocount", -1.0)) >= 0:
            full_batch_pseudocount(trainer, model, float(p["full_pseudocount"]))
        if float(p.get("average", 0.0)) > 0:
            parameter_average(trainer, model, float(p["average"]))
        res = trainer.fit()
        r = res.report
        hist = res.history
        train_times = [h.train_time_s for h in hist]
        row.update(
            status="cut" if cut else "ok",
            vars=ds.num_vars,
            params=circuit.stats()["params"],
            train_ll=r["train_ll"],
            valid_ll=r["valid_ll"],
            test_ll=r["test_ll"],
            best_valid_during_training=trainer.best_valid,
            # putting the kept parameters back must give the best epoch's validation score again
            restore_gap=None if trainer.best_valid is None else r["valid_ll"] - trainer.best_valid,
            epochs_run=r["epochs_run"],
            best_epoch=r["best_epoch"],
            stopped_early=bool(r["stopped_early"]) and not cut,
            s_per_epoch=statistics.median(train_times) if train_times else None,
            first_epoch_s=train_times[0] if train_times else None,
            eval_s_per_epoch=statistics.median([h.eval_time_s for h in hist]) if hist else None,
            setup_s=setup_s,
            wall_s=time.time() - t_start,
            card=r["device_name"],
            curve={
                "train": [round(h.train_ll, 4) for h in hist],
                "valid": [None if h.valid_ll is None else round(h.valid_ll, 4) for h in hist],
            },
        )
    except Exception as e:  # noqa: BLE001 - one failed run must not end the sweep
        import traceback

        row.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
    return row


# ---- selection and tables ---------------------------------------------------------------------------
def finished(row: dict) -> bool:
    return row.get("status") in ("ok", "cut") and row.get("valid_ll") is not None


def select(rows: list[dict], dataset: str) -> dict | None:
    """The seed-0 grid run of ``dataset`` with the best validation log-likelihood."""
    cands = [r for r in rows if r["dataset"] == dataset and r["seed"] == 0 and r["phase"] == "grid" and finished(r)]
    return max(cands, key=lambda r: r["valid_ll"]) if cands else None


def recipe(row: dict) -> str:
    """A run's key without its seed: the runs of one recipe (all settings) over several seeds."""
    key = json.loads(row["key"])
    key.pop("seed", None)
    return json.dumps(key, sort_keys=True)


def summary(rows: list[dict], dataset: str, grid_size: int, seeds: int) -> dict | None:
    best = select(rows, dataset)
    if best is None:
        return None
    runs = sorted(
        (r for r in rows if r["dataset"] == dataset and recipe(r) == recipe(best) and finished(r)),
        key=lambda r: r["seed"],
    )
    tests = [r["test_ll"] for r in runs]
    done = [r for r in rows if r["dataset"] == dataset and r["seed"] == 0 and r["phase"] == "grid" and finished(r)]
    mean = statistics.fmean(tests)
    return {
        "dataset": dataset,
        "vars": best["vars"],
        "selected": best["point"],
        "selected_name": best["name"],
        "selected_key": best["key"],
        "grid_points": grid_size,
        "grid_points_done": len(done),
        "grid_points_cut": sum(r["status"] == "cut" for r in done),
        "seeds_asked": seeds,
        "seeds": [r["seed"] for r in runs],
        "valid_ll": best["valid_ll"],
        "valid_ll_mean": statistics.fmean(r["valid_ll"] for r in runs),
        "test_ll_seed0": best["test_ll"],
        "test_ll_mean": mean,
        "test_ll_std": statistics.stdev(tests) if len(tests) > 1 else None,
        "train_ll_mean": statistics.fmean(r["train_ll"] for r in runs),
        "published": debd.PUBLISHED.get(dataset),
        "delta": None if debd.PUBLISHED.get(dataset) is None else mean - debd.PUBLISHED[dataset],
        "epochs_run": best["epochs_run"],
        "best_epoch": best["best_epoch"],
        "s_per_epoch": best["s_per_epoch"],
        "params": best["params"],
        "status": best["status"],
        "source": best.get("source"),
    }


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def tables(result: dict) -> str:
    sel = [s for s in result["selected"] if s is not None]
    sources = any(s.get("source") for s in sel)
    lines = [
        "| dataset | vars | selected (latents, pseudocount, batch, step, epochs+full) | valid LL | test LL (mean ± std, seeds) "
        "| published HCLT | difference | epochs (best) | s/epoch |" + (" from |" if sources else ""),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|" + ("---|" if sources else ""),
    ]
    for s in sel:
        p = s["selected"]
        std = f" ± {s['test_ll_std']:.3f}" if s["test_ll_std"] is not None else ""
        grid = (
            f"grid {s['grid_points_done']}/{s['grid_points']}" if s["grid_points"] else f"{s['grid_points_done']} runs"
        )
        cut = f", {s['grid_points_cut']} cut" if s["grid_points_cut"] else ""
        drop = ", drop-last" if p.get("drop_last") else ""
        drop += f", soften {p['soften']:g}" if float(p.get("soften", 1.0)) < 1.0 else ""
        drop += f", entropy {p['entropy']:g}" if float(p.get("entropy", 0.0)) > 0 else ""
        drop += f", init {p['init']:g}" if float(p.get("init", 0.0)) > 0 else ""
        drop += ", stepwise EM" if int(p.get("stepwise", 0)) else ""
        drop += f", full-batch pseudocount {p['full_pseudocount']:g}" if p.get("full_pseudocount", -1) >= 0 else ""
        drop += f", parameter average {p['average']:g}" if float(p.get("average", 0.0)) > 0 else ""
        drop += f", tree MI pseudocount {p['mi_pseudocount']:g}" if float(p.get("mi_pseudocount", 0.0)) > 0 else ""
        drop += f", root x{p['tree_root']}" if int(p.get("tree_root", -1)) >= 0 else ""
        mark = " (cut)" if s["status"] == "cut" else ""
        pub = "-" if s["published"] is None else f"{s['published']:.2f}"
        delta = "-"
        if s["delta"] is not None:
            delta = f"{s['delta']:+.3f}" + (" (better)" if s["delta"] >= 0 else "")
        lines.append(
            f"| {s['dataset']} | {s['vars']} | {p['latents']}, {p['pseudocount']:g}, {p['batch_size']}, "
            f"{p['step_size']:g}->{p['step_size_final']:g}, {p['epochs']}+{p['full_epochs']}{drop} ({grid}{cut}) | "
            f"{s['valid_ll']:.3f} | {s['test_ll_mean']:.3f}{std} ({len(s['seeds'])}) | {pub} | {delta} | "
            f"{s['epochs_run']} ({s['best_epoch']}){mark} | {_f(s['s_per_epoch'], '.3f')} |"
            + (f" {s.get('source') or '-'} |" if sources else "")
        )
    lines += [
        "",
        "Every grid run (seed 0; selection by valid LL, marked *):",
        "",
        "| dataset | point | status | train LL | valid LL | test LL | epochs (best) | s/epoch | setup s |"
        + (" from |" if sources else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---|" if sources else ""),
    ]
    chosen = {s["selected_key"] for s in sel}
    for r in result["runs"]:
        if r["phase"] != "grid":
            continue
        src = f" {r.get('source') or '-'} |" if sources else ""
        if not finished(r):
            lines.append(f"| {r['dataset']} | {r['name']} | {r['status']} | | | | | | |{src}")
            continue
        star = " *" if r.get("key") in chosen else ""
        lines.append(
            f"| {r['dataset']} | {r['name']}{star} | {r['status']} | {r['train_ll']:.3f} | {r['valid_ll']:.3f} | "
            f"{r['test_ll']:.3f} | {r['epochs_run']} ({r['best_epoch']}) | {_f(r.get('s_per_epoch'), '.3f')} | "
            f"{_f(r.get('setup_s'), '.1f')} |{src}"
        )
    return "\n".join(lines)


# ---- combining result files -------------------------------------------------------------------------
def load_runs(path: Path) -> list[dict]:
    """The finished runs of a sweep JSON, or the rows of a ``bench/debd.py`` JSON as runs."""
    res = json.loads(Path(path).read_text())
    src = Path(path).name
    if "runs" in res:
        return [{**r, "source": r.get("source") or src} for r in res["runs"] if finished(r)]
    st = res["settings"]
    point = {
        "latents": st["latents"],
        "pseudocount": st["pseudocount"],
        "batch_size": st["batch_size"],
        "step_size": st["step_size"],
        "step_size_final": st["step_size_final"],
        "epochs": st["epochs"],
        "full_epochs": st["full_epochs"],
        "drop_last": int(bool(st.get("drop_last", False))),
    }
    fixed = {"patience": st.get("patience"), "eval_batch_size": None, "pipeline": st.get("pipeline")}
    return [
        {
            "dataset": row["dataset"],
            "seed": st["seed"],
            "point": point,
            "name": point_name(point),
            "phase": "grid",
            "key": run_key(row["dataset"], point, st["seed"], fixed),
            "status": "ok",
            "vars": row["vars"],
            "params": row.get("params"),
            "train_ll": row["train_ll"],
            "valid_ll": row["valid_ll"],
            "test_ll": row["test_ll"],
            "epochs_run": row["epochs_run"],
            "best_epoch": row["best_epoch"],
            "s_per_epoch": row.get("time_per_epoch_s"),
            "card": res.get("card"),
            "source": src,
        }
        for row in res["rows"]
    ]


def combine(files: list[str], names: list[str], out: Path) -> dict:
    """Select per dataset by validation among every finished run of ``files`` (no training)."""
    seen: dict[str, dict] = {}
    for f in files:
        for r in load_runs(Path(f)):
            key = r.setdefault("key", run_key(r["dataset"], r["point"], r["seed"], {"source": r["source"]}))
            old = seen.get(key)
            # the same run reused by a later sweep: keep one copy, an uncut one first
            if old is None or (old["status"] == "cut" and r["status"] == "ok"):
                seen[key] = r
    rows = [r for r in seen.values() if r["dataset"] in names]
    cards = sorted({r.get("card") for r in rows if r.get("card")})
    result = {
        "device": "-",
        "card": ", ".join(cards) or "-",
        "command": "python bench/debd_sweep.py --combine " + " ".join(files),
        "combined_from": list(files),
        "datasets": names,
        "fixed": {},
        "jobs": "-",
        "runs": rows,
        "selected": [],
        "elapsed_s": 0.0,
        "budget_reached": False,
    }
    for n in names:
        done = [r for r in rows if r["dataset"] == n and r["seed"] == 0 and r["phase"] == "grid"]
        sm = summary(rows, n, 0, 0)
        if sm is not None:
            sm["grid_points_done"] = len(done)
        result["selected"].append(sm)
    write(result, out)
    return result


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    if "combined_from" in result:
        head = (
            f"HCLT runs combined from {', '.join(result['combined_from'])} (cards: {result['card']}); "
            f"per dataset the seed-0 run with the best valid LL, whichever file it comes from; command:\n\n"
            f"    {result['command']}\n\n"
        )
        out.with_suffix(".md").write_text(head + tables(result) + "\n")
        return
    head = (
        f"HCLT sweep on {result['card']} ({result['device']}), {result['jobs']} runs at a time; command:\n\n"
        f"    {result['command']}\n\nfixed: {json.dumps(result['fixed'])}; "
        f"{result['elapsed_s']:.0f} s{' (budget reached)' if result['budget_reached'] else ''}\n\n"
    )
    md = out.with_suffix(".md")
    md.write_text(head + tables(result) + "\n")


# ---- driver -----------------------------------------------------------------------------------------
def main(argv=None, compile_fn=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="all", help="comma-separated names or 'all' (in this order)")
    for name, _typ, default in AXES:
        ap.add_argument(f"--{name.replace('_', '-')}", default=default, help=f"grid values (default {default})")
    ap.add_argument("--set", action="append", default=[], metavar="DS:AXIS=V1,V2", help="per-dataset grid values")
    ap.add_argument("--patience", type=int, default=30, help="early stopping on valid (default 30; 0: never)")
    ap.add_argument("--eval-batch-size", type=int, default=2048)
    ap.add_argument("--seeds", type=int, default=1, help="seeds of the selected point (0..S-1; default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process (default 1: inline)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the whole sweep")
    ap.add_argument("--resume", help="an earlier sweep's JSON: reuse its finished runs with the same settings")
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="no training: select per dataset by valid LL among the finished runs of these sweep or debd.py JSONs",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--pipeline", default=None, help="pass pipeline for pcir.compile (default: the backend's)")
    ap.add_argument("--root", help="folder with NAME/NAME.{train,valid,test}.data")
    ap.add_argument("--out", help="results JSON (default bench/results/debd-sweep-<device>.json)")
    args = ap.parse_args(argv)
    t_start = time.time()
    deadline = None if args.budget_s is None else t_start + args.budget_s

    from pcir.train import check_device, default_device, device_name

    names = list(debd.PUBLISHED) if args.datasets == "all" else [d.strip() for d in args.datasets.split(",")]
    unknown = [n for n in names if n not in debd.PUBLISHED]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(debd.PUBLISHED)}")
    if args.seeds < 1 or args.jobs < 1:
        raise SystemExit("--seeds and --jobs must be >= 1")
    if args.combine:
        out = Path(args.out) if args.out else REPO / "bench" / "results" / "debd-combined.json"
        combine(args.combine, names, out)
        print(out.with_suffix(".md").read_text().split("\n\nEvery grid run")[0])
        print(f"\nwrote {out} and {out.with_suffix('.md')}")
        return 0
    axes = {name: parse_list(name, getattr(args, name)) for name, _, _ in AXES}
    overrides = parse_set(args.set, names)
    root = debd.data_root(args.root)
    device = check_device(args.device or default_device())
    card = device_name(device)
    fixed = {"patience": args.patience, "eval_batch_size": args.eval_batch_size, "pipeline": args.pipeline}
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"debd-sweep-{device.split(':')[0]}.json"
    grids = {n: grid_for(n, axes, overrides) for n in names}

    previous: dict[str, dict] = {}
    if args.resume:
        for r in json.loads(Path(args.resume).read_text()).get("runs", []):
            if r.get("status") == "ok" and r.get("key"):
                previous[r["key"]] = {**r, "reused_from": str(args.resume)}

    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0

    def task(dataset: str, point: dict, seed: int, phase: str) -> dict:
        return {
            "dataset": dataset,
            "point": point,
            "seed": seed,
            "phase": phase,
            "key": run_key(dataset, point, seed, fixed),
            "root": str(root),
            "device": device,
            "pipeline": args.pipeline,
            "patience": args.patience,
            "eval_batch_size": args.eval_batch_size,
            "deadline": deadline,
            "threads": threads,
            "compile_fn": compile_fn,
        }

    result = {
        "device": device,
        "card": card,
        "command": "python bench/debd_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "datasets": names,
        "grid": axes,
        "overrides": overrides,
        "fixed": fixed,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "runs": [],
        "selected": [],
        "elapsed_s": 0.0,
        "budget_reached": False,
    }
    rows: list[dict] = result["runs"]
    grid_left = {n: len(g) for n, g in grids.items()}
    seeded: set[str] = set()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)

    log(
        f"{len(names)} datasets, {sum(grid_left.values())} grid runs, seeds {args.seeds}, {args.jobs} at a time on {card}"
    )

    def record(row: dict) -> list[dict]:
        """Store a finished row; returns the seed tasks that became due."""
        rows.append(row)
        if finished(row):
            log(
                f"{row['dataset']:>10} {row['name']} seed {row['seed']}: {row['status']}{' (reused)' if 'reused_from' in row else ''} "
                f"valid {row['valid_ll']:.4f} test {row['test_ll']:.4f} train {row['train_ll']:.4f} "
                f"epochs {row['epochs_run']} (best {row['best_epoch']}) {row['s_per_epoch']:.3f} s/epoch, "
                f"setup {row['setup_s']:.1f} s, wall {row['wall_s']:.0f} s"
            )
            gap = row.get("restore_gap")
            if gap is not None and abs(gap) > 1e-3:
                log(
                    f"WARNING: restoring the best parameters gave valid {row['valid_ll']:.5f}, not {row['best_valid_during_training']:.5f}"
                )
        else:
            log(
                f"{row['dataset']:>10} {row['name']} seed {row['seed']}: {row['status']} {row.get('reason') or row.get('error', '')}"
            )
        due = []
        if row["phase"] == "grid":
            grid_left[row["dataset"]] -= 1
            n = row["dataset"]
            if grid_left[n] == 0 and n not in seeded:
                seeded.add(n)
                best = select(rows, n)
                if best is not None:
                    log(f"{n:>10}: selected {best['name']} (valid {best['valid_ll']:.4f})")
                    due = [task(n, best["point"], s, "seed") for s in range(1, args.seeds)]
        result["selected"] = [summary(rows, n, len(grids[n]), args.seeds) for n in names]
        result["elapsed_s"] = time.time() - t_start
        result["budget_reached"] = deadline is not None and time.time() > deadline
        write(result, out)
        return due

    queue = [task(n, p, 0, "grid") for n in names for p in grids[n]]

    def reuse(t: dict) -> dict | None:
        prev = previous.get(t["key"])
        return None if prev is None else {**prev, "phase": t["phase"]}

    if args.jobs == 1:
        while queue:
            t = queue.pop(0)
            queue += record(reuse(t) or run_one(t))
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            pending = {}
            while queue or pending:
                while queue:
                    t = queue.pop(0)
                    prev = reuse(t)
                    if prev is not None:
                        queue += record(prev)
                    else:
                        pending[pool.submit(run_one, t)] = t
                if not pending:
                    continue
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    t = pending.pop(f)
                    try:
                        row = f.result()
                    except Exception as e:  # noqa: BLE001 - a worker died
                        row = {k: t[k] for k in ("dataset", "seed", "point", "phase", "key")}
                        row.update(name=point_name(t["point"]), status="error", error=f"{type(e).__name__}: {e}")
                    queue += record(row)
    result["elapsed_s"] = time.time() - t_start
    write(result, out)
    print()
    print(out.with_suffix(".md").read_text().split("\n\nEvery grid run")[0])
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    errors = [r for r in rows if r["status"] == "error"]
    for r in errors[:3]:
        print(
            f"error in {r['dataset']} {r['name']} seed {r['seed']}: {r.get('traceback') or r['error']}", file=sys.stderr
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
