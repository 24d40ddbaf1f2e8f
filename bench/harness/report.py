"""Ratios, target checks and the markdown tables printed at the end of a run."""

from __future__ import annotations

# issue 7's targets: our/PyJuice ratio at most this (PyJuice in its fastest mode, CUDA graphs)
TARGETS = {"train": 0.5, "fwd": 0.5, "peak": 0.7, "compile": 0.25}
ROOFLINE_TARGET = 0.30  # largest HCLT and PD: fraction of the card's floor
ROOFLINE_CONFIGS = ("hclt-512", "pd-256")


def _ratio(a, b):
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def add_ratios(row: dict) -> None:
    """our/PyJuice ratios (against CUDA graphs and eager) and roofline fractions, in place."""
    ours, pj = row.get("pcir") or {}, row.get("pyjuice") or {}
    r = {}
    for key, ok, pk in [
        ("fwd", "fwd_ms", "fwd_ms"),
        ("train", "train_ms", "train_ms"),
        ("fwd_vs_eager", "fwd_ms", "eager_fwd_ms"),
        ("train_vs_eager", "train_ms", "eager_train_ms"),
        ("peak", "peak_mib", "peak_mib"),
        ("compile", "compile_s", "compile_s"),
        ("compile_api", "compile_api_s", "compile_api_s"),
    ]:
        v = _ratio(ours.get(ok), pj.get(pk))
        if v is not None:
            r[key] = v
    row["ratio"] = r
    roof = {}
    for phase in ("fwd", "train"):
        fl = row.get(f"floor_{phase}_ms")
        if fl:
            for side, d, k in [
                ("pcir", ours, f"{phase}_ms"),
                ("pyjuice", pj, f"{phase}_ms"),
                ("pyjuice_eager", pj, f"eager_{phase}_ms"),
            ]:
                if d.get(k):
                    roof[f"{side}_{phase}"] = round(fl / d[k], 4)
    row["roofline"] = roof


def _f(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def _mark(ratio, target):
    if ratio is None:
        return "-"
    return f"{ratio:.2f}{'' if ratio <= target else '!'}"


def speed_table(rows: list[dict]) -> str:
    head = (
        "| config | B | fwd ms pcir | fwd PJ graph | fwd PJ eager | fwd ratio | train ms pcir | train PJ graph "
        "| train PJ eager | train ratio | peak MiB pcir | peak PJ | peak ratio | compile s pcir | compile PJ "
        "| compile ratio | floor train ms | roof pcir | roof PJ |"
    )
    out = [head, _sep(head)]
    for row in rows:
        o, p, r, rf = row.get("pcir") or {}, row.get("pyjuice") or {}, row.get("ratio") or {}, row.get("roofline") or {}
        out.append(
            "| "
            + " | ".join(
                [
                    row["config"],
                    str(row["batch"]),
                    _f(o.get("fwd_ms"), 3),
                    _f(p.get("fwd_ms"), 3),
                    _f(p.get("eager_fwd_ms"), 3),
                    _mark(r.get("fwd"), TARGETS["fwd"]),
                    _f(o.get("train_ms"), 3),
                    _f(p.get("train_ms"), 3),
                    _f(p.get("eager_train_ms"), 3),
                    _mark(r.get("train"), TARGETS["train"]),
                    _f(o.get("peak_mib"), 0),
                    _f(p.get("peak_mib"), 0),
                    _mark(r.get("peak"), TARGETS["peak"]),
                    _f(o.get("compile_s")),
                    _f(p.get("compile_s")),
                    _mark(r.get("compile"), TARGETS["compile"]),
                    _f(row.get("floor_train_ms"), 3),
                    _pct(rf.get("pcir_train")),
                    _pct(rf.get("pyjuice_train")),
                ]
            )
            + " |"
        )
    return "\n".join(out)


def _sep(head: str) -> str:
    return "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def size_table(rows: list[dict]) -> str:
    head = (
        "| config | pcir nodes / edges / params | pcir counted as PyJuice | PyJuice reported | same | "
        "graph same | layers pcir / PJ | kernel variants | note |"
    )
    out = [head, _sep(head)]
    for row in rows:
        o, p = row.get("pcir") or {}, row.get("pyjuice") or {}
        ours = row.get("pcir_counts") or {}
        asj = row.get("pcir_as_pyjuice") or {}
        rep = (p.get("nodes"), p.get("edges"), p.get("params")) if p.get("nodes") is not None else None
        asj_t = (asj.get("nodes"), asj.get("edges"), asj.get("params")) if asj else None
        same = "-" if rep is None or asj_t is None else ("yes" if rep == asj_t else "NO")
        gs = row.get("graph_counts_match")
        out.append(
            "| "
            + " | ".join(
                [
                    row["config"],
                    " / ".join(_n(ours.get(k)) for k in ("nodes", "edges", "sum_params")) if ours else "-",
                    " / ".join(_n(v) for v in asj_t) if asj_t else "-",
                    " / ".join(_n(v) for v in rep) if rep else "-",
                    same,
                    "-" if gs is None else ("yes" if gs else "NO"),
                    f"{o.get('layers', '-')} / {p.get('layers', '-')}",
                    str(o.get("kernel_variants", "-")),
                    row.get("note", ""),
                ]
            )
            + " |"
        )
    return "\n".join(out)


def _n(v):
    if v is None:
        return "-"
    v = int(v)
    if v >= 10**6:
        return f"{v / 1e6:.2f}M"
    if v >= 10**3:
        return f"{v / 1e3:.1f}K"
    return str(v)


def misses(rows: list[dict]) -> list[str]:
    """One line per missed target: which, by how much."""
    out = []
    for row in rows:
        r = row.get("ratio") or {}
        for key, target in TARGETS.items():
            v = r.get(key)
            if v is not None and v > target:
                out.append(f"{row['config']}: {key} ratio {v:.2f} > {target} (x{v / target:.1f} over target)")
        if row["config"].endswith("-B1"):
            v = r.get("fwd")
            if v is not None and v > 0.5:
                out.append(f"{row['config']}: batch-1 forward latency ratio {v:.2f} > 0.5")
        if row["config"] in ROOFLINE_CONFIGS:
            f = (row.get("roofline") or {}).get("pcir_train")
            if f is not None and f < ROOFLINE_TARGET:
                out.append(
                    f"{row['config']}: train step at {100 * f:.1f}% of the card's floor < {100 * ROOFLINE_TARGET:.0f}%"
                )
        for side in ("pcir", "pyjuice"):
            err = (row.get(side) or {}).get("error") or row.get(f"{side}_error")
            if err:
                out.append(f"{row['config']}: {side} failed: {err.splitlines()[0][:200]}")
    return out


def profile_text(rows: list[dict]) -> str:
    """Per-layer tables of profiled configurations."""
    parts = []
    for row in rows:
        prof = (row.get("pcir") or {}).get("profile")
        if not prof:
            continue
        parts.append(f"### profile {row['config']} (B={row['batch']})")
        if "error" in prof:
            parts.append(f"error: {prof['error']}")
            continue
        pl = prof.get("per_layer", {})
        ts = prof.get("train_step", {})
        fw = prof.get("forward", {})
        pj = ((row.get("pyjuice") or {}).get("profile") or {}).get("eager_train") or {}
        parts.append(
            f"train step: {ts.get('kernels')} kernels, {ts.get('kernel_ms')} ms of kernels in "
            f"{ts.get('wall_ms_profiled')} ms wall (profiled); forward: {fw.get('kernels')} kernels, "
            f"{fw.get('kernel_ms')} ms in {fw.get('wall_ms_profiled')} ms. PyJuice eager step: "
            f"{pj.get('kernels', '-')} kernels, {pj.get('kernel_ms', '-')} ms."
        )
        if "note" in pl:
            parts.append(pl["note"])
        parts.append(
            f"forward_backward {pl.get('forward_backward_ms')} ms (Triton kernels: inputs "
            f"{pl.get('input_fwd_ms')}, layers {pl.get('layer_kernels_ms')}, leaf stats "
            f"{pl.get('input_stats_ms')}; outside Triton kernels {pl.get('outside_triton_kernels_ms')}), "
            f"em_step {pl.get('em_step_ms')} ms"
        )
        if pl.get("layers"):
            parts.append(
                "| layer | kind | groups | units | K max | arity | tile | edges | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |"
            )
            parts.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in pl["layers"]:
                parts.append(
                    f"| {r['layer']} | {r['kind']} | {r['groups']} | {r['units']} | {r['k_max']} | {r['arity']} | "
                    f"{r['tile']} | {_n(r['edges'])} | {r['fwd_ms']} | {r.get('fwd_TFLOPs', '-')} | {r['bwd_ms']} | "
                    f"{r.get('bwd_TFLOPs', '-')} |"
                )
        if ts.get("top"):
            parts.append("top kernels of one train step (device ms, launches):")
            for t in ts["top"]:
                parts.append(f"- {t['ms']} ms x{t['count']}: {t['name']}")
    return "\n".join(parts)
