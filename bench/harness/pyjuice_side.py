"""One configuration on PyJuice 2.6.3: compile, first step, eager timings, then with CUDA graphs.

PyJuice's fastest mode records CUDA graphs of its inner layers on a first call with
``record_cudagraph=True`` (forward and, through the backward hook, the flows); later calls with
the same batch size replay them. Input layers run eagerly in both modes, so rotating the input
batches is safe. Eager numbers are taken first, before any graph exists.
"""

from __future__ import annotations

import torch

from .pcir_side import PSEUDOCOUNT, STEP_SIZE, free, peak_mib
from .suite import pyjuice_graph_counts
from .timing import Stopwatch, time_calls


def run(cfg, ns, batches, device, *, juice, timer_kw: dict, profile: bool) -> dict:
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
    try:
        with Stopwatch(device) as sw:
            step(x0, record_cudagraph=True)
        out["record_s"] = round(sw.s, 3)
        with torch.no_grad():
            out.update(time_calls(lambda x: pc(x), batches, device, **timer_kw).as_dict("fwd"))
        out.update(time_calls(step, batches, device, **timer_kw).as_dict("train"))
    except Exception as e:  # noqa: BLE001  (keep the eager numbers)
        out["graph_error"] = f"{type(e).__name__}: {e}"[:400]
    out["peak_mib"] = peak_mib(device, base)
    with torch.no_grad():
        out["ll_mean"] = float(pc(x0).mean())
    pc = opt = ns = None  # noqa: F841  (release the GPU memory before free())
    free(device)
    return out
