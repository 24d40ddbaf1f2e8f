"""Dev script: node and edge counts of pcir's generators next to PyJuice 2.6.3's, same arguments.

PyJuice needs a GPU to *compile*, but its structure generators build their node graphs on the
CPU; this script only builds them. Install its wheel without dependencies somewhere and put it on
the path (numba and matplotlib are imported by PyJuice's package but not needed to build nodes;
stand-ins are installed when they are missing)::

    pip install --target /tmp/pj --no-deps .whl/pyjuice-2.6.3-py3-none-any.whl
    PYTHONPATH=src:/tmp/pj python tools/compare_pyjuice_counts.py [--quick]

Columns: ``graph`` = every node (inputs, products, sums) and edge of the structure before
compilation (PyJuice: its node graph; pcir: ``Circuit.stats()`` plus the one-child products
PyJuice puts between a sum and an input group); ``compiled`` = PyJuice's ``TensorCircuit``
convention (:func:`pcir.structures.pyjuice_counts`), with the numbers PyJuice reported on the GPU
(``../shared/bench/*.jsonl``) where the configuration is there and does not depend on random data.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np


def _stub_missing_modules() -> None:
    try:
        import numba  # noqa: F401
    except ImportError:
        numba = types.ModuleType("numba")

        def njit(*a, **k):
            return a[0] if a and callable(a[0]) and not k else (lambda f: f)

        numba.njit = numba.jit = njit
        numba.prange = range
        sys.modules["numba"] = numba
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        mpl = types.ModuleType("matplotlib")
        mpl.pyplot = types.ModuleType("matplotlib.pyplot")
        sys.modules["matplotlib"] = mpl
        sys.modules["matplotlib.pyplot"] = mpl.pyplot


def pyjuice_graph_counts(root_ns) -> tuple[int, int]:
    nodes = edges = 0
    for ns in root_ns:
        nodes += ns.num_nodes
        edges += ns.num_edges
    return nodes, edges


def pcir_graph_counts(c) -> tuple[int, int]:
    from pcir.ir import InputGroup, SumGroup

    s = c.stats()
    wrap = sum(
        c.group(ch).units
        for g in c
        if isinstance(g, SumGroup)
        for ch in g.children
        if isinstance(c.group(ch), InputGroup)
    )
    return s["nodes"] + wrap, s["edges"] + wrap


def reference_numbers() -> dict[str, dict]:
    ref = {}
    here = Path(__file__).resolve().parents[1]
    for cand in [here / ".." / "shared" / "bench", Path("/work/shared/bench")]:
        for f in sorted(cand.glob("pyjuice-2.6.3-*.jsonl")) if cand.exists() else []:
            for line in f.read_text().splitlines():
                d = json.loads(line)
                if "model" in d and "nodes" in d:
                    ref.setdefault(d["model"], d)
        if ref:
            break
    return ref


def smooth_images(n: int, h: int = 28, w: int = 28, seed: int = 0) -> np.ndarray:
    """MNIST-shaped random smooth images (5x5 box blur of noise), 0..255."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h + 4, w + 4))
    c = np.cumsum(np.cumsum(x, axis=1), axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    box = (c[:, 5:, 5:] - c[:, :-5, 5:] - c[:, 5:, :-5] + c[:, :-5, :-5]) / 25.0
    box = (box - box.mean()) / box.std()
    return np.clip(box * 64 + 128, 0, 255).astype(np.int64).reshape(n, h * w)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small configurations only")
    args = ap.parse_args()
    _stub_missing_modules()
    import pyjuice as juice
    import pyjuice.nodes.distributions as jd
    import torch

    from pcir import structures as st

    ref = reference_numbers()
    rows = []

    def row(name, ours, theirs_ns, block_size, ref_key=None):
        pj_nodes, pj_edges = pyjuice_graph_counts(theirs_ns)
        o_nodes, o_edges = pcir_graph_counts(ours)
        comp = st.pyjuice_counts(ours, block_size)
        r = ref.get(ref_key) if ref_key else None
        rows.append(
            dict(
                config=name,
                pcir_graph=(o_nodes, o_edges),
                pyjuice_graph=(pj_nodes, pj_edges),
                graph_match=(o_nodes, o_edges) == (pj_nodes, pj_edges),
                pcir_compiled=(comp["nodes"], comp["edges"], comp["params"]),
                pyjuice_reported=(r["nodes"], r["edges"], r["params"]) if r else None,
            )
        )
        print(json.dumps(rows[-1]), flush=True)

    cat = jd.Categorical(num_cats=256)
    from pcir.structures.pd import default_block_size as bs_pd

    for L in [32] if args.quick else [32, 64, 128, 256]:
        row(
            f"pd 28x28 (4,4) L={L}",
            st.pd(28, 28, L),
            juice.structures.PD((28, 28), L, split_intervals=(4, 4), input_dist=cat),
            bs_pd(L),
            f"pd-{L}",
        )
    row(
        "pd 12x16 (3,4) L=8",
        st.pd(12, 16, 8, split_intervals=(3, 4)),
        juice.structures.PD((12, 16), 8, split_intervals=(3, 4), input_dist=cat),
        bs_pd(8),
    )
    row(
        "pd 16x16 points L=16",
        st.pd(16, 16, 16, split_points=[[3, 8, 12], [5, 10]]),
        juice.structures.PD((16, 16), 16, split_points=[[3, 8, 12], [5, 10]], input_dist=cat),
        bs_pd(16),
    )
    for L in [64] if args.quick else [64, 256]:
        pow2 = min(256, L & -L)
        row(
            f"rat_spn 784 d5 r16 L={L}",
            st.rat_spn(784, L, 5, 16),
            juice.structures.RAT_SPN(784, L, 5, 16, input_dist=cat),
            pow2,
            f"rat-d5-r16-{L}",
        )
    row(
        "rat_spn 50 d3 r4 pieces3 L=8",
        st.rat_spn(50, 8, 3, 4, num_pieces=3),
        juice.structures.RAT_SPN(50, 8, 3, 4, num_pieces=3, input_dist=cat),
        8,
    )
    for L in [64] if args.quick else [64, 512, 2048]:
        pow2 = min(1024, L & -L)
        row(
            f"hmm T32 V33279 L={L}",
            st.hmm(32, L, 33279),
            juice.structures.HMM(32, L, 33279, homogeneous=True),
            pow2,
            f"hmm-{L}",
        )
    row(
        "hmm T16 V100 L=32 inhomogeneous",
        st.hmm(16, 32, 100, homogeneous=False),
        juice.structures.HMM(16, 32, 100, homogeneous=False),
        32,
    )

    datasets = [("smooth images 28x28 (1000 rows)", smooth_images(1000))]
    debd = Path("/work/shared/data/debd")
    for name in ["nltcs", "plants"] if args.quick else ["nltcs", "plants", "baudio", "dna"]:
        f = debd / name / f"{name}.train.data"
        if f.exists():
            datasets.append((f"debd {name}", np.loadtxt(f, delimiter=",", dtype=np.int64)))
    for dname, x in datasets:
        k = int(x.max()) + 1
        for L in [32] if args.quick or x.shape[1] > 200 else [16, 32]:
            theirs = juice.structures.HCLT(torch.tensor(x).float(), L, input_dist=jd.Categorical(num_cats=k))
            # the soft estimator is PyJuice's, so the same data gives the same tree
            ours = st.hclt(x, L, mi_estimator="soft", device="cpu")
            row(f"hclt {dname} L={L}", ours, theirs, min(1024, L & -L))
    print()
    print(
        f"{'config':40s} {'pcir graph':>22s} {'PyJuice graph':>22s}  {'pcir as PyJuice reports':>34s} {'PyJuice reported (GPU)':>34s}"
    )
    for r in rows:
        rep = r["pyjuice_reported"]
        print(
            f"{r['config']:40s} {str(r['pcir_graph']):>22s} {str(r['pyjuice_graph']):>22s}{' ' if r['graph_match'] else '!'} "
            f"{str(r['pcir_compiled']):>34s} {str(rep) if rep else '-':>34s}"
        )
    bad = [
        r
        for r in rows
        if not r["graph_match"] or (r["pyjuice_reported"] and r["pyjuice_reported"] != r["pcir_compiled"])
    ]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} configurations match")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
