"""Statistics: what the passes buy on structure-shaped circuits, and the partitioning algorithms."""

from __future__ import annotations

import numpy as np
import pytest
from passes.pcgen import hclt, hmm, pd, rat_spn

from pcir.ir import CircuitBuilder, Dist, Domain, SumGroup, verify
from pcir.passes import DEFAULT_PIPELINE, circuit_stats, naive_layering, run_pipeline
from pcir.passes.partition import fanin_partitions, pick_block_size, plan_blocks

STRUCTURES = {
    "hclt": lambda: hclt(12, 8),
    "pd": lambda: pd(6, 4),
    "rat-spn": lambda: rat_spn(16, 4, 3, 3),
    "hmm": lambda: hmm(10, 8),
}


def _sum_chain_length(c) -> int:
    """Longest chain of sums (through products) + 1 for the inputs: the fewest layers possible."""
    best: dict[str, int] = {}
    for g in c:
        below = max((best[ch] for ch in g.children), default=0)
        best[g.name] = below + (1 if isinstance(g, SumGroup) else 0)
    return max(best.values()) + 1


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_layers_kernels_and_buffer_beat_naive_depth_layering(name):
    c = verify(STRUCTURES[name]())
    naive = naive_layering(c)
    out, report = run_pipeline(c, DEFAULT_PIPELINE)
    stats = circuit_stats(out)
    gl = report.records[-1].pass_stats
    assert stats["layered"] and not circuit_stats(c)["layered"]
    assert stats["layers"] == gl["layers"] == _sum_chain_length(out)  # the fewest possible
    # group-layers' naive numbers are those of its input (after collapse-nodes): at most the original's
    assert stats["layers"] < gl["naive.layers"] <= naive["layers"]
    assert stats["kernels"] == gl["kernels"] < gl["naive.kernels"] <= naive["kernels"]
    assert (
        gl["live_peak"]
        <= stats["buffer_nodes"]
        == gl["buffer_nodes"]
        < gl["naive.buffer_nodes"]
        <= naive["buffer_nodes"]
    )
    assert stats["nodes"] <= circuit_stats(c)["nodes"]
    # the table the CLI prints has every statistic for every stage
    table = report.format()
    for key in ("groups", "nodes", "edges", "params", "padded_edges", "layers", "kernels", "buffer_nodes"):
        assert key in table


def test_hclt_numbers():
    # a chain-shaped tree of depth d gives d sum layers; every sum has the same fan-in: one kernel per layer
    c = hclt(12, 8)
    out, report = run_pipeline(c, DEFAULT_PIPELINE)
    gl = report.records[-1].pass_stats
    assert gl["kernels"] == gl["layers"]  # inputs (one family) + one sum kernel per later layer
    assert gl["fused_products"] == sum(1 for g in c if g.kind == "product") and gl["scratch_products"] == 0
    assert report.records[1].pass_stats["fanin_partitions"] == 1


def test_merge_kernels_moves_a_sum_with_slack_into_an_existing_kernel():
    # fan-in 4 chain s1 -> s2 -> s3 (layers 1-3); x (fan-in 16) could run in layer 1..3 and y
    # (fan-in 16) must run in layer 3: merging puts x into y's kernel
    b = CircuitBuilder()
    xs = b.variables(4, Domain.binary())
    bern = Dist.make("bernoulli")
    in0, in1, in2, in3 = (b.input(x, 4, bern) for x in xs)
    s1 = b.sum([in0], 4)
    s2 = b.sum([b.product([s1, in1])], 4)
    s3 = b.sum([b.product([s2, in2])], 4)
    y = b.sum([b.product([s2, b.input(xs[2], 4, bern)], "outer")], 4)
    x = b.sum([b.input(xs[3], 16, bern)], 4)
    b.root(b.sum([b.product([s3, x]), b.product([y, in3])], 1))
    c = verify(b.build())
    merged, rm = run_pipeline(c, "partition-blocks,group-layers")
    unmerged, ru = run_pipeline(c, "partition-blocks,group-layers{merge-kernels=false}")
    m, u = rm.records[-1].pass_stats, ru.records[-1].pass_stats
    assert merged.group(x).attr("part") == merged.group(y).attr("part") != merged.group(s1).attr("part")
    assert unmerged.group(x).attr("layer") == 1 and merged.group(x).attr("layer") == merged.group(y).attr("layer") == 3
    assert m["layers"] == u["layers"] == 5
    assert m["kernels"] == u["kernels"] - 1


def test_no_pass_through_sums_and_shared_products():
    # a product read by sums of layers 1 and 2 keeps one copy (scratch) and no group is added
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.binary())
    a, c_ = b.input(x0, 2, Dist.make("bernoulli")), b.input(x1, 2, Dist.make("bernoulli"))
    pac = b.product([a, c_])
    s1 = b.sum([pac], 2)
    q = b.product([a, b.sum([c_], 2)])
    t = b.sum([pac, q], 2)
    b.root(b.sum([s1, t], 1))
    c = verify(b.build())
    out, _ = run_pipeline(c, "group-layers")
    assert len(out) == len(c)
    assert out.group(pac).attr("fuse") == "scratch" and out.group(q).attr("fuse") == "fused"
    assert (out.group(s1).attr("layer"), out.group(t).attr("layer")) == (1, 2)


# ---- partition-blocks --------------------------------------------------------------------------


def _hidden_blocks(nb: int, bm: int, bk: int, seed: int, density: float = 1.0):
    """Edges of a block-diagonal-ish pattern (nb x nb blocks, some off-diagonal) under a row shuffle."""
    rng = np.random.default_rng(seed)
    mask = np.eye(nb, dtype=bool) | (rng.random((nb, nb)) < 0.15)
    dense = np.kron(mask, np.ones((bm, bk), dtype=bool))
    dense &= rng.random(dense.shape) < density
    dense[np.arange(nb * bm), np.repeat(np.arange(nb), bm) * bk] = True  # every node keeps an edge
    perm = rng.permutation(nb * bm)
    rows, cols = np.nonzero(dense[perm])
    return rows, cols, nb * bm, nb * bk


@pytest.mark.parametrize("seed", range(4))
def test_reordering_finds_hidden_blocks(seed):
    rows, cols, units, k = _hidden_blocks(8, 8, 8, seed)
    plan = plan_blocks(rows, cols, units, k, max_block=8, tolerance=0.0, pow2=False, reorder=True)
    assert plan is not None and (plan.bm, plan.bk) == (8, 8)
    assert plan.computed == len(rows)  # no padding at all
    naive = plan_blocks(rows, cols, units, k, max_block=8, tolerance=0.0, pow2=False, reorder=False)
    assert naive is None or naive.bm * naive.bk < 64  # in the shuffled order 8x8 blocks would pad
    assert plan.naive_computed > 1.5 * len(rows)


def test_reordering_respects_tolerance():
    rows, cols, units, k = _hidden_blocks(6, 4, 4, 0, density=0.8)
    for tol in (0.0, 0.1, 0.3, 0.6):
        plan = plan_blocks(rows, cols, units, k, max_block=8, tolerance=tol, pow2=False, reorder=True)
        if plan is not None:
            assert plan.computed - len(rows) <= tol * plan.computed
            assert plan.mask.shape == (units // plan.bm, k // plan.bk)


def test_partition_blocks_reports_padding_on_a_circuit():
    rows, cols, units, k = _hidden_blocks(4, 4, 4, 1)
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.binary())
    a, c_ = b.input(x0, k, Dist.make("bernoulli")), b.input(x1, k, Dist.make("bernoulli"))
    t = b.sum([b.product([a, c_])], units, edges=np.stack([rows, cols], axis=1))
    b.root(b.sum([t], 1))
    c = verify(b.build())
    out, report = run_pipeline(c, "partition-blocks{tolerance=0}")
    st = report.records[0].pass_stats
    assert st["sums_blocked"] == 1 and st["padding.reordered"] == 0.0 < st["padding.naive"]
    g = out.group(t)
    assert g.pattern == "block" and g.attr("real_edges") == len(rows) and g.attr("bs") == g.block[0]
    assert circuit_stats(out)["padded_edges"] == 0


def test_pick_block_size():
    assert pick_block_size(100, 64, False) == 50
    assert pick_block_size(100, 64, True) == 64
    assert pick_block_size(97, 64, False) == 49
    assert pick_block_size(512, 64, False) == 64
    assert pick_block_size(1, 64, False) == 1
    assert pick_block_size(3, 64, True) == 4


def test_fanin_partitions():
    f = [np.full(10, 4), np.full(10, 64), np.full(5, 60), np.array([3, 4, 4])]
    parts = fanin_partitions(f, 0.25)
    assert parts[0] == parts[3] != parts[1] == parts[2]
    assert parts[0] < parts[1]
    assert fanin_partitions(f, 0.99) == [0, 0, 0, 0]
    assert fanin_partitions([], 0.25) == []


def test_coclustering_reorders_a_private_product_too():
    # rows *and* columns shuffled: the columns belong to a product only this sum reads, so the
    # pass may reorder that product's nodes as well and recover the 8x8 blocks
    rng = np.random.default_rng(0)
    nb, bm = 8, 8
    mask = np.eye(nb, dtype=bool) | (rng.random((nb, nb)) < 0.1)
    dense = np.kron(mask, np.ones((bm, bm), dtype=bool))
    dense = dense[rng.permutation(nb * bm)][:, rng.permutation(nb * bm)]
    rows, cols = np.nonzero(dense)
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.categorical(3))
    a, c_ = (b.input(x, nb * bm, Dist.make("categorical", k=3)) for x in (x0, x1))
    p = b.product([a, c_])
    t = b.sum([p], nb * bm, edges=np.stack([rows, cols], axis=1))
    b.root(b.sum([t], 1))
    c = verify(b.build())
    out, report = run_pipeline(c, "partition-blocks{tolerance=0,max-block=8}")
    st = report.records[0].pass_stats
    assert out.group(t).block == (8, 8) and st["padding.reordered"] == 0.0 < st["padding.naive"]
    assert out.group(p).pattern == "explicit"  # the product's nodes moved with the columns
    _, rows_only = run_pipeline(c, "partition-blocks{tolerance=0,max-block=8,reorder=false}")
    assert rows_only.records[0].pass_stats["sums_blocked"] == 0
    from pcir.ir import log_likelihood
    from pcir.ir.evaluator import enumerate_assignments

    x = enumerate_assignments(c)
    np.testing.assert_allclose(log_likelihood(out, x), log_likelihood(c, x), rtol=1e-12)


def test_wide_products_are_stored():
    b = CircuitBuilder()
    xs = b.variables(20, Domain.binary())
    p = b.product([b.input(x, 2, Dist.make("bernoulli")) for x in xs])
    b.root(b.sum([p], 1))
    c = verify(b.build())
    assert run_pipeline(c, "group-layers")[0].group(p).attr("fuse") == "scratch"
    assert run_pipeline(c, "group-layers{max-fused-arity=0}")[0].group(p).attr("fuse") == "fused"
    assert run_pipeline(c, "group-layers{max-fused-arity=20}")[0].group(p).attr("fuse") == "fused"
