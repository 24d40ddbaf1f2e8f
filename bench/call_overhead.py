"""Where a graphed forward call's time goes beyond its kernels (GPU only).

The benchmark times ``model(x)`` from an idle device (record, call, record, sync), as a query
pays it; ``kernel_probe.py`` times back-to-back replays of the engine's forward, which hides the
graph's launch latency and the module's host work. This probe splits the difference, per
configuration and batch:

- ``call``: ``model(x)`` as the benchmark times it (median over ``--reps``); ``call_general``: the
  same through the general path (``CompiledCircuit._forward_replay`` switched off);
- ``replay1``: the module's own checked-forward graph replayed once from an idle device;
- ``replayN``: the same graph replayed back to back (per replay);
- ``host_*``: host microseconds of each part of the call, the device idle (``prelude``: the
  dtype/shape checks, the parameter-version check and the graph lookup; ``copy``: enqueueing the
  copy into the graph's input; ``replay``: enqueueing the replay; ``clone``: the output's clone;
  ``sync``: reading the data check's flag once the device is done);
- ``empty1``: a graph of one tiny kernel from an idle device (the floor of any graphed call);
- ``at_replay``, ``..._clone``, ``..._clone_flag``: the call's device work added part by part,
  each from an idle device (the data's address written, the replay, the output's clone, the
  flag); ``at_replay_clone_verdict``: the address, the replay, the clone and the wait for the
  data check's verdict word only (what the call does since the seventeenth session); ``copy_replay``: a copy into a static input then the replay (what the call paid before
  the graph read the caller's tensor); ``replay_flag``: the replay and the flag's read alone;
  ``engine_replayN``: the engine's forward alone (no data check, no root copy), back to back;
- ``flag_pinned_{stream,event,spin}``: a graph that also copies the flag into pinned host memory,
  replayed, then the stream synchronised, an event synchronised, or the pinned word polled
  (``replay1_pinned``: that graph alone).

    python bench/call_overhead.py --configs hmm-64,hclt-32,pd-32 --batch 512 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.suite import SUITE, Context, build_pcir  # noqa: E402
from harness.work import event_ms  # noqa: E402

import pcir  # noqa: E402


def idle_event_ms(fn, reps: int) -> float:
    return event_ms(fn, reps, idle=True)


def back_to_back_ms(fn, reps: int) -> float:
    """Milliseconds per call of ``reps`` calls of ``fn`` queued back to back (host work hidden)."""
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def host_us(fn, reps: int, sync_before: bool = True) -> float:
    out = []
    for _ in range(reps):
        if sync_before:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(out)


def probe(model, xs, reps: int) -> dict:
    x = xs[0]
    with torch.no_grad():
        for i in range(4):
            model(xs[i % len(xs)])
    torch.cuda.synchronize()
    key = ("forward-checked", tuple(x.shape), x.dtype)
    graph, word, out = model._graphs[key][:3]  # the graph reads the data at the address in word
    static = x.clone()  # a static input, for what copying into one costs
    r: dict = {}
    it = iter(range(1 << 30))

    def call():
        with torch.no_grad():
            model(xs[next(it) % len(xs)])

    r["call_ms"] = idle_event_ms(call, reps)
    model._forward_replay = lambda x: None  # the general path (before the short one existed)
    r["call_general_ms"] = idle_event_ms(call, reps)
    r["host_call_general_us"] = host_us(call, reps)
    del model._forward_replay
    r["replay1_ms"] = idle_event_ms(graph.replay, reps)
    r["replayN_ms"] = back_to_back_ms(graph.replay, reps)

    # the call's parts added one at a time, each from an idle device
    xi = xs[1]
    r["copy_replay_ms"] = idle_event_ms(lambda: (static.copy_(xi), graph.replay()), reps)
    r["at_replay_ms"] = idle_event_ms(lambda: (word.__setitem__(0, xi.data_ptr()), graph.replay()), reps)
    r["at_replay_clone_ms"] = idle_event_ms(
        lambda: (word.__setitem__(0, xi.data_ptr()), graph.replay(), out[0].clone()), reps
    )
    r["at_replay_clone_flag_ms"] = idle_event_ms(
        lambda: (word.__setitem__(0, xi.data_ptr()), graph.replay(), out[0].clone(), bool(out[1])), reps
    )
    r["replay_flag_ms"] = idle_event_ms(lambda: (graph.replay(), bool(out[1])), reps)
    # what the call does since the seventeenth session: the same, waiting for the data check's
    # verdict word only (runtime _data_ok), not for the end of the graph
    ent = model._graphs[key]
    r["at_replay_clone_verdict_ms"] = idle_event_ms(lambda: (model._replay_at(ent, xi), model._data_ok(ent)), reps)
    # the flag's read, other ways: a graph that also copies the flag into pinned host memory,
    # then the stream's synchronisation, an event's, or a spin on the pinned word
    pinned = torch.full((1,), -1, dtype=torch.int32, pin_memory=True)
    pin_np = pinned.numpy()
    st2 = [x.to(torch.float32)]
    with torch.no_grad():
        model._checked_forward_core(st2[0])
        torch.cuda.synchronize()
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2):
            o2, good2 = model._checked_forward_core(st2[0])
            pinned.copy_(good2.to(torch.int32).reshape(1), non_blocking=True)
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()

    def flag_read(wait):  # the replay, then ``wait`` until the pinned flag can be read
        def fn():
            pin_np[0] = -1
            g2.replay()
            wait()
            assert pin_np[0] == 1

        return fn

    def event_wait():
        e = torch.cuda.Event()
        e.record()
        e.synchronize()

    def spin():
        while pin_np[0] < 0:
            pass

    r["replay1_pinned_ms"] = idle_event_ms(g2.replay, reps)
    r["flag_pinned_stream_ms"] = idle_event_ms(flag_read(stream.synchronize), reps)
    r["flag_pinned_event_ms"] = idle_event_ms(flag_read(event_wait), reps)
    r["flag_pinned_spin_ms"] = idle_event_ms(flag_read(spin), reps)

    # the engine's forward alone (no data check, no root copy), as kernel_probe.py times it
    eng = model._engine()
    _, _, logp, W = model._cache
    xf = xs[0].to(torch.float32)
    eng.forward(W, logp, model.gauss, xf)
    ge = torch.cuda.CUDAGraph()
    with torch.cuda.graph(ge):
        eng.forward(W, logp, model.gauss, xf, precompile=False)
    r["engine_replayN_ms"] = back_to_back_ms(ge.replay, reps)
    del ge

    def prelude():
        with torch.no_grad():
            xf = model._to_device(x, keep_dtype=True)
            model._normalised_cached()
            model._graphs_on()
            model._graphs.get(("forward-checked", tuple(xf.shape), xf.dtype))

    r["host_prelude_us"] = host_us(prelude, reps)
    nop = _Nop()
    r["host_module_call_us"] = host_us(lambda: nop(x), reps)
    r["host_copy_us"] = host_us(lambda: static.copy_(x), reps)
    r["host_replay_us"] = host_us(graph.replay, reps)
    r["host_clone_us"] = host_us(lambda: out[0].clone(), reps)
    r["host_sync_us"] = host_us(lambda: bool(out[1]), reps)
    r["host_call_us"] = host_us(call, reps)  # the whole call, its final sync included
    tiny = torch.zeros(1, device=x.device)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        tiny.add_(1)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        tiny.add_(1)
    r["empty1_ms"] = idle_event_ms(g.replay, reps)
    return {k: round(v, 4) for k, v in r.items()}


class _Nop(torch.nn.Module):
    def forward(self, x):
        return x


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="hmm-64,hclt-32,pd-32,hclt-128")
    ap.add_argument("--batch", default="512")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--precision", default="tf32", help="as the benchmark (bench/run.py's default)")
    ap.add_argument("--json", default=None)
    return ap


def main() -> int:
    args = parser().parse_args()
    dev = torch.device("cuda")
    by_name = {c.name: c for c in SUITE}
    rows = []
    for name in args.configs.split(","):
        cfg = by_name[name]
        ctx = Context(dev, None)
        model = pcir.compile(build_pcir(cfg, ctx), device="cuda", precision=args.precision)
        for B in [int(b) for b in args.batch.split(",")]:
            d = ctx.dataset(cfg)
            xs = [d[i * B : (i + 1) * B].contiguous() for i in range(4)]
            row = {"config": name, "batch": B, **probe(model, xs, args.reps)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del model
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
