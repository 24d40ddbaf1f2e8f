"""One configuration on PyJuice 2.6.3: compile, first step, eager timings, then with CUDA graphs.

PyJuice's fastest mode records CUDA graphs of its inner layers on a first call with
``record_cudagraph=True`` (forward and, through the backward hook, the flows); later calls with
the same batch size replay them. Input layers run eagerly in both modes, so rotating the input
batches is safe. Eager numbers are taken first, before any graph exists.

``eager=False`` (run.py: batches under ``EAGER_MIN_BATCH``) skips them and makes the recording
step the first, as ``../shared/bench/pyjuice_baseline.py`` does: PyJuice's first eager step at
batch 1 or 8 ran past 75-160 s on an H200 in every run of the harness (sessions 2-13), so the
batch-1 target never got a side-by-side number.
"""

from __future__ import annotations

import torch

from .pcir_side import PSEUDOCOUNT, STEP_SIZE, free, peak_mib
from .suite import pyjuice_graph_counts
from .timing import Stopwatch, time_calls

EAGER_MIN_BATCH = 64


def run(cfg, ns, batches, device, *, juice, timer_kw: dict, profile: bool, eager: bool = True) -> dict:
    out: dict = {}
    out["graph_nodes"], out["graph_edges"] = pyjuice_graph_counts(ns)
    base = free(device)
    with Stopwatch(device) as sw:
        pc = juice.compile(ns)
        pc.to(device)
    out["compile_api_s"] = round(sw.s, 3)
    out["nodes"] = int(pc.num_nodes)
    out["edges"] = int(pc.num_edges)
    out["params"] = int(pc.num_sum_params)
    out["layers"] = len(pc.inner_layer_groups)
    opt = juice.optim.MiniBatchEM(pc, step_size=STEP_SIZE, pseudocount=PSEUDOCOUNT)
    x0 = batches[0]

    def step(x, **kw):
        lls = pc(x, **kw)
        lls.mean().backward()
        opt.step()

    if not eager:
        out["eager_skipped"] = f"batch {cfg.batch} < {EAGER_MIN_BATCH}: the recording step ran first"
        _graphs(out, pc, step, x0, batches, device, base, timer_kw, first=True)
        return _finish(out, pc, x0, device)
    with Stopwatch(device) as sw:
        with torch.no_grad():
            pc(x0)
        step(x0)
    out["first_step_s"] = round(sw.s, 3)
    out["compile_s"] = round(out["compile_api_s"] + out["first_step_s"], 3)
    with torch.no_grad():
        out.update(time_calls(lambda x: pc(x), batches, device, **timer_kw).as_dict("eager_fwd"))
    out.update(time_calls(step, batches, device, **timer_kw).as_dict("eager_train"))
    out["eager_peak_mib"] = peak_mib(device, base)
    if profile:
        from .profile import count_launches

        try:
            out["profile"] = {"eager_train": count_launches(lambda: step(x0), device)}
        except Exception as e:  # noqa: BLE001
            out["profile"] = {"error": f"{type(e).__name__}: {e}"[:400]}
    _graphs(out, pc, step, x0, batches, device, base, timer_kw, first=False)
    return _finish(out, pc, x0, device)


def _graphs(out, pc, step, x0, batches, device, base, timer_kw, *, first: bool) -> None:
    """Record PyJuice's CUDA graphs with one training step, time the replays, finish ``out``.
    ``first``: that step is the model's first (it then counts as the first step and compile)."""
    try:
        with Stopwatch(device) as sw:
            step(x0, record_cudagraph=True)
        out["record_s"] = round(sw.s, 3)
        if first:
            out["first_step_s"] = out["record_s"]
            out["compile_s"] = round(out["compile_api_s"] + out["first_step_s"], 3)
        with torch.no_grad():
            out.update(time_calls(lambda x: pc(x), batches, device, **timer_kw).as_dict("fwd"))
        out.update(time_calls(step, batches, device, **timer_kw).as_dict("train"))
    except Exception as e:  # noqa: BLE001  (keep the eager numbers)
        if first:
            raise
        out["graph_error"] = f"{type(e).__name__}: {e}"[:400]
    out["peak_mib"] = peak_mib(device, base)


def _finish(out, pc, x0, device) -> dict:
    with torch.no_grad():
        out["ll_mean"] = float(pc(x0).mean())
    return out
