"""How much work a configuration is, and how fast the card can do work: the roofline floor.

Counting (per batch of ``B`` samples; everything float32, 4 bytes; see docs/benchmarks.md):

* ``E``: sum edges (every sum group's edges, a tied group counted once per use);
  ``P``: product edges; ``S``: distinct sum parameters (a tied array once);
  ``N``: stored node rows = input units + sum units (products are recomputed from their children,
  so a minimal implementation need not store them); ``Nin``: input units;
  ``C``: distinct categorical table entries; ``X``: ``B x num_vars`` data values.
* FLOPs: a sum edge is one multiply-add per sample in the linear domain (``2 E B``) in the forward
  pass, and two more matrix products in the backward pass (node flows and parameter flows:
  ``4 E B``); a product edge is one addition per sample in each direction (``P B``).
* Bytes, each input read once and each output written once per pass:
  forward ``4 (S + N B + min(C, Nin B) + X)`` (weights, node values written, leaf table reads,
  data); backward ``4 (S + 2 N B + S + min(C, Nin B) + X)`` (weights, values read and flows
  written, parameter flows and leaf counts written, data); EM step ``4 (3 S + 3 C)`` (flows and
  parameters read, parameters written).
* Floor of a phase = max(matrix FLOPs / matmul rate + product FLOPs / fp32 rate, bytes / copy
  bandwidth), with the rates measured on the card in the same run (:func:`card_ceilings`); the
  matmul rate is the one of the precision the kernels run in (tf32 by default).
"""

from __future__ import annotations

import statistics

import torch

from pcir.ir.circuit import Circuit, InputGroup, ProductGroup, SumGroup

BYTES = 4


def circuit_work(circuit: Circuit, batch: int) -> dict:
    """Sizes of ``circuit`` and the FLOPs and bytes of one forward pass and one train step."""
    E = P = S = N = Nin = C = 0
    seen: set[str] = set()
    for g in circuit:
        if isinstance(g, SumGroup):
            e = g.num_edges(circuit.num_columns(g.name))
            E += e
            N += g.units
            if g.params not in seen:
                seen.add(g.params)
                S += e
        elif isinstance(g, ProductGroup):
            P += g.units * len(g.children)
        else:
            assert isinstance(g, InputGroup)
            N += g.units
            Nin += g.units
            if g.params not in seen:
                seen.add(g.params)
                k = g.dist.arg("k") if g.dist.kind == "categorical" else (2 if g.dist.kind == "bernoulli" else 1)
                C += g.units * int(k or 1)
    B = batch
    X = B * circuit.num_vars
    leaf = min(C, Nin * B)
    fwd_bytes = BYTES * (S + N * B + leaf + X)
    bwd_bytes = BYTES * (2 * S + 2 * N * B + leaf + X)
    em_bytes = BYTES * (3 * S + 3 * C)
    return {
        "sum_edges": E,
        "prod_edges": P,
        "sum_params": S,
        "leaf_params": C,
        "stored_rows": N,
        "input_units": Nin,
        "mm_flops_fwd": 2 * E * B,
        "mm_flops_train": 6 * E * B,
        "ew_flops_fwd": P * B,
        "ew_flops_train": 2 * P * B,
        "bytes_fwd": fwd_bytes,
        "bytes_train": fwd_bytes + bwd_bytes + em_bytes,
    }


def floor_ms(work: dict, card: dict, phase: str, precision: str) -> dict:
    """The card's floor for ``phase`` ("fwd" or "train"): max of FLOP time and byte time."""
    rate = card.get(f"{precision}_TFLOPs")
    if precision == "tf32x3" and card.get("tf32_TFLOPs"):  # three tf32 products per product
        rate = card["tf32_TFLOPs"] / 3
    fp32 = card.get("fp32_TFLOPs")
    bw = card.get("copy_TBps")
    if not rate or not fp32 or not bw:
        return {}
    t_flop = work[f"mm_flops_{phase}"] / (rate * 1e12) + work[f"ew_flops_{phase}"] / (fp32 * 1e12)
    t_byte = work[f"bytes_{phase}"] / (bw * 1e12)
    return {
        f"floor_{phase}_ms": round(max(t_flop, t_byte) * 1e3, 4),
        f"floor_{phase}_bound": "flops" if t_flop >= t_byte else "bytes",
    }


def event_ms(fn, reps: int, idle: bool = False) -> float:
    """Median milliseconds of ``fn()`` between two device events; ``idle``: each call starts
    from an idle device (a synchronisation first), so its host work before the first launch
    counts, as a query pays it (bench/call_overhead.py)."""
    ts = []
    for _ in range(reps):
        if idle:
            torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def card_ceilings(device: torch.device) -> dict:
    """Copy bandwidth (bytes read + written) and 8192^3 matmul rates (fp32, tf32, bf16), measured now."""
    out: dict = {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if device.type != "cuda":
        return out
    props = torch.cuda.get_device_properties(device)
    out["sms"] = props.multi_processor_count
    out["memory_gib"] = round(props.total_memory / 2**30, 1)
    a = torch.randn(2**28, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ms = event_ms(lambda: b.copy_(a), 10)
    out["copy_TBps"] = round(2 * a.numel() * 4 / (ms * 1e-3) / 1e12, 2)
    a = b = None  # noqa: F841
    n = 8192
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dt, tf32 in [
            ("fp32", torch.float32, False),
            ("tf32", torch.float32, True),
            ("bf16", torch.bfloat16, False),
        ]:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            m = torch.randn(n, n, device=device, dtype=dt)
            k = torch.randn(n, n, device=device, dtype=dt)
            for _ in range(2):
                m @ k
            ms = event_ms(lambda m=m, k=k: m @ k, 5)
            out[f"{name}_TFLOPs"] = round(2 * n**3 / (ms * 1e-3) / 1e12, 1)
            del m, k
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    torch.cuda.empty_cache()
    return out
