"""Compare two pcir runs of bench/run.py (an A/B of engine knobs) row by row.

    python bench/ab_compare.py BASE.json KNOBS.json

prints, for every configuration in both, pcir's forward and train-step medians and peak memory
on each side and their ratios (B / A), and the difference of the mean log-likelihoods (the same
data and seed: a variant that computes something else shows), with each file's card and knobs in
the header; runs on different cards are refused (compare within one machine only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: {e}") from None


def compare(a: dict, b: dict) -> str:
    ca, cb = a.get("card", {}).get("card"), b.get("card", {}).get("card")
    if ca != cb:
        raise SystemExit(f"different cards ({ca} / {cb}): compare runs of one machine only")
    knobs = [" ".join(d.get("args", {}).get("knob") or []) or "defaults" for d in (a, b)]
    rows_b = {r["config"]: r for r in b.get("rows", [])}
    lines = [
        f"A: {knobs[0]}; B: {knobs[1]}; {ca}",
        "",
        "| config | fwd ms A / B | B/A | train ms A / B | B/A | peak MiB A / B | B/A | mean LL A - B |",
        "|---|---|---:|---|---:|---|---:|---:|",
    ]
    for ra in a.get("rows", []):
        rb = rows_b.get(ra["config"])
        if rb is None:
            continue
        pa, pb = ra.get("pcir") or {}, rb.get("pcir") or {}
        cells = [ra["config"]]
        for key, nd in (("fwd_ms", 3), ("train_ms", 3), ("peak_mib", 0)):
            x, y = pa.get(key), pb.get(key)
            if x is None or y is None:
                cells += [f"{x} / {y}", "-"]
            else:
                cells += [f"{x:.{nd}f} / {y:.{nd}f}", f"{y / x:.2f}" if x else "-"]
        # the same data and seed on both sides: a variant that computes something else shows here
        la, lb = pa.get("ll_mean"), pb.get("ll_mean")
        cells.append(f"{la - lb:.2e}" if la is not None and lb is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("other")
    args = ap.parse_args(argv)
    print(compare(_load(args.base), _load(args.other)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
