"""Why a configuration is slow: per-layer kernel times, launch counts and the top kernels.

``profile_pcir`` wraps the Triton engine's kernel module in a proxy that puts a pair of device
events around every launch, runs one train step (eagerly: with the runtime's own CUDA graphs
switched off for that step, since a replayed graph bypasses the proxy), and maps the launches back to the kernel plan's
layers (the engine launches, in order: one input kernel per leaf family, one kernel per layer;
then per layer in reverse, the parameter-flow and column-flow kernels of a sum layer or one kernel
of a product layer; then one leaf-statistics kernel per family). Then it runs one step under
``torch.profiler`` and reports the number of kernels, their total device time against the step's
wall time (a low ratio means the step is launch- or host-bound) and the kernels that cost most.
"""

from __future__ import annotations

import time

import torch


class _TimedLauncher:
    def __init__(self, name, fn, log):
        self.name, self.fn, self.log = name, fn, log

    def __getitem__(self, grid):
        launcher = self.fn[grid]

        def call(*a, **k):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            r = launcher(*a, **k)
            e.record()
            self.log.append((self.name, tuple(grid), s, e))
            return r

        return call


class _TimedKernels:
    def __init__(self, mod, log):
        self._mod, self._log = mod, log

    def __getattr__(self, name):
        from triton.runtime.jit import JITFunction

        try:  # under TRITON_INTERPRET=1 the kernels are interpreter objects
            from triton.runtime.interpreter import InterpretedFunction

            kernel_types: tuple = (JITFunction, InterpretedFunction)
        except ImportError:  # pragma: no cover
            kernel_types = (JITFunction,)
        attr = getattr(self._mod, name)
        return _TimedLauncher(name, attr, self._log) if isinstance(attr, kernel_types) else attr


def _layer_edges(model, layer) -> int:
    c = model.circuit
    e = 0
    for g in layer.groups:
        grp = c.group(g.name)
        if hasattr(grp, "num_edges"):
            e += grp.num_edges(c.num_columns(g.name))
    return e


def per_layer(model, x, device, step) -> dict:
    """Per-layer forward/backward kernel times of one train step (device events per launch)."""
    eng = model._engine()
    if not hasattr(eng, "k"):
        return {"error": f"engine {eng.name} has no kernel module"}
    log: list = []
    orig = eng.k
    eng.k = _TimedKernels(orig, log)
    graphs = getattr(model, "cuda_graphs", None)
    if graphs:  # replayed graphs bypass the launch proxy: time this step eagerly
        model.cuda_graphs = False
    try:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        s.record()
        model.forward_backward(x)
        mid = torch.cuda.Event(enable_timing=True)
        mid.record()
        n_fb = len(log)  # launches of forward_backward; em_step's row kernels follow
        model.em_step(0.1, 0.1)
        e.record()
        torch.cuda.synchronize(device)
    finally:
        eng.k = orig
        if graphs:
            model.cuda_graphs = graphs
    # the row-wise parameter passes (EM; the normalisation a first call does) and the data check
    # are not layer launches
    rowwise = ("em_sum_rows", "em_cat_rows", "em_cat_prep", "em_cat_log", "normalise_rows", "check_data")
    times = [(name, grid, st.elapsed_time(en)) for name, grid, st, en in log[:n_fb] if name not in rowwise]
    em_kernels_ms = sum(st.elapsed_time(en) for _, _, st, en in log[n_fb:])
    plan = model.plan
    n_in = len(eng.inputs)
    n_stats = 0
    for b, _, _ in eng.inputs:
        if b.family == "gaussian":
            n_stats += 1
        elif b.family == "categorical":  # matrix-product counts and/or scatter counts
            n_stats += int(getattr(eng, "count_n", 1) > 0) + int(getattr(eng, "scatter_n", 0) > 0)
    layers = plan.layers
    B = x.shape[0]
    fb_ms = s.elapsed_time(mid)
    em_ms = mid.elapsed_time(e)
    # each layer's backward launches: 1 for products, 2-4 for sums (triton_engine.bwd_launches)
    if hasattr(eng, "bwd_launch_counts"):  # a chained run's one backward launch on its top layer
        n_bwd = eng.bwd_launch_counts(B)
    else:
        n_bwd = [
            eng.bwd_launches(L, B) if layer.kind == "sum" else 1 for L, layer in zip(eng.layers, layers, strict=True)
        ]
    # a chained run's one launch (triton_engine.CHAIN) counts on its first layer, 0 on the rest
    n_fwd = eng.fwd_launch_counts(B) if hasattr(eng, "fwd_launch_counts") else [1] * len(layers)
    expected = n_in + sum(n_fwd) + sum(n_bwd) + n_stats
    if len(times) != expected:  # the engine launches differently from what this mapping knows
        by_name: dict[str, list[float]] = {}
        for name, _, t in times:
            by_name.setdefault(name, []).append(t)
        return {
            "note": f"{len(times)} launches logged, {expected} expected: per-kernel totals only",
            "forward_backward_ms": round(fb_ms, 4),
            "em_step_ms": round(em_ms, 4),
            "em_triton_kernels_ms": round(em_kernels_ms, 4),
            "outside_triton_kernels_ms": round(fb_ms - sum(t for _, _, t in times), 4),
            "by_kernel": {n: {"count": len(v), "ms": round(sum(v), 4)} for n, v in by_name.items()},
        }
    rows = []
    i = 0
    fwd_in = sum(t for _, _, t in times[i : i + n_in])
    i += n_in
    for layer, nf in zip(layers, n_fwd, strict=True):
        name, grid, _ = times[i] if nf else ("(in the chained launch above)", (), 0.0)
        t = sum(tt for _, _, tt in times[i : i + nf])
        i += nf
        rows.append(
            {
                "layer": layer.index,
                "kind": layer.kind,
                "groups": len(layer.groups),
                "units": sum(g.units for g in layer.groups),
                "k_max": max((getattr(g, "k", 0) for g in layer.groups), default=0),
                "arity": layer.arity,
                "tile": [layer.block_m, layer.block_k] if layer.kind == "sum" else None,
                "edges": _layer_edges(model, layer),
                "fwd_kernel": name,
                "fwd_grid": list(grid),
                "fwd_ms": round(t, 4),
                "bwd_ms": 0.0,
            }
        )
    for row, n in zip(reversed(rows), reversed(n_bwd), strict=True):
        row["bwd_ms"] = round(sum(t for _, _, t in times[i : i + n]), 4)
        row["bwd_kernels"] = [nm for nm, _, _ in times[i : i + n]]
        i += n
    stats_ms = sum(t for _, _, t in times[i:])
    for row in rows:
        if row["kind"] == "sum" and row["fwd_ms"] > 0:
            row["fwd_TFLOPs"] = round(2 * row["edges"] * B / (row["fwd_ms"] * 1e-3) / 1e12, 2)
            if row["bwd_ms"] > 0:
                row["bwd_TFLOPs"] = round(4 * row["edges"] * B / (row["bwd_ms"] * 1e-3) / 1e12, 2)
    kern = fwd_in + sum(r["fwd_ms"] + r["bwd_ms"] for r in rows) + stats_ms
    return {
        "launches_logged": len(times),
        "input_fwd_ms": round(fwd_in, 4),
        "input_stats_ms": round(stats_ms, 4),
        "layer_kernels_ms": round(sum(r["fwd_ms"] + r["bwd_ms"] for r in rows), 4),
        "forward_backward_ms": round(fb_ms, 4),
        "em_step_ms": round(em_ms, 4),
        "em_triton_kernels_ms": round(em_kernels_ms, 4),
        "outside_triton_kernels_ms": round(fb_ms - kern, 4),
        "layers": rows,
    }


def count_launches(fn, device, top: int = 12) -> dict:
    """Kernels launched by ``fn()`` (one call, after warm-up), their device time and the top ones."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        wall = (time.perf_counter() - t0) * 1e3
    kernels = [ev for ev in prof.events() if str(getattr(ev, "device_type", "")).endswith("CUDA")]
    per_name: dict[str, list[float]] = {}
    for ev in kernels:
        t = getattr(ev, "device_time", None)
        if t is None:
            t = getattr(ev, "cuda_time", 0.0)
        per_name.setdefault(ev.name, []).append(float(t) / 1e3)
    total = sum(sum(v) for v in per_name.values())
    ranked = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "kernels": len(kernels),
        "kernel_ms": round(total, 4),
        "wall_ms_profiled": round(wall, 3),
        "top": [{"name": n[:90], "count": len(v), "ms": round(sum(v), 4)} for n, v in ranked],
    }


def profile_pcir(model, batches, device, step) -> dict:
    if device.type != "cuda":
        return {"error": "profiling needs a CUDA device"}
    x = batches[0]
    out = {"per_layer": per_layer(model, x, device, step)}
    out["train_step"] = count_launches(lambda: step(x), device)
    with torch.no_grad():
        out["forward"] = count_launches(lambda: model(x), device)
    return out
