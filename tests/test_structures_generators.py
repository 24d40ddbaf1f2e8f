"""Structure generators: validity (verify: smooth, decomposable), scope, closed-form sizes,
semantics on tiny instances, and PyJuice 2.6.3's reported sizes."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from pcir.ir import Dist, Domain, InputGroup, PcirError, ProductGroup, SumGroup, log_likelihood, print_ir, verify
from pcir.ir.evaluator import enumerate_assignments
from pcir.structures import chow_liu, hclt, hmm, pd, pyjuice_counts, rat_spn


def total_probability(c) -> float:
    return float(np.exp(log_likelihood(c, enumerate_assignments(c))).sum())


def check_common(c, num_vars: int):
    verify(c)  # smooth, decomposable, shapes, parameters
    assert c.num_vars == num_vars
    (root,) = c.roots
    assert c.scope()[root] == frozenset(range(num_vars))
    assert c.group(root).units == 1


# ---- HCLT -----------------------------------------------------------------------------------


def hclt_counts(children_of_inner: list[int], num_vars: int, latents: int) -> tuple[int, int]:
    """nodes/edges of an HCLT from the number of tree children of each inner variable."""
    inner = len(children_of_inner)
    nodes = num_vars * latents + inner * latents + (inner - 1) * latents + 1
    prod_edges = latents * sum(k + 1 for k in children_of_inner)
    sum_edges = (inner - 1) * latents * latents + latents
    return nodes, prod_edges + sum_edges


@pytest.mark.parametrize(
    "edges, root",
    [
        ([(0, 1), (1, 2), (2, 3), (3, 4)], 2),  # a path: centre 2
        ([(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)], 0),  # a star
        ([(0, 1), (1, 2), (1, 3), (3, 4), (3, 5), (5, 6)], 3),
    ],
)
@pytest.mark.parametrize("latents", [1, 3])
def test_hclt_from_tree_sizes_and_validity(edges, root, latents):
    n = len(edges) + 1
    c = hclt(tree=edges, num_latents=latents, input_dist="bernoulli")
    check_common(c, n)
    assert chow_liu.tree_center(n, edges) == root
    children = chow_liu.root_tree(n, edges, root)
    inner = [len(children[v]) for v in range(n) if children[v] or v == root]
    s = c.stats()
    assert (s["nodes"], s["edges"]) == hclt_counts(inner, n, latents)
    assert f"s{root}" in c.roots
    assert total_probability(c) == pytest.approx(1.0, abs=1e-12)


def test_hclt_groups_are_regions_not_nodes():
    c = hclt(tree=[(i, i + 1) for i in range(9)], num_latents=64, input_dist="categorical(k=4)")
    # one input group per variable, one product and one sum per inner variable (a path rooted
    # at its centre has two leaves)
    assert sum(isinstance(g, InputGroup) for g in c) == 10
    assert sum(isinstance(g, ProductGroup) for g in c) == 8
    assert all(g.units in (1, 64) for g in c)


def test_hclt_tie_inputs_shares_one_parameter():
    c = hclt(tree=[(0, 1), (1, 2), (1, 3)], num_latents=2, input_dist="categorical(k=3)", tie_inputs=True)
    ins = [g for g in c if isinstance(g, InputGroup)]
    assert len({g.params for g in ins}) == 1
    assert total_probability(c) == pytest.approx(1.0, abs=1e-12)
    import networkx as nx

    g = nx.Graph([(0, 1), (1, 2), (1, 3)])
    assert hclt(g, 2, input_dist="categorical(k=3)", tie_inputs=True) == c
    untied = hclt(tree=[(0, 1), (1, 2), (1, 3)], num_latents=2, input_dist="categorical(k=3)")
    assert len({g.params for g in untied if isinstance(g, InputGroup)}) == 4


def test_hclt_learns_the_chain_of_chain_data():
    # x_{i+1} copies x_i with 10% noise: the Chow-Liu tree is the chain 0-1-...-7
    rng = np.random.default_rng(0)
    n, v = 3000, 8
    x = np.zeros((n, v), dtype=np.int64)
    x[:, 0] = rng.integers(0, 2, n)
    for i in range(1, v):
        flip = rng.random(n) < 0.1
        x[:, i] = np.where(flip, 1 - x[:, i - 1], x[:, i - 1])
    perm = rng.permutation(v)  # hide the order
    xp = x[:, perm]
    inv = np.argsort(perm)
    for est in ("exact", "soft"):
        edges = chow_liu.chow_liu_tree(xp, estimator=est, device="cpu")
        got = {frozenset((int(perm[a]), int(perm[b]))) for a, b in edges}
        assert got == {frozenset((i, i + 1)) for i in range(v - 1)}, est
    c = hclt(xp, 4, device="cpu")
    check_common(c, v)
    assert c.variables[0].domain == Domain.binary()
    assert inv is not None


def test_mutual_information_chunking_does_not_change_it():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (500, 11))
    x[:, 5] = x[:, 2]
    for est in ("exact", "soft"):
        a = chow_liu.mutual_information(x, estimator=est, device="cpu")
        b = chow_liu.mutual_information(x, estimator=est, device="cpu", chunk_size=3, row_chunk=77)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, a.T, rtol=1e-5, atol=1e-6)
    exact = chow_liu.mutual_information(x, estimator="exact", device="cpu")
    # identical columns: MI = entropy; independent ones: about 0
    p = np.bincount(x[:, 2], minlength=3) / 500
    assert exact[2, 5] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
    assert abs(exact[0, 1]) < 0.02


def test_exact_mi_matches_a_hand_computation():
    x = np.array([[0, 0], [0, 0], [1, 1], [1, 0]])
    mi = chow_liu.mutual_information(x, estimator="exact", device="cpu")
    # p(a,b): 00 .5, 11 .25, 10 .25; p(a) = (.5, .5), p(b) = (.75, .25)
    expect = (
        0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25)) + 0.25 * math.log(0.25 / (0.5 * 0.75))
    )
    assert mi[0, 1] == pytest.approx(expect, rel=1e-6)


def test_maximum_spanning_tree_and_center():
    w = np.array([[0, 5, 1, 0], [5, 0, 4, 2], [1, 4, 0, 3], [0, 2, 3, 0]], dtype=float)
    assert sorted(tuple(sorted(e)) for e in chow_liu.maximum_spanning_tree(w)) == [(0, 1), (1, 2), (2, 3)]
    assert chow_liu.tree_center(4, [(0, 1), (1, 2), (2, 3)]) == 1  # centres 1 and 2: the smaller
    assert chow_liu.tree_center(1, []) == 0


@pytest.mark.parametrize("dist", ["binomial", "discrete_logistic", "categorical"])
def test_hclt_input_families_on_small_counts_data(dist):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 4, (100, 4))
    c = hclt(x, 2, input_dist=dist, device="cpu")
    check_common(c, 4)
    assert c.variables[0].domain == Domain.categorical(4)
    assert total_probability(c) == pytest.approx(1.0, abs=1e-10)


def test_hclt_gaussian_on_real_data():
    x = np.random.default_rng(3).normal(size=(200, 5))
    c = hclt(x, 3, input_dist="gaussian", device="cpu")
    check_common(c, 5)
    assert not c.variables[0].domain.is_discrete
    assert np.isfinite(log_likelihood(c, x[:4])).all()


def test_hclt_errors():
    with pytest.raises(PcirError, match="needs data"):
        hclt(num_latents=4)
    with pytest.raises(PcirError, match="has 3 edges, got 2"):
        hclt(tree=[(0, 1), (2, 3)], num_vars=4, num_latents=2)
    with pytest.raises(PcirError, match="num_latents must be an integer >= 1"):
        hclt(tree=[(0, 1)], num_latents=0)
    with pytest.raises(PcirError, match="unknown distribution 'categoric'"):
        hclt(tree=[(0, 1)], num_latents=2, input_dist="categoric")
    with pytest.raises(PcirError, match="NaN in the data at row 1, column 0"):
        hclt(np.array([[0, 1], [np.nan, 0], [1, 1]]), 2)
    with pytest.raises(PcirError, match="does not connect"):
        hclt(tree=[(0, 1), (0, 1), (2, 3)], num_vars=4, num_latents=2)


# ---- PD -------------------------------------------------------------------------------------


def pd_counts(cells: tuple[int, int], cell_vars: list[list[int]], latents: int, bs: int, conns: int = 4):
    """Closed form for split intervals that cut the grid into cells (every region is a
    rectangle of cells; a region of a x b cells has (a - 1) + (b - 1) splits)."""
    ca, cb = cells
    nvars = sum(sum(r) for r in cell_vars)
    nodes = nvars * latents
    edges = 0
    for a0 in range(ca):
        for a1 in range(a0 + 1, ca + 1):
            for b0 in range(cb):
                for b1 in range(b0 + 1, cb + 1):
                    root = (a0, a1, b0, b1) == (0, ca, 0, cb)
                    splits = (a1 - a0 - 1) + (b1 - b0 - 1)
                    units = 1 if root else latents
                    if splits == 0:  # leaf region: product of the cell's inputs, block-diagonal sum
                        nv = cell_vars[a0][b0]
                        nodes += latents + units
                        edges += latents * nv + (units * latents if root else latents * bs)
                        continue
                    nodes += splits * latents + units
                    edges += splits * 2 * latents
                    reads = splits if (root or splits <= conns) else conns
                    edges += units * reads * latents
    return nodes, edges


@pytest.mark.parametrize(
    "h, w, intervals, latents",
    [(8, 8, (4, 4), 4), (6, 9, (2, 3), 2), (12, 8, (4, 2), 8), (4, 4, (1, 1), 2), (5, 7, (2, 2), 4)],
)
def test_pd_sizes_match_closed_form(h, w, intervals, latents):
    c = pd(h, w, latents, split_intervals=intervals, input_dist="categorical(k=4)")
    check_common(c, h * w)
    ys = list(range(0, h, intervals[0])) + [h]
    xs = list(range(0, w, intervals[1])) + [w]
    cells = (len(ys) - 1, len(xs) - 1)
    cell_vars = [[(ys[i + 1] - ys[i]) * (xs[j + 1] - xs[j]) for j in range(cells[1])] for i in range(cells[0])]
    bs = min(16, latents & -latents)
    s = c.stats()
    assert (s["nodes"], s["edges"]) == pd_counts(cells, cell_vars, latents, bs)


def test_pd_tiny_normalises_and_block_sparse_sums_read_four_splits():
    c = pd(2, 3, 2, split_intervals=1, input_dist="bernoulli")
    check_common(c, 6)
    assert total_probability(c) == pytest.approx(1.0, abs=1e-12)
    big = pd(8, 8, 32, split_intervals=(2, 2), input_dist="categorical(k=4)")
    sparse = [g for g in big if isinstance(g, SumGroup) and g.pattern == "block" and g.block[1] == 32]
    assert sparse, "regions with more than 4 splits are block-sparse"
    for g in sparse:
        assert (g.mask.sum(axis=1) == 4).all()


def test_pd_max_split_depth_and_split_points():
    c = pd(8, 8, 2, split_intervals=(2, 2), max_split_depth=1, input_dist="bernoulli")
    check_common(c, 64)
    # depth 1: the root's 6 splits make 12 sub-regions, all of them leaf regions
    sums = [g for g in c if isinstance(g, SumGroup)]
    assert len(sums) == 1 + 12
    assert all(g.pattern == "block" for g in sums if g.name not in c.roots)
    c2 = pd(6, 6, 2, split_points=[[2], [1, 4]], input_dist="bernoulli")
    check_common(c2, 36)
    assert sum(isinstance(g, ProductGroup) and len(g.children) == 2 for g in c2 if g.name.startswith("p.r0_6x0_6")) == 3
    c3 = pd(data_shape=(4, 4, 3), num_latents=2, split_intervals=(2, 2, 3), input_dist="bernoulli")
    check_common(c3, 48)


def test_pd_errors():
    with pytest.raises(PcirError, match="split point 9 of axis 1 is outside 1..7"):
        pd(8, 8, 2, split_points=[[4], [9]])
    with pytest.raises(PcirError, match="one interval per axis"):
        pd(8, 8, 2, split_intervals=(2, 2, 2))
    with pytest.raises(PcirError, match="multiple of block_size"):
        pd(8, 8, 6, block_size=4)
    with pytest.raises(PcirError, match="needs height and width"):
        pd(num_latents=4)


# ---- RAT-SPN --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_vars, latents, depth, reps", [(16, 2, 2, 3), (20, 4, 3, 2), (9, 3, 1, 4)])
def test_rat_spn_sizes_match_closed_form(num_vars, latents, depth, reps):
    c = rat_spn(num_vars, latents, depth, reps, input_dist="categorical(k=3)", seed=5)
    check_common(c, num_vars)
    leaves, inner = 2**depth, 2**depth - 1
    per_rep_nodes = (leaves + inner) * latents + (leaves + inner - 1) * latents
    nodes = num_vars * latents + reps * per_rep_nodes + 1
    per_rep_edges = latents * num_vars + inner * 2 * latents + (leaves + inner - 1) * latents**2
    edges = reps * per_rep_edges + reps * latents
    s = c.stats()
    assert (s["nodes"], s["edges"]) == (nodes, edges)


def test_rat_spn_repetitions_share_inputs_and_split_at_random():
    c = rat_spn(12, 2, 2, 3, input_dist="bernoulli", seed=1)
    assert sum(isinstance(g, InputGroup) for g in c) == 12
    sc = c.scope()
    parts = [sorted(sc["s0.r0"]), sorted(sc["s1.r0"]), sorted(sc["s2.r0"])]
    assert len({tuple(p) for p in parts}) > 1  # repetitions split differently
    assert rat_spn(12, 2, 2, 3, input_dist="bernoulli", seed=1) == c  # seeded
    small = rat_spn(5, 2, 2, 2, input_dist="bernoulli", num_pieces=3, seed=0)
    check_common(small, 5)
    assert total_probability(small) == pytest.approx(1.0, abs=1e-12)


# ---- HMM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("homogeneous", [True, False])
def test_hmm_sizes_ties_and_forward_algorithm(homogeneous):
    t_len, states, vocab = 4, 3, 5
    c = hmm(t_len, states, vocab, homogeneous=homogeneous, seed=2)
    check_common(c, t_len)
    s = c.stats()
    assert s["nodes"] == t_len * states + 2 * (t_len - 1) * states + 1
    assert s["edges"] == (t_len - 1) * states * states + 2 * (t_len - 1) * states + states
    ins = {g.params for g in c if isinstance(g, InputGroup)}
    trans = {g.params for g in c if isinstance(g, SumGroup) and g.name != "root"}
    assert (len(ins), len(trans)) == ((1, 1) if homogeneous else (t_len, t_len - 1))
    # the circuit is the HMM: compare with the forward algorithm on its own parameters
    emit = [c.param_value(c.group(f"in{t}").params) for t in range(t_len)]
    trans_m = {t: c.param_value(c.group(f"s{t}").params) for t in range(t_len - 1)}  # [z_t, z_t+1]
    init = c.param_value(c.group("root").params)[0]
    xs = enumerate_assignments(c)[::37]
    for x in xs:
        alpha = init * emit[0][:, int(x[0])]
        for t in range(1, t_len):
            alpha = (alpha @ trans_m[t - 1]) * emit[t][:, int(x[t])]
        assert log_likelihood(c, x[None, :])[0] == pytest.approx(math.log(alpha.sum()), abs=1e-12)
    assert total_probability(hmm(3, 2, 3, homogeneous=homogeneous)) == pytest.approx(1.0, abs=1e-12)


# ---- sizes as PyJuice reports them, and build time -------------------------------------------

# PyJuice 2.6.3 on an H200 (../shared/bench/pyjuice-2.6.3-*.jsonl): nodes, edges, sum parameters
PYJUICE_REPORTED = [
    ("pd", 32, (86001, 3273088, 3011712)),
    ("pd", 64, (172001, 12568320, 12046080)),
    ("pd", 128, (343969, 44436992, 43391488)),
    ("pd", 256, (687905, 166075392, 163983360)),
    ("rat", 64, (113729, 4930560, 4068352)),
    ("rat", 256, (454913, 68481024, 65081344)),
    ("hmm", 64, (4097, 131072, 8256)),
    ("hmm", 512, (32769, 8159232, 524800)),
    ("hmm", 2048, (130049, 130154496, 5244928)),
]


@pytest.mark.parametrize("kind, latents, expect", PYJUICE_REPORTED)
def test_sizes_match_what_pyjuice_reported(kind, latents, expect):
    t0 = time.time()
    if kind == "pd":
        c, bs = pd(28, 28, latents, split_intervals=(4, 4)), (16 if latents <= 32 else 32)
    elif kind == "rat":
        c, bs = rat_spn(784, latents, 5, 16), min(256, latents & -latents)
    else:
        c, bs = hmm(32, latents, 33279), min(1024, latents & -latents)
    assert time.time() - t0 < 20  # lazily initialised: no parameter is materialised
    assert all(p.value is None for p in c.params.values())
    got = pyjuice_counts(c, bs)
    assert (got["nodes"], got["edges"], got["params"]) == expect


def test_large_hclt_builds_fast_from_a_tree():
    rng = np.random.default_rng(0)
    edges = [(int(rng.integers(0, v)), v) for v in range(1, 784)]  # a random tree
    t0 = time.time()
    c = hclt(tree=edges, num_latents=512, input_dist="categorical(k=256)")
    assert time.time() - t0 < 20
    children = chow_liu.root_tree(784, edges, chow_liu.tree_center(784, edges))
    inner = sum(1 for v in range(784) if children[v] or v == chow_liu.tree_center(784, edges))
    got = pyjuice_counts(c, 512)
    # PyJuice's convention: inputs + sums + 512 dummy nodes; sum edges + product edges
    assert got["nodes"] == 784 * 512 + (inner - 1) * 512 + 1 + 512
    assert got["edges"] == 512 * (783 + inner) + (inner - 1) * 512 * 512 + 512


def test_generated_circuits_print():
    text = print_ir(pd(4, 4, 2, split_intervals=2, input_dist="bernoulli"))
    assert text.startswith("pcir 1\n") and 'attr structure = "pd"' in text
    assert "dist=bernoulli" in text and "init(random, seed=" in text


def test_input_dist_specs():
    c = hmm(3, 2, 4, input_dist=Dist.make("categorical", k=4))
    assert c.group("in0").dist == Dist.make("categorical", k=4)
    c = rat_spn(4, 2, 1, 1, input_dist="binomial(n=7)")
    assert c.variables[0].domain == Domain.categorical(8)
    with pytest.raises(PcirError, match="cannot be the input distribution"):
        rat_spn(4, 2, 1, 1, input_dist="indicator")
    with pytest.raises(PcirError, match="needs the form name=value"):
        rat_spn(4, 2, 1, 1, input_dist="binomial(7)")


def test_generated_circuits_round_trip_through_pcir_text():
    from pcir.ir import parse_ir

    for c in [
        hclt(tree=[(0, 1), (1, 2), (1, 3)], num_latents=2, input_dist="categorical(k=3)", tie_inputs=True),
        pd(4, 4, 4, split_intervals=1, block_size=2, input_dist="bernoulli"),
        rat_spn(7, 2, 2, 2, input_dist="binomial(n=3)"),
        hmm(4, 2, 5),
    ]:
        assert parse_ir(print_ir(c)) == c


def test_mutual_information_torch_path_matches_numpy():
    pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, (200, 7))
    x[:, 4] = x[:, 0]
    for est in ("exact", "soft"):
        a = chow_liu.mutual_information(x, estimator=est, device="cpu", chunk_size=4, row_chunk=64)
        b = chow_liu.mutual_information(x, estimator=est, device="torch-cpu", chunk_size=4, row_chunk=64)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(PcirError, match="unknown device 'tpu'"):
        chow_liu.mutual_information(x, device="tpu")
