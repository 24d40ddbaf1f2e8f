"""Quick timing of the Triton backend on an HCLT-like circuit (784 vars, 256 categories, batch 512),
optionally beside PyJuice 2.6.3 in the same process on the same card.

Usage (GPU machine): python bench/quick_backend.py [--latents 32,128] [--pyjuice] [--out FILE]
Prints one JSON line per configuration and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import pcir
from pcir.ir import CircuitBuilder, Dist, Domain


def smooth_images(n, dev, h=28, w=28, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(n, 1, h, w, device=dev, generator=g)
    k = torch.ones(1, 1, 5, 5, device=dev) / 25
    x = torch.nn.functional.conv2d(x, k, padding=2)
    x = (x - x.mean()) / x.std()
    return ((x * 64 + 128).clamp(0, 255)).long().reshape(n, h * w)


def chow_liu_children(data: torch.Tensor, bins: int = 16):
    """A Chow-Liu tree (MI on binned values), rooted at its centre: children lists and root."""
    import networkx as nx

    n, v = data.shape
    xb = (data.float() * bins / 256).long().clamp(0, bins - 1)
    oh = torch.nn.functional.one_hot(xb, bins).float().reshape(n, v * bins)
    joint = (oh.t() @ oh).reshape(v, bins, v, bins) / n + 1e-9
    pm = torch.stack([joint[i, :, i, :].diagonal() for i in range(v)])
    mi = (joint * (joint.log() - pm.log()[:, :, None, None] - pm.log()[None, None, :, :])).sum((1, 3))
    mi = mi.cpu().numpy()
    g = nx.Graph()
    for i in range(v):
        for j in range(i + 1, v):
            g.add_edge(i, j, weight=float(mi[i, j]))
    t = nx.maximum_spanning_tree(g)
    ecc = nx.eccentricity(t)
    root = min(ecc, key=ecc.get)
    children = [[] for _ in range(v)]
    for parent, child in nx.bfs_edges(t, root):
        children[parent].append(child)
    depth = max(nx.single_source_shortest_path_length(t, root).values())
    return children, root, depth


def build_hclt(children, root, latents, cats=256):
    b = CircuitBuilder(seed=0)
    b.variables(len(children), Domain.categorical(cats))
    dist = Dist.make("categorical", k=cats)
    region = {}
    order, stack = [], [(root, False)]
    while stack:
        u, done = stack.pop()
        if done:
            order.append(u)
            continue
        stack.append((u, True))
        stack.extend((c, False) for c in children[u])
    for v in order:
        leaf = b.input(v, latents, dist, name=f"in{v}")
        if not children[v] and v != root:
            region[v] = leaf
            continue
        prod = b.product([region[c] for c in children[v]] + [leaf], pattern="aligned", name=f"p{v}")
        region[v] = b.sum([prod], 1 if v == root else latents, name=f"s{v}")
    b.root(region[root])
    return b.build()


PROFILE = "--profile" in sys.argv


def cuda_time(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def bench_ours(name, circuit, data, B, precision, rows, extra=True):
    dev = data.device
    t0 = time.time()
    model = pcir.compile(circuit, device=dev, precision=precision)
    x = data[:B]
    with torch.no_grad():
        model(x)  # JIT-compiles the forward kernels
    model.forward_backward(x)
    model.em_step(0.1, 0.1)
    torch.cuda.synchronize()
    compile_s = time.time() - t0
    torch.cuda.reset_peak_memory_stats()
    res = {}
    for graphs in (True, False) if extra else (True,):
        model.cuda_graphs = graphs
        tag = "" if graphs else "_eager"
        with torch.no_grad():
            res["fwd_ms" + tag] = round(cuda_time(lambda: model(x)), 3)

        def step():
            model.forward_backward(x)
            model.em_step(0.1, 0.1)

        res["train_ms" + tag] = round(cuda_time(step), 3)
        if extra and graphs:
            res["fb_ms"] = round(cuda_time(lambda: model.forward_backward(x)), 3)
            model.zero_flows()
            res["em_ms"] = round(cuda_time(lambda: model.em_step(0.1, 0.1)), 3)
    model.cuda_graphs = True
    if PROFILE and extra:
        from torch.profiler import ProfilerActivity, profile

        model.cuda_graphs = False
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                model.forward_backward(x)
                model.em_step(0.1, 0.1)
            torch.cuda.synchronize()
        model.cuda_graphs = True
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=40), flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**20
    with torch.no_grad():
        ll = model(x).mean().item()
    s = circuit.stats()
    out = dict(
        sys=f"pcir-{precision}",
        model=name,
        B=B,
        nodes=s["nodes"],
        edges=s["edges"],
        params=s["params"],
        layers=len(model.plan.layers),
        compile_s=round(compile_s, 2),
        **res,
        peak_mib=round(peak, 1),
        ll=ll,
    )
    print(json.dumps(out), flush=True)
    rows.append(out)
    return model


def check_against_torch(circuit, data, B, rows):
    """Triton (tf32 and fp32) vs the plain-torch executor and float64 on one batch."""
    x = data[:B]
    ref = pcir.compile(circuit, device=x.device, engine="torch")
    with torch.no_grad():
        llr = ref(x).double()
    xd = x.double()
    res = {}
    for prec in ("fp32", "tf32", "tf32x3", "bf16"):
        m = pcir.compile(circuit, device=x.device, precision=prec)
        with torch.no_grad():
            ll = m(x).double()
        res[prec] = float((ll - llr).abs().max())
        m.forward_backward(x)
        ref.zero_flows()
        ref.forward_backward(x)
        rel = float((m.sum_flows - ref.sum_flows).norm() / ref.sum_flows.norm())
        res[prec + "_flow_rel"] = rel
    del xd
    out = dict(
        check="triton vs torch engine (max abs ll diff, rel flow err)", **{k: float(f"{v:.3g}") for k, v in res.items()}
    )
    print(json.dumps(out), flush=True)
    rows.append(out)


def bench_pyjuice(name, latents, data, B, rows):
    """PyJuice's HCLT of the same width (its own Chow-Liu tree): eager, then with CUDA graphs."""
    import pyjuice as juice
    import pyjuice.nodes.distributions as dists

    t0 = time.time()
    ns = juice.structures.HCLT(data.float(), num_latents=latents, input_dist=dists.Categorical(num_cats=256))
    pc = juice.compile(ns)
    pc.to(data.device)
    compile_s = time.time() - t0
    opt = juice.optim.MiniBatchEM(pc, step_size=0.1, pseudocount=0.1)
    x = data[:B]
    for cudagraph in (False, True):
        if cudagraph:
            lls = pc(x, record_cudagraph=True)
            lls.mean().backward()
            opt.step()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            fwd = cuda_time(lambda: pc(x))

        def step():
            lls = pc(x)
            lls.mean().backward()
            opt.step()

        train = cuda_time(step)
        peak = torch.cuda.max_memory_allocated() / 2**20
        out = dict(
            sys="pyjuice" + ("+cudagraph" if cudagraph else ""),
            model=name,
            B=B,
            nodes=int(pc.num_nodes),
            edges=int(pc.num_edges),
            params=int(pc.num_sum_params),
            compile_s=round(compile_s, 2),
            fwd_ms=round(fwd, 3),
            train_ms=round(train, 3),
            peak_mib=round(peak, 1),
        )
        print(json.dumps(out), flush=True)
        rows.append(out)
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latents", default="32,128")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--pyjuice", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="other precisions and batch 1/8 on the widest HCLT")
    ap.add_argument("--precision", default="tf32x3")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="kernel time table of 3 eager train steps")
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = [dict(card=torch.cuda.get_device_name(), torch=torch.__version__)]
    print(json.dumps(rows[0]), flush=True)
    data = smooth_images(4096, dev)
    t0 = time.time()
    children, root, depth = chow_liu_children(data)
    print(json.dumps(dict(tree_s=round(time.time() - t0, 2), depth=depth)), flush=True)
    for L in [int(v) for v in args.latents.split(",")]:
        c = build_hclt(children, root, L)
        if L == 32:
            check_against_torch(c, data, 64, rows)
        bench_ours(f"hclt-{L}", c, data, args.batch, args.precision, rows)
        if args.sweep and L == max(int(v) for v in args.latents.split(",")):
            for prec in ("tf32", "bf16", "fp32"):
                bench_ours(f"hclt-{L}", c, data, args.batch, prec, rows, extra=False)
            for b1 in (1, 8):
                bench_ours(f"hclt-{L}-B{b1}", c, data, b1, args.precision, rows, extra=False)
        if args.pyjuice:
            try:
                bench_pyjuice(f"hclt-{L}", L, data, args.batch, rows)
            except Exception as e:  # noqa: BLE001
                print(json.dumps(dict(sys="pyjuice", model=f"hclt-{L}", error=repr(e)[:300])), flush=True)
    print("\n| sys | model | layers | fwd ms | train ms | compile s | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "fwd_ms" in r:
            print(
                f"| {r['sys']} | {r['model']} | {r.get('layers', '')} | {r['fwd_ms']} | {r['train_ms']} | {r['compile_s']} | {r['peak_mib']} |"
            )
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
