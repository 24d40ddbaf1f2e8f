"""Sparse, irregular circuits in the benchmark suite: an imported ~60K-node PSDD on both sides.

pcir side: the synthetic PSDD of ``bench/bench_import.py`` is written into a temporary directory,
imported with :func:`pcir.frontend.formats.import_file` and compiled with the default pass
pipeline (``pipeline="default"``, so compile time includes the passes). The pipeline is also run
once on its own to read the partition pass's statistics: ``padding.naive`` (the padding of the
chosen blocks in the imported node order) and ``padding.reordered`` (after its node reordering).

PyJuice side: the *same* circuit, node for node, through PyJuice 2.6.3's Python API with block
size 1: one ``inputs`` group per pcir input group (one-hot ``Categorical`` for literals, ``Bernoulli``), one
``multiply`` per product group with its explicit ``edge_ids`` (``sparse_edges=True``), one
``summate`` per sum group with its explicit ``edge_ids`` and ``block_size=1``, carrying pcir's
weights. PyJuice sums need product children, so an input group read by a sum gets a one-child
product, which is what ``harness.suite.pcir_graph_counts`` counts too.

Data: random binary rows over the PSDD's variables (``Config.data_key`` = ``("tokens", vars, 2)``,
so the harness's shared data cache draws uniform 0/1 "tokens").

    PYTHONPATH=src python bench/sparse_configs.py                # build, sizes, padding (CPU)
    PYTHONPATH=/tmp/site:src python bench/sparse_configs.py --check-pyjuice   # GPU: PyJuice vs reference
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_import  # noqa: E402

FAMILY = "psdd"


@dataclass(frozen=True)
class SparseConfig:
    """One synthetic PSDD (arguments of ``bench_import.write_psdd``) and its batch size."""

    name: str
    nodes: int = 60_000
    vars: int = 256
    elements: int = 4
    seed: int = 0
    batch: int = 512
    family: str = FAMILY
    latents: int = 0  # no latent size: the row's ``latents`` column stays 0

    # fields the harness's data cache reads (random 0/1 "tokens", one per variable)
    @property
    def seq(self) -> int:
        return self.vars

    vocab: int = 2
    h: int = 1
    w: int = 1

    @property
    def data_key(self) -> tuple:
        return ("tokens", self.vars, 2)

    @property
    def num_vars(self) -> int:
        return self.vars

    def pyjuice_block_size(self) -> int:
        return 1


SPARSE_SUITE = [SparseConfig("psdd-60k")]
SPARSE_SMOKE = [SparseConfig("smoke-psdd", nodes=200, vars=8, elements=4, batch=16)]

_circuits: dict[SparseConfig, object] = {}  # imported circuits, shared by both sides of a row


def is_sparse(cfg) -> bool:
    return getattr(cfg, "family", None) == FAMILY


def build_pcir(cfg: SparseConfig, ctx=None):
    """The imported (un-annotated) pcir circuit of ``cfg``; cached per configuration."""
    c = _circuits.get(cfg)
    if c is None:
        from pcir.frontend.formats import import_file

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{cfg.name}.psdd"
            bench_import.write_psdd(path, cfg.vars, cfg.nodes, cfg.elements, cfg.seed)
            c = import_file(path)
        _circuits.clear()  # one large circuit at a time
        _circuits[cfg] = c
    return c


def pass_report(circuit) -> dict:
    """Run the default pipeline once: its time, groups, and the partition pass's padding."""
    from pcir.passes.pipeline import DEFAULT_PIPELINE, run_pipeline

    t0 = time.perf_counter()
    out, report = run_pipeline(circuit, DEFAULT_PIPELINE, timings=False)
    res: dict = {"pipeline": DEFAULT_PIPELINE, "passes_s": round(time.perf_counter() - t0, 3), "groups_after": len(out)}
    for r in report.records:
        if r.spec.startswith("partition-blocks"):
            st = dict(r.pass_stats)
            res["padding"] = {
                "naive": st.get("padding.naive"),
                "reordered": st.get("padding.reordered"),
                "fanin": st.get("padding.fanin"),
                "sums_blocked": st.get("sums_blocked"),
            }
    return res


def describe(cfg: SparseConfig, circuit) -> dict:
    """Extra row fields for a sparse configuration (the harness adds them to its JSON row)."""
    extra = {"groups": len(circuit), "psdd": {"nodes": cfg.nodes, "vars": cfg.vars, "elements": cfg.elements}}
    extra.update(pass_report(circuit))
    return extra


def note(row: dict) -> str:
    """The padding in words, for the size table's note column."""
    pad = row.get("padding") or {}
    if pad.get("naive") is None:
        return ""
    return f"padding {pad['naive']:.3f} before reordering, {pad['reordered']:.3f} after"


# ---- PyJuice ---------------------------------------------------------------------------------


def build_pyjuice(cfg: SparseConfig, ctx=None, circuit=None):
    """PyJuice 2.6.3 node graph of the same circuit, block size 1, with pcir's parameters."""
    import torch
    from pyjuice.nodes import inputs, multiply, summate
    from pyjuice.nodes.distributions import Bernoulli, Categorical

    from pcir.ir import InputGroup, ProductGroup, SumGroup

    c = circuit if circuit is not None else build_pcir(cfg, ctx)
    ns: dict[str, object] = {}
    wrapped: dict[str, object] = {}  # input group -> its one-child product (for sums)

    def as_sum_child(name):
        if isinstance(c.group(name), InputGroup):
            if name not in wrapped:
                u = c.units(name)
                wrapped[name] = multiply(ns[name], edge_ids=torch.arange(u)[:, None], sparse_edges=True)
            return wrapped[name]
        return ns[name]

    for g in c:
        if isinstance(g, InputGroup):
            val = np.asarray(c.param_value(g.params))
            if g.dist.kind == "indicator":
                # PyJuice 2.6.3's Indicator leaf is unfinished (its init asserts on a missing
                # keyword and its kernel reads an undefined name), so literals become one-hot
                # categorical leaves: the same function (PyJuice's EM also updates them, a little
                # extra work on its side).
                onehot = np.zeros((g.units, 2), dtype=np.float32)
                onehot[np.arange(g.units), val.astype(np.int64)] = 1.0
                ns[g.name] = inputs(
                    g.var,
                    num_nodes=g.units,
                    dist=Categorical(num_cats=2),
                    params=torch.tensor(onehot.reshape(-1)),
                    block_size=1,
                )
            elif g.dist.kind == "bernoulli":
                ns[g.name] = inputs(
                    g.var,
                    num_nodes=g.units,
                    dist=Bernoulli(),
                    params=torch.tensor(val, dtype=torch.float32),
                    block_size=1,
                )
            else:
                raise ValueError(f"group '{g.name}': no PyJuice mapping for {g.dist.kind} leaves")
        elif isinstance(g, ProductGroup):
            idx = g.child_index(c.child_units(g.name))
            ns[g.name] = multiply(
                *[ns[ch] for ch in g.children], edge_ids=torch.tensor(np.array(idx, dtype=np.int64)), sparse_edges=True
            )
        else:
            assert isinstance(g, SumGroup)
            k = c.num_columns(g.name)
            w = np.asarray(c.param_value(g.params))
            if g.pattern == "explicit":
                edges = np.asarray(g.edges)
                p = w.reshape(-1)
            else:
                mask = g.edge_mask(k)
                rows, cols = np.nonzero(mask)
                edges = np.stack([rows, cols], axis=1)
                p = w.reshape(g.units, k)[rows, cols]
            ns[g.name] = summate(
                *[as_sum_child(ch) for ch in g.children],
                num_nodes=g.units,
                edge_ids=torch.tensor(np.array(edges.T, dtype=np.int64)),
                params=torch.tensor(p, dtype=torch.float32),
                block_size=1,
            )
    if len(c.roots) != 1:
        raise ValueError(f"PyJuice needs one root, the circuit has {len(c.roots)}")
    return ns[c.roots[0]]


def check_pyjuice(cfg: SparseConfig, device: str = "cuda", rows: int = 16) -> dict:
    """Log-likelihoods of PyJuice's graph and of pcir's compiled model against the reference evaluator
    (PyJuice compiles only on a CUDA device)."""
    import pyjuice as juice
    import torch

    import pcir
    from pcir.ir import log_likelihood

    c = build_pcir(cfg)
    x = np.random.default_rng(1).integers(0, 2, size=(rows, c.num_vars))
    ref = log_likelihood(c, x)
    xt = torch.from_numpy(x).to(device)
    model = pcir.compile(c, pipeline="default", device=device, precision="fp32")
    pc = juice.compile(build_pyjuice(cfg, circuit=c))
    pc.to(device)
    with torch.no_grad():
        ours = model(xt).double().cpu().numpy()
        theirs = pc(xt).reshape(-1).double().cpu().numpy()
    return {
        "rows": rows,
        "ref_mean": float(ref.mean()),
        "pcir_max_abs_diff": float(np.max(np.abs(ours - ref))),
        "pyjuice_max_abs_diff": float(np.max(np.abs(theirs - ref))),
    }


def _stub_numba_matplotlib() -> None:
    """PyJuice imports numba and matplotlib at package import; building nodes needs neither."""
    import types

    try:
        import numba  # noqa: F401
    except ImportError:
        numba = types.ModuleType("numba")
        numba.njit = numba.jit = lambda *a, **k: a[0] if a and callable(a[0]) and not k else (lambda f: f)
        numba.prange = range
        sys.modules["numba"] = numba
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        mpl = types.ModuleType("matplotlib")
        mpl.pyplot = types.ModuleType("matplotlib.pyplot")
        sys.modules["matplotlib"] = mpl
        sys.modules["matplotlib.pyplot"] = mpl.pyplot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the tiny configuration")
    ap.add_argument("--check-pyjuice", action="store_true", help="PyJuice's log-likelihoods against the reference")
    ap.add_argument(
        "--pyjuice-counts", action="store_true", help="print one JSON line: node graph counts of both sides (CPU)"
    )
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    from harness.suite import pcir_graph_counts, pyjuice_graph_counts

    if args.pyjuice_counts:
        import json

        _stub_numba_matplotlib()
        for cfg in SPARSE_SMOKE if args.smoke else SPARSE_SUITE:
            c = build_pcir(cfg)
            root = build_pyjuice(cfg, circuit=c)
            print(json.dumps({"config": cfg.name, "pcir": pcir_graph_counts(c), "pyjuice": pyjuice_graph_counts(root)}))
        return 0

    for cfg in SPARSE_SMOKE if args.smoke else SPARSE_SUITE:
        t0 = time.perf_counter()
        c = build_pcir(cfg)
        print(f"{cfg.name}: imported in {time.perf_counter() - t0:.2f} s: {c.stats()}")
        print(f"  graph counts (PyJuice's way): {pcir_graph_counts(c)}")
        print(f"  {describe(cfg, c)}")
        if args.check_pyjuice:
            _stub_numba_matplotlib()
            print(f"  PyJuice vs reference: {check_pyjuice(cfg, args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
