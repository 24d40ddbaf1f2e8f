"""Data-parallel EM throughput: HCLT-512 and PD-256 (28x28, 256 categories) on 1 and N GPUs, one run.

    torchrun --nproc_per_node=2 bench/bench_scaling.py                 # both configurations, 1 vs 2 GPUs
    torchrun --nproc_per_node=2 bench/bench_scaling.py --batch 1024 --md bench/results/scaling.md
    torchrun --nproc_per_node=2 bench/bench_scaling.py --device cpu --smoke   # check the script (gloo)

One training step is mini-batch EM as ``pcir train`` runs it: ``forward_backward`` on the rank's
batch, the all-reduce of the flows (:mod:`pcir.distributed`), ``em_step``. For every configuration:

1. **1 GPU**: rank 0 alone trains on batches of ``--batch`` (the others wait at a barrier);
2. **N GPUs**: every rank trains on its own ``--batch`` samples per step (weak scaling: the
   global batch is N x ``--batch``; ``--strong`` keeps the global batch at ``--batch``);
3. the all-reduce alone, timed on the same buffers (bus bandwidth as NCCL's tests report it).

Throughput is samples per second of the whole group (the slowest rank's time). Scaling is
N-GPU throughput / 1-GPU throughput. The table goes to stdout (rank 0); ``--json``/``--md`` write
it to files. Data are random smooth 8-bit images (a 5x5 box blur of noise), the HCLT tree is
learnt from them on rank 0 and sent to the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import pcir
from pcir import distributed, structures
from pcir.structures import chow_liu


@dataclass(frozen=True)
class Config:
    name: str
    family: str  # hclt | pd
    latents: int
    h: int = 28
    w: int = 28
    cats: int = 256
    split: int = 4


CONFIGS = {
    "hclt-512": Config("hclt-512", "hclt", 512),
    "pd-256": Config("pd-256", "pd", 256),
    # small ones: a quick look, and --smoke on the CPU
    "hclt-128": Config("hclt-128", "hclt", 128),
    "pd-64": Config("pd-64", "pd", 64),
    "smoke-hclt": Config("smoke-hclt", "hclt", 8, h=6, w=6, cats=8),
    "smoke-pd": Config("smoke-pd", "pd", 8, h=4, w=4, cats=8, split=2),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="hclt-512,pd-256", help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--batch", default="512", help="samples per GPU per step, or a list: 512,2048 (default 512)")
    ap.add_argument("--strong", action="store_true", help="keep the global batch at --batch (split over GPUs)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (JIT, CUDA graphs)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--precision", default="tf32", choices=["tf32", "fp32", "bf16"])
    ap.add_argument("--bucket-mb", type=float, default=distributed.DEFAULT_BUCKET_MB, help="all-reduce bucket size")
    ap.add_argument("--tree", choices=["learn", "chain"], default="learn", help="HCLT tree: Chow-Liu or a chain")
    ap.add_argument("--smoke", action="store_true", help="tiny configurations, 2 steps (checks the script)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--md", metavar="OUT", help="also write the table as Markdown")
    ap.add_argument("--timeout", type=float, default=3600.0, help="distributed timeout (the baseline runs alone)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.configs, args.steps, args.warmup, args.batch = "smoke-hclt,smoke-pd", 2, 1, "16,32"
    args.batches = [int(b) for b in str(args.batch).split(",") if b.strip()]
    return args


# ---- data and structures ------------------------------------------------------------------------
def smooth_images(n: int, cfg: Config, device, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, 1, cfg.h, cfg.w, generator=g)
    k = torch.ones(1, 1, 5, 5) / 25
    x = torch.nn.functional.conv2d(x, k, padding=2)
    x = (x - x.mean()) / x.std()
    x = (x * cfg.cats / 4 + cfg.cats / 2).clamp(0, cfg.cats - 1).long().reshape(n, cfg.h * cfg.w)
    return x.to(device)


def build(cfg: Config, comm, args, device) -> pcir.Circuit:
    dist = f"categorical(k={cfg.cats})"
    if cfg.family == "pd":
        return structures.pd(cfg.h, cfg.w, cfg.latents, split_intervals=(cfg.split, cfg.split), input_dist=dist)
    nv = cfg.h * cfg.w
    if args.tree == "chain":
        edges = [(i, i + 1) for i in range(nv - 1)]
    else:  # rank 0 learns the tree, every rank builds the same structure from it

        def learn():
            x = smooth_images(4096, cfg, device, seed=12345).cpu().numpy()
            dev = "cuda" if device.type == "cuda" else "cpu"
            return chow_liu.chow_liu_tree(x, estimator="soft", device=dev)

        edges = [tuple(e) for e in comm.on_main(learn, share=True)]
    return structures.hclt(tree=edges, num_vars=nv, num_latents=cfg.latents, input_dist=dist)


# ---- timing --------------------------------------------------------------------------------------
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model, batches, comm, steps: int, device) -> float:
    """Seconds per mini-batch EM step (this rank), over ``steps`` steps cycling through ``batches``."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        model.forward_backward(batches[i % len(batches)])
        comm.em_step(model, step_size=0.1, pseudocount=0.1)
    sync(device)
    return (time.perf_counter() - t0) / steps


def slowest(comm, seconds: float) -> float:
    """The largest of the ranks' values (all ranks get it)."""
    parts = comm.sum_floats([seconds if r == comm.rank else 0.0 for r in range(comm.world_size)])
    return max(parts)


def allreduce_time(model, comm, steps: int, device) -> float:
    comm.all_reduce_flows(model)  # warm
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        comm.all_reduce_flows(model)
    sync(device)
    model.zero_flows()
    return (time.perf_counter() - t0) / steps


@dataclass
class Row:
    config: str
    params: int
    flow_mb: float
    batch_per_gpu_1: int
    batch_per_gpu_n: int
    gpus: int
    step_ms_1: float | None = None
    samples_s_1: float | None = None
    step_ms_n: float | None = None
    samples_s_n: float | None = None
    scaling: float | None = None
    allreduce_ms: float | None = None
    busbw_gb_s: float | None = None
    comm_share: float | None = None
    error: str | None = None


def run_config(cfg: Config, comm, args, device) -> list[Row]:
    """Compile ``cfg`` once, then measure every batch size of ``--batch``."""
    circuit = build(cfg, comm, args, device)
    model = pcir.compile(circuit, device=device, precision=args.precision)
    comm.broadcast_params(model)
    params = circuit.stats()["params"]
    data = smooth_images(4 * max(args.batches) * comm.world_size, cfg, device, seed=1 + comm.rank)
    rows = [measure(model, data, batch, params, cfg, comm, args, device) for batch in args.batches]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def measure(model, data, batch: int, params: int, cfg: Config, comm, args, device) -> Row:
    world = comm.world_size
    nbytes = distributed.flow_bytes(model)
    per_gpu_n = max(1, batch // world) if args.strong else batch
    row = Row(cfg.name, params, nbytes / 2**20, batch, per_gpu_n, world)
    b1 = [data[i * batch : (i + 1) * batch].contiguous() for i in range(4)]
    bn = [data[i * per_gpu_n : (i + 1) * per_gpu_n].contiguous() for i in range(4)]
    local = distributed.LocalComm()

    # 1. one GPU: rank 0 alone (plain EM, no communication at all)
    if comm.is_main:
        train_steps(model, b1, local, args.warmup, device)
        t1 = train_steps(model, b1, local, args.steps, device)
        row.step_ms_1, row.samples_s_1 = 1e3 * t1, batch / t1
    comm.barrier()
    sync(device)  # NCCL: the barrier is on the GPU stream; wait for it on the host too
    comm.broadcast_params(model)  # rank 0 trained on: every rank starts the N-GPU phase equal

    if world == 1:
        return row
    # 2. N GPUs: every rank its own batch, flows all-reduced before every EM step
    train_steps(model, bn, comm, args.warmup, device)
    tn = slowest(comm, train_steps(model, bn, comm, args.steps, device))
    row.step_ms_n, row.samples_s_n = 1e3 * tn, per_gpu_n * world / tn
    if row.samples_s_1:
        row.scaling = row.samples_s_n / row.samples_s_1

    # 3. the all-reduce alone
    if world > 1:
        ta = slowest(comm, allreduce_time(model, comm, max(3, args.steps // 2), device))
        row.allreduce_ms = 1e3 * ta
        row.busbw_gb_s = 2 * (world - 1) / world * nbytes / ta / 1e9
        row.comm_share = ta / tn
    if not comm.params_in_sync(model):
        row.error = "parameters differ between ranks after the N-GPU phase"
    return row


# ---- output --------------------------------------------------------------------------------------
def fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(rows: list[Row], world: int, header: dict) -> str:
    n = world
    lines = [
        f"pcir data-parallel EM, {header['device_name']} x{n}, torch {header['torch']}, {header['backend']}, "
        f"{'strong' if header['strong'] else 'weak'} scaling, {header['date']}",
        "",
        f"| config | params | flows (MB) | batch/GPU (1 -> {n}) | 1 GPU step (ms) | 1 GPU samples/s "
        f"| {n} GPU step (ms) | {n} GPU samples/s | scaling | all-reduce (ms) | bus GB/s | comm share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error and r.samples_s_n is None:
            lines.append(f"| {r.config} | {r.params or '-'} | | | error: {r.error} | | | | | | | |")
            continue
        lines.append(
            f"| {r.config} | {r.params / 1e6:.3g}M | {r.flow_mb:.4g} | {r.batch_per_gpu_1} -> {r.batch_per_gpu_n} "
            f"| {fmt(r.step_ms_1, '.2f')} | {fmt(r.samples_s_1, ',.0f')} | {fmt(r.step_ms_n, '.2f')} "
            f"| {fmt(r.samples_s_n, ',.0f')} | {fmt(r.scaling, '.2f')}x | {fmt(r.allreduce_ms, '.2f')} "
            f"| {fmt(r.busbw_gb_s, '.0f')} | {fmt(r.comm_share and 100 * r.comm_share, '.0f')}% |"
            + (f" {r.error}" if r.error else "")
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        print(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    if distributed.launched():
        comm = distributed.init(device=args.device, timeout_s=args.timeout, bucket_mb=args.bucket_mb)
    else:  # plain python: the 1-GPU baseline only
        comm = distributed.LocalComm()
        comm.device = distributed.pick_device(args.device, 0)
        print("not under torchrun: measuring 1 GPU only (torchrun --nproc_per_node=2 for the comparison)")
    device = comm.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    header = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "backend": comm.backend or "none",
        "strong": args.strong,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "args": vars(args),
    }
    rows: list[Row] = []
    for name in names:
        cfg = CONFIGS[name]
        try:
            new = run_config(cfg, comm, args, device)
        except Exception as e:  # noqa: BLE001  (one failure must not lose the other rows)
            if isinstance(e, distributed.DistributedError):
                raise  # the group is broken: nothing more can be measured
            b = args.batches[0]
            new = [Row(cfg.name, 0, 0.0, b, b, comm.world_size, error=f"{type(e).__name__}: {e}")]
            traceback.print_exc()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # an error on one rank (e.g. out of memory) must not leave the others waiting: a rank
        # that failed stops before its next collective, the others learn it here
        failed = comm.sum_floats([1.0 if any(r.error for r in new) else 0.0])[0]
        for r in new:
            if failed and not r.error:
                r.error = "failed on another rank"
            rows.append(r)
            if comm.is_main:
                print(json.dumps(asdict(r)), flush=True)
    if comm.is_main:
        text = table(rows, comm.world_size, header)
        print()
        print(text)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1))
        if args.md:
            Path(args.md).parent.mkdir(parents=True, exist_ok=True)
            Path(args.md).write_text(text + "\n")
    comm.barrier()
    comm.close()
    ok = all(r.error is None for r in rows)
    if comm.is_main and comm.world_size > 1:
        scal = [r.scaling for r in rows if r.scaling]
        if scal:
            print(f"\nscaling: {', '.join(f'{r.config} {r.scaling:.2f}x' for r in rows if r.scaling)}")
            print(f"geometric mean {statistics.geometric_mean(scal):.2f}x on {comm.world_size} GPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
