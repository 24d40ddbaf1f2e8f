"""One configuration on pcir: compile (with a per-stage breakdown), first step, timings, memory."""

from __future__ import annotations

import contextlib
import gc
import math
import time

import torch

import pcir
from pcir.backend import codegen, loader, plan, runtime

from .timing import Stopwatch, time_calls

STEP_SIZE = 0.1
PSEUDOCOUNT = 0.1


@contextlib.contextmanager
def stage_timers(out: dict):
    """Time pcir.compile's stages by wrapping the functions it calls (restored afterwards)."""

    def wrap(fn, key):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                out[key] = out.get(key, 0.0) + time.perf_counter() - t0

        return timed

    saved = [
        (plan, "lower", plan.lower),
        (codegen, "generate", codegen.generate),
        (loader, "load_source", loader.load_source),
        (runtime.CompiledCircuit, "__init__", runtime.CompiledCircuit.__init__),
    ]
    keys = {"lower": "lower_s", "generate": "codegen_s", "load_source": "load_s", "__init__": "module_init_s"}
    try:
        for obj, name, fn in saved:
            setattr(obj, name, wrap(fn, keys[name]))
        yield out
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def free(device: torch.device) -> int:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


def peak_mib(device: torch.device, base: int) -> float | None:
    if device.type != "cuda":
        return None
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)


def run(
    cfg,
    circuit,
    batches,
    device,
    *,
    precision: str,
    pipeline: str | None,
    profile: bool,
    timer_kw: dict,
    eager_too: bool = False,
) -> dict:
    out: dict = {}
    base = free(device)
    stages: dict = {}
    with stage_timers(stages), Stopwatch(device) as sw:
        model = pcir.compile(circuit, device=device, precision=precision, pipeline=pipeline)
    out["compile_api_s"] = round(sw.s, 3)
    out["compile_stages_s"] = {k: round(v, 3) for k, v in stages.items()}
    out["compile_stages_s"]["to_device_s"] = round(sw.s - sum(stages.values()), 3)
    s = model.plan.stats()
    out["engine"] = model._engine().name
    out["layers"] = s["layers"]
    out["launches_fwd_plan"] = s["launches_forward"]
    out["kernel_variants"] = len(codegen.variants(model.plan))
    if hasattr(model, "train_memory"):  # the memory the plan lists for a training step (pcir info --batch)
        mem = model.train_memory(cfg.batch)
        out["listed_mib"] = round(sum(sum(part.values()) for part in mem.values()) / 2**20, 1)
    x0 = batches[0]

    def step(x):  # one step of mini-batch EM (train_step: the tables updated inside the step)
        model.train_step(x, STEP_SIZE, PSEUDOCOUNT)

    with Stopwatch(device) as sw:
        with torch.no_grad():
            model(x0)
        step(x0)
    out["first_step_s"] = round(sw.s, 3)
    out["compile_s"] = round(out["compile_api_s"] + out["first_step_s"], 3)
    # the runtime captures its own CUDA graphs on the second call of a shape (if it has them)
    out["cuda_graphs"] = bool(getattr(model, "cuda_graphs", False))
    with Stopwatch(device) as sw:
        with torch.no_grad():
            model(x0)
        step(x0)
    out["second_step_s"] = round(sw.s, 3)
    with torch.no_grad():
        out.update(time_calls(lambda x: model(x), batches, device, **timer_kw).as_dict("fwd"))
    out.update(time_calls(step, batches, device, **timer_kw).as_dict("train"))
    if eager_too and out["cuda_graphs"]:
        model.cuda_graphs = False
        try:
            with torch.no_grad():
                out.update(time_calls(lambda x: model(x), batches, device, **timer_kw).as_dict("eager_fwd"))
            out.update(time_calls(step, batches, device, **timer_kw).as_dict("eager_train"))
        finally:
            model.cuda_graphs = True
    out["peak_mib"] = peak_mib(device, base)
    with torch.no_grad():
        ll = model(x0)
    out["ll_mean"] = float(ll.mean())
    if not math.isfinite(out["ll_mean"]):
        out["error"] = f"non-finite log-likelihood {out['ll_mean']}"
    if profile:
        from .profile import profile_pcir

        try:
            out["profile"] = profile_pcir(model, batches, device, step)
        except Exception as e:  # noqa: BLE001  (a profile failure must not lose the timings)
            out["profile"] = {"error": f"{type(e).__name__}: {e}"[:400]}
    model = None  # noqa: F841  (release the GPU memory before free())
    free(device)
    return out
