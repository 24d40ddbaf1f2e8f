"""The fixed suite of configurations, their data, and the same structure built on both sides.

Every configuration names one generator call with the same arguments for pcir
(:mod:`pcir.structures`) and PyJuice 2.6.3 (``pyjuice.structures``). HCLT trees are learnt once per
data set, with PyJuice's own mutual-information estimate when PyJuice is importable, and both
sides are built from that one tree (so HCLT structures are identical, not just equally sized).
RAT-SPN splits are random on each side (each its own generator), so they are equally sized but
not identical.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pcir import structures as st
from pcir.structures import chow_liu
from pcir.structures.pd import default_block_size

ROTATIONS = 4  # distinct input batches cycled through by the timers


@dataclass(frozen=True)
class Config:
    name: str
    family: str  # hclt | pd | rat | hmm
    latents: int
    batch: int = 512
    # images: height, width, categories; tokens: sequence length, vocabulary
    h: int = 28
    w: int = 28
    cats: int = 256
    split: tuple[int, int] = (4, 4)
    depth: int = 5
    reps: int = 16
    seq: int = 32
    vocab: int = 33279

    @property
    def data_key(self) -> tuple:
        if self.family == "hmm":
            return ("tokens", self.seq, self.vocab)
        return ("images", self.h, self.w, self.cats)

    @property
    def num_vars(self) -> int:
        return self.seq if self.family == "hmm" else self.h * self.w

    def pyjuice_block_size(self) -> int:
        """The block size PyJuice's generator picks (for counting sizes its way)."""
        pow2 = self.latents & -self.latents
        if self.family == "pd":
            return default_block_size(self.latents)
        if self.family == "rat":
            return min(256, pow2)
        return min(1024, pow2)


def _suite() -> list[Config]:
    out = [Config(f"hclt-{L}", "hclt", L) for L in (32, 64, 128, 256, 512)]
    out += [Config(f"pd-{L}", "pd", L) for L in (32, 64, 128, 256)]
    out += [Config(f"rat-d5-r16-{L}", "rat", L) for L in (64, 256)]
    out += [Config(f"hmm-{L}", "hmm", L) for L in (64, 512, 2048)]
    out += [Config(f"hclt-128-B{B}", "hclt", 128, batch=B) for B in (1, 8, 2048)]
    return out


SUITE = _suite()
# (no small batch here: PyJuice 2.6.3's first step at batch 1 or 8 took over 75 s on an H200)
QUICK = ["hclt-32", "pd-32", "rat-d5-r16-64", "hmm-64"]
# tiny versions of every family, for a check of the harness on the CPU (TRITON_INTERPRET=1)
SMOKE = [
    Config("smoke-hclt-4", "hclt", 4, batch=16, h=4, w=4, cats=8),
    Config("smoke-pd-4", "pd", 4, batch=16, h=4, w=4, cats=8, split=(2, 2)),
    Config("smoke-rat-4", "rat", 4, batch=16, h=4, w=4, cats=8, depth=2, reps=2),
    Config("smoke-hmm-4", "hmm", 4, batch=16, seq=4, vocab=10),
    Config("smoke-hclt-4-B1", "hclt", 4, batch=1, h=4, w=4, cats=8),
]


def smooth_images(n: int, h: int, w: int, cats: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Random smooth images (5x5 box blur of noise) with values 0..cats-1, shape [n, h*w] (int64)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, 1, h, w, device=device, generator=g)
    k = torch.ones(1, 1, 5, 5, device=device) / 25
    x = torch.nn.functional.conv2d(x, k, padding=2)
    x = (x - x.mean()) / x.std()
    scale = cats / 4
    return (x * scale + cats / 2).clamp(0, cats - 1).long().reshape(n, h * w)


def random_tokens(n: int, seq: int, vocab: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), device=device, generator=g)


@dataclass
class Tree:
    edges: list[tuple[int, int]]
    root: int
    graph: object  # networkx.Graph (what PyJuice's HCLT compiler takes)
    source: str
    seconds: float


@dataclass
class Context:
    """Data and learnt trees shared by the configurations of one run."""

    device: torch.device
    pyjuice: object | None  # the imported module, or None
    data: dict = field(default_factory=dict)
    trees: dict = field(default_factory=dict)

    def dataset(self, cfg: Config) -> torch.Tensor:
        n = max(4096 if cfg.h * cfg.w > 100 else 256, ROTATIONS * cfg.batch)
        key = cfg.data_key
        have = self.data.get(key)
        if have is None or have.shape[0] < n:
            if key[0] == "tokens":
                have = random_tokens(n, cfg.seq, cfg.vocab, self.device)
            else:
                have = smooth_images(n, cfg.h, cfg.w, cfg.cats, self.device)
            self.data[key] = have
        return have

    def batches(self, cfg: Config) -> list[torch.Tensor]:
        d = self.dataset(cfg)
        B = cfg.batch
        return [d[i * B : (i + 1) * B].contiguous() for i in range(ROTATIONS)]

    def tree(self, cfg: Config) -> Tree:
        key = cfg.data_key
        if key not in self.trees:
            self.trees[key] = self._learn_tree(cfg)
        return self.trees[key]

    def _learn_tree(self, cfg: Config) -> Tree:
        import networkx as nx

        x = self.dataset(cfg)[:4096]
        t0 = time.perf_counter()
        if self.pyjuice is not None:
            from pyjuice.structures.hclt import chow_liu_tree, mutual_information_chunked

            xf = x.float()
            mi = mutual_information_chunked(xf, xf, 32, 0.5 / 32, chunk_size=64).detach().cpu().numpy()
            T = chow_liu_tree(mi)
            root = nx.center(T)[0]
            edges = [(int(a), int(b)) for a, b in T.edges()]
            source = "pyjuice mutual_information_chunked + chow_liu_tree"
        else:
            dev = "cuda" if self.device.type == "cuda" else "cpu"
            edges = chow_liu.chow_liu_tree(x.cpu().numpy(), estimator="soft", device=dev)
            root = chow_liu.tree_center(x.shape[1], edges)
            T = nx.Graph()
            T.add_nodes_from(range(x.shape[1]))
            T.add_edges_from(edges)
            source = "pcir chow_liu_tree (soft estimator)"
        return Tree(edges, int(root), T, source, time.perf_counter() - t0)


def build_pcir(cfg: Config, ctx: Context):
    """The pcir circuit of ``cfg`` (a verified :class:`pcir.ir.Circuit`)."""
    dist = f"categorical(k={cfg.cats})"
    if cfg.family == "hclt":
        t = ctx.tree(cfg)
        return st.hclt(tree=t.edges, num_vars=cfg.num_vars, root=t.root, num_latents=cfg.latents, input_dist=dist)
    if cfg.family == "pd":
        return st.pd(cfg.h, cfg.w, cfg.latents, split_intervals=cfg.split, input_dist=dist)
    if cfg.family == "rat":
        return st.rat_spn(cfg.num_vars, cfg.latents, cfg.depth, cfg.reps, input_dist=dist)
    if cfg.family == "hmm":
        return st.hmm(cfg.seq, cfg.latents, cfg.vocab, homogeneous=True)
    raise ValueError(f"unknown family {cfg.family}")


def build_pyjuice(cfg: Config, ctx: Context):
    """PyJuice's node graph of ``cfg`` (same generator, same arguments)."""
    juice = ctx.pyjuice
    import pyjuice.nodes.distributions as dists

    cat = dists.Categorical(num_cats=cfg.cats)
    if cfg.family == "hclt":
        from pyjuice.structures.compilation import BayesianTreeToHiddenRegionGraph

        t = ctx.tree(cfg)
        return BayesianTreeToHiddenRegionGraph(t.graph, t.root, cfg.latents, dists.Categorical, {"num_cats": cfg.cats})
    if cfg.family == "pd":
        return juice.structures.PD(
            data_shape=(cfg.h, cfg.w), num_latents=cfg.latents, split_intervals=cfg.split, input_dist=cat
        )
    if cfg.family == "rat":
        return juice.structures.RAT_SPN(
            num_vars=cfg.num_vars, num_latents=cfg.latents, depth=cfg.depth, num_repetitions=cfg.reps, input_dist=cat
        )
    if cfg.family == "hmm":
        return juice.structures.HMM(seq_length=cfg.seq, num_latents=cfg.latents, num_emits=cfg.vocab, homogeneous=True)
    raise ValueError(f"unknown family {cfg.family}")


def pcir_graph_counts(circuit) -> tuple[int, int]:
    """pcir's node graph counted like PyJuice's node graph (before compilation): every node and
    edge, plus the one-child product PyJuice puts between a sum and an input group."""
    from pcir.ir import InputGroup, SumGroup

    s = circuit.stats()
    wrap = sum(
        circuit.group(ch).units
        for g in circuit
        if isinstance(g, SumGroup)
        for ch in g.children
        if isinstance(circuit.group(ch), InputGroup)
    )
    return s["nodes"] + wrap, s["edges"] + wrap


def pyjuice_graph_counts(root_ns) -> tuple[int, int]:
    nodes = edges = 0
    for ns in root_ns:
        nodes += ns.num_nodes
        edges += ns.num_edges
    return nodes, edges
