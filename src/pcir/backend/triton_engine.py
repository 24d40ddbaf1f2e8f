"""Runs the generated Triton module over a kernel plan: builds the per-device tile tables once,
then launches one kernel per input family and per layer (forward), two or three per sum layer
(backward: four steps, fused in pairs, see :meth:`TritonEngine.sum_backward`); large dense sum
layers as batched matrix products instead (``BMM``, :meth:`TritonEngine.use_bmm`).

Buffers: ``V``/``F`` node-major ``[num_rows, B]`` float32 (row 0 is log 1), ``M`` ``[sum groups, B]``
the per-sample max over each sum group's columns (written by the forward, read by the backward so
both passes exponentiate against the same shift), ``W`` and ``PF`` in the kernel weight layout,
``E`` ``[columns, B]`` the scratch of one layer's column factors (of a chunk of its groups, for
batched-product layers). After a backward,
``F`` holds flows on the rows of inputs and products, and on the rows of sum nodes the scaled
flows ``F exp(m - V)`` that the sum kernels consumed (see :meth:`TritonEngine.sum_backward`).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from .plan import KernelPlan, SumGroupPlan

BU = 32  # leaf rows per input program
# leaf programs on a flat grid with batch tiles fastest (True) or leaf tiles fastest (codegen
# _leaf_tile); see docs/backend.md for what each measured
LEAF_BATCH_FASTEST = True
# the backward's flow buffer is not zero-filled on rows that an exclusive layer's backward stores
# (TritonEngine._flow_zero_rows) when at least this fraction of rows is such; the rest is zeroed
# by row ranges (at most FLOW_ZERO_RUNS of them) or by one indexed fill. FLOW_POISON (tests): the
# value the uninitialised rows get instead of whatever memory held, so a row that no launch
# writes shows up.
FLOW_SKIP_MIN = 0.25
FLOW_ZERO_RUNS = 16
FLOW_POISON: float | None = None
# the training step's backward keeps the leaves' flows in their value rows (backward's
# ``leaf_alias``) where the plan allows it, so the flow buffer has no leaf rows
LEAF_ALIAS = True
# and, past the leaves, the scaled flows G of the sums whose rows an exclusive layer stores (its
# column kernels compute G = F exp(m - V) for them, read their values for the last time and store
# G over them; their own node preparation is skipped): the flow buffer then has rows only from
# ``alias_end`` on (HCLT, HMM: the root's; RAT-SPN: the root's and the scratch products')
SUM_ALIAS = True
# warps of the sum kernels of 64x64 tiles: a [64, 64] fp32 accumulator (and the tf32x3 split
# operands) over 4 warps is 32+ registers per thread per tile, which limits occupancy; 8 warps
# halve that. Smaller tiles keep Triton's default 4. Shared memory (bench/kernel_resources.py,
# sm_90, BB=64, tf32x3) is 32 KiB (forward, parameter flows) and 80 KiB (column flows) either way.
WARPS_LARGE_TILE = 8
# warps of a layer's column-flow kernels (sum_bwd_mm, sum_bwd_cols) where they compute the
# children's G (SUM_ALIAS's SC): at least this many (0: the layer's). SC adds registers (sm_90,
# bench/launch_resources.py, hclt-128 at batch 512: 90 -> 108 on its 64x64 layers, 106 -> 199 on
# its 16x64 root) and these launches fill less than the card (32-240 programs on 132 SMs), so
# more threads per program may hide more of the gathers' latency. Not measured: SUM_ALIAS costs
# hclt-128 9% of its train step (H200, thirteenth session); this is a guess.
SC_MIN_WARPS = 0
# warps of the sum forward (sum_fwd, sum_fwdt): at least this many (0: the layer's). The small
# rows' forward layers launch fewer programs than the card holds (bench/launch_resources.py at
# batch 512: hmm-64's 31 layers 8 programs each, hclt-128's 32-240 on 132 SMs) and are chains of
# latency-bound loops: more threads per program, more loads in flight. Not measured
# (bench/kernel_probe.py variants fw8, fw16).
FWD_MIN_WARPS = 0
# software-pipelining stages of the sum backward kernels: without pipelining their loops the
# backward was 2-9% faster on every configuration measured (H200, bench/kernel_probe.py: hclt-128
# 3.36 -> 3.05 ms, hclt-512 21.6 -> 20.2, hmm-512 2.77 -> 2.61, pd-128 14.1 -> 13.8, rat-256 equal);
# the forward gained nothing either way and keeps Triton's default
BWD_STAGES = 1
# contiguous gathers (see codegen.COL_ROWS) for layers whose column tables allow them: the sum
# forward 16-31% faster on HCLT and HMM (H200, bench/kernel_probe.py variant "nocg": hclt-512
# 9.52 -> 8.02 ms, hclt-128 batch 1 0.46 -> 0.32, hmm-512 1.44 -> 1.09), the backward about equal
CONTIG_GATHER = True
# table-driven layers (PD, RAT-SPN) run kernels with the arity unrolled (codegen.static_arity):
# pd-128 forward 2.96 -> 2.57 ms, backward 7.63 -> 7.17 on an H200; on contiguous layers the
# unrolled loop was slower (hclt-512 forward 8.0 -> 10.0 ms), so those keep the runtime arity
STATIC_GATHER = True
# short sum launches of few tiles on contiguous layers (fewer than SMALL_LAYER x SMs node tiles in
# the forward, column tiles in the node flows, each looping over at most SMALL_LAYER_LOOP columns /
# nodes) run on batch tiles of 32 instead of 64: twice the programs, to hide the latency of short
# loops. H200, bench/kernel_probe.py variant "small0": hclt-128 forward 1.16 -> 1.04 ms, backward
# 2.11 -> 1.99; suite runs s4 -> s5 (bench/RESULTS.md): train hclt-32 2.08 -> 1.69 ms, hmm-512 3.64
# -> 3.36. Long loops lost (hmm-2048, 2048 columns: forward 4.95 -> 6.07 ms), hence the loop bound;
# so did PD's small tiles (pd-32 train 2.08 -> 2.55 ms), hence contiguous layers only. 0 disables.
SMALL_LAYER = 1.0
SMALL_LAYER_LOOP = 512
# sum layers whose every node (column) tile loops over all column (node) tiles in order, as in
# HCLT's and HMM's dense groups, may loop over the tile index itself instead of a tile list
# (``DENSE``: the loop's addresses affine in its index). Off: on an H200 (bench/kernel_probe.py
# variant "nodense", fifth session) it was 2-4% faster on hclt-128 and hmm-512 but 4% slower on
# hclt-512 (forward 7.35 -> 7.63 ms, backward 16.6 -> 17.2) and 6% on pd-128's backward, and
# software pipelining (num_stages 2, 3) gained nothing with it either
DENSE_LOOP = False
# each sum layer's backward in two launches (codegen's sum_bwd_prep: node and column preparations;
# sum_bwd_mm: parameter and node flows) instead of four, the two halves of each launch on disjoint
# program ranges; False: the four separate kernels (the probe's variant "nofuse"). H200, probe,
# backward: hclt-32 0.86 -> 0.56 ms, hmm-64 0.46 -> 0.24, hclt-128 1.86 -> 1.46, hclt-512 8.26 ->
# 7.80, hmm-2048 6.10 -> 5.90, pd-128 4.37 -> 4.31. Fusing the products of every layer was slower
# on the large ones (hclt-512 9.06, hmm-2048 6.24), hence FUSE_MM_MAX_TILES. Not for shared
# memory (bench/kernel_resources.py: the fused kernel takes the larger half's, 32 KiB on 64x64
# tiles); the fused grid is a rectangle whose parameter part idles where its sample chunks are
# fewer than the node flows' batch tiles, which may be why (not measured)
BWD_FUSED = True
# the products fuse when the layer has at most this many parameter and column tiles per SM
# (independent of the batch, so that precompile.same_specialisation's batch warms the same kernels)
FUSE_MM_MAX_TILES = 1.0
FWD_OPTS: dict = {}  # extra launch options of the sum forward (the probe's knob)
# Programmatic dependent launch of the sum forward's fused-loop kernels (Hopper and later): 0 off;
# 1 each program reads its tables, its first column tile's indices and weights, then gathers,
# and reads each next tile's weights before that tile's gather (the loop PDL 2 runs, without a
# wait: what the CPU interpreter tests); 2 the same, launched with CUDA's programmatic stream
# serialisation, the early reads before griddepcontrol.wait, so that a layer's launch and its
# weight reads overlap the layer below it instead of following it. Written for the small
# batches, whose forward is a chain of 50-70 short layers of about 6-7 us each on an H200 (of
# which the weight reads about 2, bench/RESULTS.md, eleventh session). 2 only on a CUDA device of
# compute capability 9 or more (elsewhere PDL 2 runs as 0, 1 as 1); every program waits, so the
# layers after it see the whole chain's writes. Measured (bench/kernel_probe.py, H200): PDL 2
# took hclt-32's batch-1 forward from 0.146 to 0.115 ms and left batch 512 as it was (0.385 /
# 0.383 ms); the loop alone (1) was 11-15% slower at both (thirteenth session). Hence PDL only
# on the feature-major kernel (small batch tiles) unless PDL_FWDT. The default since the
# fourteenth session, after the whole GPU suite passed with it (H200, 1550 passed; the one
# failure was a test that expected other knobs) and the probe's forward, PDL 2 against 0 (ms,
# H200): hclt-128 0.379 -> 0.267 at batch 1, 1.034 -> 0.976 at 512; hmm-64 0.105 -> 0.072,
# 0.144 -> 0.108; hclt-32 0.148 -> 0.115, 0.386 -> 0.383; pd-32 0.110 -> 0.117 (the one loss),
# 0.385 -> 0.386. 3: the plain loop (as 0, software-pipelined) after griddepcontrol.wait, under
# the same launch (the probe's pdlwait): hclt-128 0.360 / 1.019, hmm-64 0.090 / 0.124, between
# 0 and 2.
PDL = 2
# PDL on the batch-major sum forward too (sum_fwdt, batch tiles of 64 and more): not measured apart
PDL_FWDT = False
# the sum forward runs batch-major (codegen's sum_fwdt) on batch tiles of at least this many
TRANS_FWD_MIN_BB = 64
# batch tile of the sum forward at batches of at least 1024 (64: as every other launch; the
# probe's variant "fbb128" tries 128)
FWD_BB_LARGE = 64
# the categorical leaves' forward from whole table rows (codegen's input_categorical_rows: each
# program reads its tile's rows once, coalesced, and gathers every sample's value on chip) where
# every table of a leaf block has at most LEAF_ROWS_MAX_K categories and the batch is at least
# LEAF_ROWS_MIN_BATCH (at most 64: precompile.same_specialisation replays batches of 64); else
# one read per (leaf, sample), a 32-byte sector each (input_categorical: hclt-128, 51M lookups,
# 0.28-0.30 ms of a 1.07 ms forward on an H200, bench/RESULTS.md). LEAF_ROWS_ELEMS: table
# entries per program (its unit tile is LEAF_ROWS_ELEMS // categories, at most 64 units).
# Measured (bench/kernel_probe.py, H200, fourteenth session): hclt-128's engine forward at batch
# 512, 0.977 ms without, 0.786 with; its tile knobs (BB, warps, entries) are not measured apart.
LEAF_ROWS = True
LEAF_ROWS_MAX_K = 512
LEAF_ROWS_MIN_BATCH = 32
LEAF_ROWS_ELEMS = 4096
LEAF_ROWS_BB = 64  # batch tile of its loop (at batches of 64 and more)
LEAF_ROWS_WARPS = 4
# leaf rows and categories (at most) per program of the categorical counts by matrix product,
# and its warps. H200, bench/kernel_probe.py (sixth session, input_stats): 64 rows instead of
# 32 took hclt-128's counts from 0.396 to 0.216 ms; 256 categories instead of 128, 0.262 (hclt-512
# 1.53 -> 1.01, pd-128 0.40 -> 0.26); 8 warps were slower (0.60)
COUNT_BU = 64
COUNT_BC_MAX = 128
COUNT_WARPS = 4
SCATTER_BU = 32  # leaf rows per program of the counts by scatter
# tables with more categories than this get their expected counts by scatter (one atomic add per
# unit and sample) instead of the one-hot tensor-core product, whose work grows with k: HMM
# emissions over a 33,279-word vocabulary spent 55 of 80 ms per train step there (H200 profile)
COUNT_SCATTER_K = 1024
# dense sum layers by batched matrix product (codegen.BMM_KERNELS: the columns' factors once,
# torch.bmm, then the log): layers whose groups are of one shape, with at least BMM_MIN_FILL of
# their tiles occupied (the product runs over the whole block; weights off the edges are 0), with
# consecutive rows, weights and group indices, of at least BMM_MIN_EDGES edges in the forward
# (BMM_MIN_EDGES_BWD in the backward), at batches of at least BMM_MIN_BATCH (precompile's replay
# batch, see precompile.same_specialisation, takes the same path), in tf32, fp32 or tf32x3
# (BMM_TF32X3). H200 (bench/kernel_probe.py, seventh session): hmm-2048 forward 5.15 -> 4.80 ms, backward 5.90 ->
# 3.31; with every layer so, hmm-512's backward 1.27 -> 0.91 but its forward 0.82 -> 1.19 and
# hclt-128's both 2-3% slower (small layers), hence the thresholds. Since the column kernels run
# one tile per program (a one-group layer fills the card): hmm-2048 forward 4.80 -> 2.03 ms,
# backward 3.31 -> 2.42; hmm-512's forward with its 262K-edge layers as products 0.81 -> 0.74
# (so the forward's threshold came down from 1M to 256K edges), hclt-128's with every layer so
# 1.04 -> 1.41 (layers of 2-3 groups, 9.9 -> 16.5 us). BMM_BK x BMM_BB: the column kernels' tile
BMM = True
BMM_MIN_EDGES = 1 << 18
BMM_MIN_EDGES_BWD = 1 << 18
# (pd-128, bench/kernel_probe.py --layers all: groups 80% full were faster as products, forward
# 309 -> 273 us, 67% and less full slower, 252 -> 281 us and worse)
BMM_MIN_FILL = 0.75
# ... and of at least this many nodes per group: on groups of 32 and 64 (pd-32, pd-64, hclt-64)
# the batched products were slower than the fused loops (suite run s8-bench-bmm: pd-64 train
# 3.12 -> 3.64 ms, pd-32 1.64 -> 1.93, hclt-64 1.77 -> 1.84)
BMM_MIN_UNITS = 128
# with precision tf32x3 (pcir's default: three tf32 products per dot, float32 accuracy) the
# library product runs in IEEE fp32 (no tensor cores; at least as accurate). H200,
# bench/kernel_probe.py --precision tf32x3, variant bmm3 (seventh session): forward / backward
# hclt-512 15.1 / 16.7 -> 8.1 / 10.5 ms, pd-256 11.9 / 18.1 -> 8.5 / 15.1, hmm-2048 10.4 / 12.3
# -> 7.1 / 7.6, rat-d5-r16-256 7.1 / 17.5 -> 4.1 / 14.1, hclt-128 1.64 / 2.09 -> 1.54 / 1.85
BMM_TF32X3 = True
BMM_MIN_BATCH = 64
BMM_BK = 64
BMM_BB = 32
# a batched-product layer whose groups have at most this many columns computes its maxima and
# factors in one pass (codegen's sum_cols_maxexp: one tile of a group's columns per program,
# the children gathered once instead of once for the maxima and again for the factors); wider
# groups, or 0, take the two passes. H200 (seventeenth session, bench/kernel_probe.py variant
# "nobmmfuse"): hclt-128's engine forward at 512 0.721 -> 0.662 ms (layer 0 93 -> 73 us)
BMM_FUSE_MAX_K = 256
# a batched-product layer's backward runs a chunk of its groups at a time, as many as keep the
# chunk's column factors (E, columns x batch) and its product temporaries (the chunk's weight
# size, then E's; they go to E's rows past the chunk's) at most this many bytes each (at least one
# group), or half the largest E of the other layers where that is more (the chunk and its
# temporaries then fit in that E): the scratch of a layer at once was 7-15% of the train step's
# peak on PD-128/256, RAT-256 and HCLT-512 (bench/memory_probe.py, ninth session). The forward
# chunks only past the room the backward's scratch takes anyway (TritonEngine._chunk_caps): each
# chunk is five launches, and 32 MiB chunks throughout cost pd-256 1.7 ms of 16 per train step
# (H200). 0: each layer at once. BMM_CHUNK_ROOM False: chunks of BMM_CHUNK_BYTES in both passes.
BMM_CHUNK_BYTES = 32 << 20
BMM_CHUNK_ROOM = True
# chained sum layers (plan.Chain: HCLT's paths, an HMM's time steps) in one launch each
# (codegen's sum_fwd_chain: one program per chain and batch tile runs the chain's steps in order,
# a barrier between steps) instead of one launch per layer, in the forward where no layer of the
# run is a batched product at that batch and every step is one tile. The forward of small
# circuits is a chain of 50-70 short layers of 6-7 us each, mostly latency (bench/RESULTS.md,
# twelfth session). H200, bench/kernel_probe.py (sixteenth session), the first form (a step's
# tiles in a loop, no prefetching), engine forward at batch 1 / 512: hclt-32 0.115 -> 0.202 /
# 0.335 -> 0.280 ms, hclt-128 (four 64x64 tiles a step) 0.267 -> 0.909 / 0.784 -> 0.964; hmm-64's
# whole call 0.153 -> 0.208 ms at 512. One program's step (table -> rows -> values, then the
# weights) was slower than a PDL launch of its layer, whose table and weight reads overlap the
# layer below. Hence one tile a step (the launch's own, up to CHAIN_MAX_TILE square, whatever
# the layers' tiles, which the backward keeps), the next step's weights read while a step
# computes. H200, the same probe: hclt-32 0.116 -> 0.112 ms at batch 1, 0.336 -> 0.258 at 512;
# hclt-64 0.136 -> 0.119, 0.398 -> 0.345; hmm-64 0.072 -> 0.056, 0.108 -> 0.100; with the
# launch's own tile, hclt-128 (128 x 128, 16 warps; 102 registers, no spills on sm_90) 0.268 ->
# 0.265 at batch 1, 0.786 -> 0.718 at 512.
CHAIN = True
CHAIN_MAX_TILE = 128
# batch tile of the chained launches (0: from batch 64 on, CHAIN_BB_SMALL where a step is at
# most CHAIN_SMALL_TILE weights, else 32, as the small layers' launches; below 64 the batch's own
# tile). Tiles of 16 double the programs at 512 (bench/kernel_probe.py variant "chainbb16"; H200,
# engine forward / backward at 512, seventeenth session: hclt-32, 32 x 32 steps, 0.258 -> 0.246 /
# 0.390 -> 0.355 ms (the sixteenth: 0.261 -> 0.248 forward); larger steps lost: hclt-64 0.357 ->
# 0.370 / 0.708 -> 0.720, hmm-64 0.085 -> 0.090, hclt-128 0.718 -> 0.759)
CHAIN_BB = 0
CHAIN_BB_SMALL = 16
CHAIN_SMALL_TILE = 32 * 32
# up to this batch, on steps up to CHAIN_VEC_MAX_TILE square, the chained launches run the VEC
# forms of codegen's sum_fwd_chain and sum_bwd_chain: the steps' sums as products broadcast over
# the batch's own tile and reduced in registers (IEEE fp32), not tl.dot on a batch tile of 16 (at
# batch 1, 15 of its 16 columns masked; the weights staged through shared memory for the tensor
# cores at every step); the backward (CHAIN_VEC_BWD) on steps up to CHAIN_VEC_BWD_MAX_TILE square
# (CHAIN_BWD_MAX_TILE caps the matrix-product form only), in node sub-tiles of CHAIN_VEC_SUB.
# H200, bench/kernel_probe.py, engine forward / backward in ms (nineteenth session): before the
# whole-width loads (CHAIN_FULL), hclt-32 (32 x 32 steps) at batch 1 0.112 -> 0.078 / 0.228 ->
# 0.179, at 8 0.115 -> 0.154 / 0.230 -> 0.194; hclt-128 (128 x 128) at 1 0.264 -> 0.274 / 0.566
# -> 0.628, at 2 0.300 -> 0.428. With them, hclt-128 at 1: 0.210 -> 0.189 forward, 0.528 -> 0.811
# backward (so the VEC backward stops at 64 x 64). sm_90 (bench/launch_resources.py, 128 x 128 on
# 16 warps): no spills at batch 1; at 2 8 bytes a thread in the forward; at 4 344 (forward) and
# 176 (backward). 0: never
CHAIN_VEC_MAX_B = 1
CHAIN_VEC_MAX_TILE = 128
CHAIN_VEC_BWD = True
CHAIN_VEC_BWD_MAX_TILE = 64
CHAIN_VEC_WARPS = 0  # the VEC form's warps (0: the run's, _ChainRun.num_warps)
CHAIN_VEC_SUB = 32  # its node sub-tile
# chained runs whose every step has the launch's bk columns (HCLT's and HMMs' groups) load their
# weights without column masks from an aligned base (codegen's _chain_w, FULL).
# ncu of hclt-128's chained forward at batch 1 (nineteenth session): 1,138 instructions a warp a
# step, most of them 64-bit address and mask arithmetic (IMAD, ISETP, LEA) of the masked loads
CHAIN_FULL = True
# the backward of a chained run in one launch too (codegen's sum_bwd_chain: per step the node
# preparation, the column factors, the parameter flows by atomic add and the children's flows,
# top step first, a barrier between steps), where every layer of the run is exclusive, none is a
# batched product in the backward and none has scratch products to recompute, and a step fits
# CHAIN_BWD_MAX_TILE square. H200 (seventeenth session, bench/kernel_probe.py, engine backward
# per layer -> chained, ms at batch 1 / 512): hclt-32 0.261 -> 0.228 / 0.590 -> 0.394, hmm-64
# 0.202 -> 0.126 / 0.246 -> 0.177; hclt-128's 128 x 128 steps (in node sub-tiles of 16) were
# much slower, 0.535 -> 2.718 / 1.349 -> 2.388, so steps over 64 x 64 keep the per-layer backward.
CHAIN_BWD = True
CHAIN_BWD_MAX_TILE = 64
# the chained backward's node sub-tile: a step's nodes in sub-tiles of at most CHAIN_BWD_SUB
# (steps of up to 64 columns) or CHAIN_BWD_SUB_WIDE (128), the weights, parameter-flow tile and G
# of one sub-tile at a time in registers; warps: one per 512 weights of a sub-tile, at least 4.
# sm_90 (bench/launch_resources.py, hclt-128's 128 x 128 steps, batch 512 / 1): sub-tiles of 64
# on 16 warps spilled 312 / 128 bytes a thread, of 32 on 8 warps 16 / 0, of 16 on 4 warps none
# (255 registers); hclt-32, hclt-64 (one sub-tile of 32 x 32 on 4 warps, 64 x 64 on 8): 168 and
# 206 registers, none
CHAIN_BWD_SUB = 64
CHAIN_BWD_SUB_WIDE = 16
ROW_TILE = 2048  # entries per program tile of the row-wise passes (EM, normalisation)
CHECK_BV, CHECK_BB = 32, 32  # variables and samples per program of the data check


def set_knobs(items: list[str]) -> dict:
    """Set this module's knobs (its upper-case constants above) from ``NAME=VALUE`` strings, each
    value a Python literal of the knob's type (an int for a float knob too); return what was set.
    For A/B runs of a default: ``bench/run.py --knob``, ``pytest --engine-knob``. Raises
    ValueError naming the bad item; nothing is set then."""
    import ast

    done = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isupper() or name not in globals():
            raise ValueError(f"{item}: expected NAME=VALUE with NAME a knob of pcir.backend.triton_engine")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{item}: {text!r} is not a Python literal") from None
        old = globals()[name]
        if type(value) is not type(old) and not (isinstance(old, float) and isinstance(value, int)):
            raise ValueError(f"{item}: {name} is a {type(old).__name__}, got a {type(value).__name__}")
        done[name] = value
    globals().update(done)
    return done


def _row_bk(row_len: int) -> int:
    """The column chunk of the row-wise kernels for rows of ``row_len``: a power of two, 16..1024."""
    bk = 16
    while bk < min(row_len, 1024):
        bk *= 2
    return bk


def _overlapping(spans: list[tuple[int, int]]) -> set[int]:
    """The starts of the spans ``[a, e)`` that overlap another span."""
    out: set[int] = set()
    cluster: list[int] = []
    end = -1
    for a, e in sorted(spans):
        if a >= end:
            if len(cluster) > 1:
                out.update(cluster)
            cluster = []
        cluster.append(a)
        end = max(end, e)
    if len(cluster) > 1:
        out.update(cluster)
    return out


def _union_runs(runs) -> list[tuple[int, int, int]]:
    """``(offset, length, row_len)`` runs of a flat store merged where they overlap or touch
    (tied tables: several groups read one table)."""
    out: list[list[int]] = []
    for off, n, k in sorted(runs):
        if out and off <= out[-1][0] + out[-1][1] and out[-1][2] == k:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n, k])
    return [tuple(r) for r in out]  # type: ignore[misc]


def row_tiles(runs, device, row_id=None) -> list[tuple[int, int, torch.Tensor, int]]:
    """Tile tables of the row-wise kernels over the uniform runs ``(offset, length, row_len)`` of a
    flat parameter store (``plan.runs``; ragged runs, ``row_len == 0``, are left to torch): one
    launch per tile shape ``(BR rows, BK columns per chunk)``, ``BK`` the row length rounded up to
    a power of two (16..1024), one row ``(first entry, row_len, rows)`` per tile of at most ``BR``
    consecutive rows of one run, and with ``row_id`` (the store's ``RowIds``) the row number of the
    tile's first row as a fourth entry. Returns ``[(BR, BK, table, tiles)]``."""
    by: dict[tuple[int, int], list[np.ndarray]] = {}
    for off, n, row_len in runs:
        if not row_len or not n:
            continue
        bk = _row_bk(row_len)
        br = max(2, ROW_TILE // bk)
        rows = n // row_len
        r0 = np.arange(0, rows, br, dtype=np.int64)
        cols = [off + r0 * row_len, np.full_like(r0, row_len), np.minimum(br, rows - r0)]
        if row_id is not None:  # a run's rows are consecutive row numbers
            cols.append(int(row_id[off : off + 1][0]) + r0)
        tab = np.stack(cols, axis=1)
        by.setdefault((br, bk), []).append(tab)
    out = []
    for (br, bk), tabs in sorted(by.items()):
        tab = np.concatenate(tabs)
        out.append((br, bk, torch.as_tensor(tab.reshape(-1), device=device), len(tab)))
    return out


def _categorical_groups(plan: KernelPlan, block) -> list[tuple[int, int, int, int, int]]:
    """(row, units, variable, table offset, categories) of each leaf group of a categorical
    block: every unit of a group reads one variable, unit u's table row at offset + u * k."""
    out = []
    for name, row, units in block.groups:
        i = row - block.row
        out.append((row, units, int(block.var[i]), int(block.index[i]), plan.params[plan.group_param[name]].k))
    return out


def _batch_tile(B: int) -> int:
    b = 16
    while b < min(B, 64):
        b *= 2
    return b


class _SumLayer:
    def __init__(self, layer, variant: int, device):
        lt = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64).reshape(-1), device=device)
        A = layer.arity
        cols, fwd, fwd_list, col_tab, col_list, pf_tab = [], [], [], [], [], []
        off = 0
        dense_fwd = dense_col = True  # every tile list the full range, in order
        for g in layer.groups:
            assert isinstance(g, SumGroupPlan)
            padded = np.zeros((g.k, A), dtype=np.int64)
            padded[:, : g.arity] = g.cols
            cols.append(padded.reshape(-1))
            head = (g.row, g.units, g.w_off, g.k, off)
            tiles = g.tiles
            for mt in np.unique(tiles[:, 0]):
                ks = tiles[tiles[:, 0] == mt, 1]
                fwd.append((*head, mt, len(fwd_list), len(ks), g.index))
                fwd_list.extend(ks.tolist())
                dense_fwd &= bool(np.array_equal(ks, np.arange(-(-g.k // layer.block_k))))
            for kt in np.unique(tiles[:, 1]):
                ms = tiles[tiles[:, 1] == kt, 0]
                dense_col &= bool(np.array_equal(ms, np.arange(-(-g.units // layer.block_m))))
                col_tab.append((*head, kt, len(col_list), len(ms), g.index))
                col_list.extend(ms.tolist())
            for mt, kt in tiles:  # [7]: the group's first row in the backward's column factors E
                pf_tab.append((*head, mt, kt, off // A, g.index))
            off += g.k * A
        self.variant = variant
        self.arity = A
        self.max_k = max(g.k for g in layer.groups)  # the forward's loop (columns)
        self.max_units = max(g.units for g in layer.groups)  # the node flows' loop (nodes)
        self.columns = off // A  # columns of all groups: rows of the backward's E
        contig = layer.contiguous()
        self.contig = CONTIG_GATHER and contig
        # the kernels with the arity unrolled (codegen, suffix "s") for table-driven layers
        self.sfx = "s" if STATIC_GATHER and not contig else ""
        self.dense_fwd = DENSE_LOOP and dense_fwd
        self.dense_col = DENSE_LOOP and dense_col
        self.num_warps = WARPS_LARGE_TILE if layer.block_m * layer.block_k >= 64 * 64 else 4
        self.exclusive = layer.exclusive
        self.cols = lt(np.concatenate(cols)).to(torch.int32)
        self.fwd, self.fwd_list = lt(fwd), lt(fwd_list or [0])
        self.col, self.col_list = lt(col_tab), lt(col_list or [0])
        self.pf = lt(pf_tab)
        self.n_fwd, self.n_col, self.n_pf = len(fwd), len(col_tab), len(pf_tab)
        # the batched-product form (TritonEngine.use_bmm): (groups, nodes, columns, first row,
        # first weight, first group index) where the groups are of one shape, at least
        # BMM_MIN_FILL full, and their rows, weights and indices follow each other; else None
        gs = layer.groups
        g0 = gs[0]
        N, K = g0.units, g0.k
        full = -(-N // layer.block_m) * -(-K // layer.block_k)
        regular = all(
            g.units == N and g.k == K and len(g.tiles) >= BMM_MIN_FILL * full and g.row == g0.row + i * N
            and g.w_off == g0.w_off + i * N * K and g.index == g0.index + i
            for i, g in enumerate(gs)
        )  # fmt: skip
        self.bmm = (len(gs), N, K, g0.row, g0.w_off, g0.index) if regular else None
        self.edges = sum(g.units * g.k for g in gs)
        offs = np.cumsum([0] + [g.k * A for g in gs])[:-1]
        self.gtab = lt([(g.k, int(o), g.index) for g, o in zip(gs, offs, strict=True)])
        # rows whose flow the backward of an exclusive layer stores (not adds) for every sample:
        # the children of every column of its occupied column tiles (the batched-product path
        # stores every column, a superset); no other launch writes them (plan.exclusive)
        self.stored_rows = np.zeros(0, dtype=np.int64)
        if layer.exclusive:
            parts = []
            for g in gs:
                kts = np.unique(g.tiles[:, 1])
                ks = (kts[:, None] * layer.block_k + np.arange(layer.block_k)[None, :]).reshape(-1)
                parts.append(np.asarray(g.cols)[ks[ks < g.k], : g.arity].reshape(-1))
            rows = np.concatenate(parts).astype(np.int64)
            self.stored_rows = rows[rows != 0]


def _pow2_at_least(n: int, lo: int) -> int:
    """The smallest power of two at least ``n`` and ``lo``."""
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


def _chain_bb(run: _ChainRun, B: int) -> int:
    """The batch tile of the chained run ``run``'s launches at batch ``B`` (CHAIN_BB)."""
    if CHAIN_BB:
        return CHAIN_BB
    if B < 64:
        return _batch_tile(B)
    return CHAIN_BB_SMALL if run.bm * run.bk <= CHAIN_SMALL_TILE else 32


def _chain_vec(run: _ChainRun, B: int, backward: bool = False) -> bool:
    """Whether the chained run ``run``'s forward (``backward``) at batch ``B`` takes its VEC
    form (CHAIN_VEC_MAX_B, CHAIN_VEC_MAX_TILE; CHAIN_VEC_BWD, CHAIN_VEC_BWD_MAX_TILE)."""
    if backward:
        return CHAIN_VEC_BWD and B <= CHAIN_VEC_MAX_B and max(run.bm, run.bk) <= CHAIN_VEC_BWD_MAX_TILE
    return B <= CHAIN_VEC_MAX_B and max(run.bm, run.bk) <= CHAIN_VEC_MAX_TILE


class _ChainRun:
    """A run of chained sum layers (plan.Chain) as one launch of ``sum_fwd_chain``: ``ch``, the
    ``[chains, steps, 5 + amax]`` int64 table (row, units, w_off, K, group, the inputs' first
    rows); the launch's tile ``bm x bk`` (powers of two covering every step's units and columns,
    whatever the layers' own tiles); ``ok`` False where a step's group is larger than
    CHAIN_MAX_TILE or not dense (the kernel computes every column of its one tile)."""

    def __init__(self, chain, plan: KernelPlan, layers: list, device):
        self.start, self.end = chain.start, chain.end
        self.layers = layers[chain.start : chain.end]
        self.steps = chain.end - chain.start
        self.chains = len(chain.groups)
        groups = [plan.layers[chain.start + j].groups[gi] for path in chain.groups for j, gi in enumerate(path)]
        self.bm = _pow2_at_least(max(g.units for g in groups), 16)  # (at least 16: tl.dot)
        self.bk = _pow2_at_least(max(g.k for g in groups), 16)
        self.amax = 2
        while self.amax < max(g.arity for g in groups):
            self.amax *= 2
        self.width = 5 + self.amax
        # warps: 4 up to 32 x 32 tiles, then one per 1024 weights (64 x 64: 4, 128 x 128: 16),
        # which keeps the weight tile and the next step's (read ahead) at 64 registers a thread
        self.num_warps = min(16, max(4, self.bm * self.bk // 1024))
        ch = np.zeros((self.chains, self.steps, self.width), dtype=np.int64)
        # the row blocks the backward addresses from one base each: a step's nodes, each input's
        # K rows (sum_bwd_chain shifts a block's flow rows once: TritonEngine.alias_end must not
        # cut one; then ``split`` is set and the run keeps the per-layer backward)
        self.blocks: list[tuple[int, int]] = []
        self.split = False
        self.ok = self.bm <= CHAIN_MAX_TILE and self.bk <= CHAIN_MAX_TILE
        # every step's weights bk columns at a multiple of 16 (the kernels' FULL)
        self.full = CHAIN_FULL and all(g.k == self.bk and g.w_off % 16 == 0 for g in groups)
        for c, path in enumerate(chain.groups):
            for j, gi in enumerate(path):
                lay = plan.layers[chain.start + j]
                g = lay.groups[gi]
                self.ok &= len(g.tiles) == -(-g.units // lay.block_m) * -(-g.k // lay.block_k)
                ch[c, j, :5] = (g.row, g.units, g.w_off, g.k, g.index)
                ch[c, j, 5 : 5 + g.arity] = np.asarray(g.cols, dtype=np.int64)[0, : g.arity]
                self.blocks.append((g.row, g.units))
                self.blocks += [(int(r), g.k) for r in ch[c, j, 5 : 5 + g.arity] if r]
        self.ch = torch.as_tensor(ch.reshape(-1), device=device)
        self.flags: dict = {}  # leaf alias on/off -> the backward's per-step flags (chain_backward)

    def cut_by(self, *ends: int) -> bool:
        """Whether a row in ``ends`` falls strictly inside one of the run's row blocks."""
        return any(r < e < r + n for r, n in self.blocks for e in ends)


class _ProductLayer:
    def __init__(self, layer, device):
        A = layer.arity
        idx, tab = [], []
        off = 0
        for g in layer.groups:
            padded = np.zeros((g.units, A), dtype=np.int64)
            padded[:, : g.arity] = g.idx
            idx.append(padded.reshape(-1))
            tab.append((g.row, g.units, off))
            off += g.units * A
        self.arity = A
        self.exclusive = layer.exclusive
        self.row0 = min(g.row for g in layer.groups)  # the launch's rows are contiguous
        self.rows = sum(g.units for g in layer.groups)
        self.idx = torch.as_tensor(np.concatenate(idx), dtype=torch.int32, device=device)
        self.tab = torch.as_tensor(np.asarray(tab, dtype=np.int64).reshape(-1), device=device)
        self.n = len(tab)


class TritonEngine:
    name = "triton"

    def __init__(self, plan: KernelPlan, device: torch.device, kernels, precision: str):
        self.plan = plan
        self.device = device
        self.k = kernels
        self.precision = precision
        lt = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)
        self.inputs = [(b, lt(b.var), lt(b.index)) for b in plan.inputs if b.count]
        self.leaf_rows = self._leaf_rows_tables(plan, device)
        # categorical counts: one entry per (leaf group, node tile); tables of at most
        # COUNT_SCATTER_K categories as matrix products, larger ones by scatter
        groups = []  # (row, units, var, table offset, k, first table row)
        self.count_bc = 16
        self.count_cmax = 1
        for b in plan.inputs:
            if b.family != "categorical":
                continue
            for row, units, var, off, k in _categorical_groups(plan, b):
                trow = int(plan.cat_row_id[off : off + 1][0])  # the table's rows are consecutive
                groups.append((row, units, var, off, k, trow))
                if k <= COUNT_SCATTER_K:
                    while self.count_bc < min(k, COUNT_BC_MAX):
                        self.count_bc *= 2
                    self.count_cmax = max(self.count_cmax, k)
        # the training step's table update (input_stats with em): a table that one group reads
        # in one pass (input_categorical_em); tied tables (their rows' counts come from several
        # groups) and tables counted by scatter in four (row totals, prior, scaled counts, log)
        shared = _overlapping([(g[3], g[3] + g[1] * g[4]) for g in groups])

        def tab(sel, bu):
            out = [(r, u, v, o, k, t, tr) for r, u, v, o, k, tr in groups if sel(o, k) for t in range(-(-u // bu))]
            return torch.as_tensor(np.asarray(out, dtype=np.int64).reshape(-1), device=device), len(out)

        dense = lambda o, k: k <= COUNT_SCATTER_K  # noqa: E731
        self.count_tab, self.count_n = tab(dense, COUNT_BU)
        self.scatter_tab, self.scatter_n = tab(lambda o, k: not dense(o, k), SCATTER_BU)
        self.em1_tab, self.em1_n = tab(lambda o, k: dense(o, k) and o not in shared, COUNT_BU)
        self.tied_tab, self.tied_n = tab(lambda o, k: dense(o, k) and o in shared, COUNT_BU)
        four = {(o, u * k, k) for _r, u, _v, o, k, _t in groups if not dense(o, k) or o in shared}
        # row-wise EM and normalisation of the uniform runs of the parameter stores
        self.row_tiles = {"sum": row_tiles(plan.runs("sum"), device), "cat": row_tiles(plan.runs("cat"), device)}
        # the four-pass update's row passes: the tiles of those tables, with each tile's first
        # table row (the index of its rows' total flows)
        runs = _union_runs(four)
        self.cat_em_tiles = [
            (br, bk, t, n, triton_cdiv(max(r[2] for r in runs if _row_bk(r[2]) == bk), bk))
            for br, bk, t, n in row_tiles(runs, device, plan.cat_row_id)
        ]  # (BR, BK, table, tiles, column chunks of the longest row)
        self.layers = []
        for layer in plan.layers:
            if layer.kind == "sum":
                self.layers.append(_SumLayer(layer, kernels.LAYER_VARIANT[layer.index], device))
            else:
                self.layers.append(_ProductLayer(layer, device))
        # chained runs by their first launch (plan.chains; see CHAIN), and by their last (the
        # backward's first: CHAIN_BWD)
        self.chain_at = {ch.start: _ChainRun(ch, plan, self.layers, device) for ch in plan.chains}
        self.chain_top = {run.end - 1: run for run in self.chain_at.values()}
        self.sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        # griddepcontrol (PDL 2) needs Hopper or later; elsewhere PDL 2 runs as 0
        self.pdl_ok = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
        # parameter-flow programs split the batch until about this many run at once
        self.target_programs = 4 * self.sms
        self.num_sum_groups = sum(len(layer.groups) for layer in plan.layers if layer.kind == "sum")
        self.flow_zero = self._flow_zero_rows()
        self.leaf_end, self.flow_zero_alias, self.leaf_zero_at = self._leaf_alias()
        self.alias_end, self.g_alias, self.scale_children, self.row_group, zero = self._sum_alias()
        if zero is not None:  # the flow buffer's rows to zero, from the alias end on
            self.flow_zero_alias = zero
        for run in self.chain_at.values():  # (see _ChainRun.blocks; the layers end at alias_end)
            run.split = run.cut_by(self.alias_end, self.leaf_end)
        self.max_columns = max([L.columns for L in self.layers if isinstance(L, _SumLayer)], default=1)
        self._caps: dict = {}  # (batch, aliased) -> _chunk_caps
        self.compiled_for: set[int] = set()  # batch sizes whose kernels were compiled up front
        # dtypes of the data the graphed forward reads through its address word (the runtime
        # adds the caller's): the up-front compile warms its data check for each
        self.data_dtypes: set = {torch.float32}
        self.precompiled = False  # whether the last parallel compile ran (see precompile.py)
        if device.type == "cuda":  # the row-wise parameter kernels do not depend on the batch
            from .precompile import precompile_rows

            precompile_rows(self)

    def _flow_zero_rows(self):
        """The rows of the backward's flow buffer that must start at zero: all but those an
        exclusive layer's backward stores (HCLT: every row but the root's). None: zero the whole
        buffer (when most rows need it); else a list of row ranges, or a row-index tensor when the
        ranges are many."""
        stored = self._stored_mask()
        stored[0] = False
        if stored.mean() < FLOW_SKIP_MIN:
            return None
        return self._zero_rows(stored)

    def _stored_mask(self) -> np.ndarray:
        """Per row: whether an exclusive layer's backward stores its flow for every sample, or it
        is the root's (set to the root flow)."""
        plan = self.plan
        stored = np.zeros(plan.num_rows, dtype=bool)
        for L in self.layers:
            if isinstance(L, _SumLayer):
                stored[L.stored_rows] = True
        stored[plan.root_row : plan.root_row + plan.root_units] = True
        return stored

    def _zero_rows(self, stored: np.ndarray):
        """The rows not ``stored``, as row ranges (at most FLOW_ZERO_RUNS) or a row-index tensor."""
        zero = np.flatnonzero(~stored)
        if len(zero) == 0:
            return []
        cut = np.flatnonzero(np.diff(zero) != 1) + 1
        runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(zero, cut)]
        if len(runs) <= FLOW_ZERO_RUNS:
            return runs
        return torch.as_tensor(zero, dtype=torch.long, device=self.device)

    def _leaf_alias(self):
        """(leaf end, flow-buffer rows to zero, layer) of the backward's leaf alias
        (``backward(..., leaf_alias=True)``), or (0, None, -1) where it does not apply. The
        leaves are rows ``[1, leaf end)`` (plan.py places them first); the alias needs that no
        launch reads a leaf's value after the first one writes its flow. Either every leaf is
        stored (not added) by an exclusive layer's backward, the only gather that reads it (HCLT,
        HMM, PD; layer -1); or every leaf is read by one product layer only (RAT-SPN's first
        layer), whose backward adds the flows after the leaves' rows of ``V`` are zeroed (the
        layer returned; its recompute, if it is a scratch layer, runs before). The rows to zero
        are those of ``flow_zero`` at or above the leaf end, as ranges."""
        plan = self.plan
        end = 1 + sum(b.count for b in plan.inputs)
        if not LEAF_ALIAS or end <= 1 or any(b.count and not 1 <= b.row < end for b in plan.inputs):
            return 0, None, -1
        if plan.root_row < end:
            return 0, None, -1
        stored = self._stored_mask()
        zero_at = -1
        if not stored[1:end].all():

            def reads_leaves(lay) -> bool:
                tabs = (g.cols if lay.kind == "sum" else g.idx for g in lay.groups)
                return any(bool(np.any((t >= 1) & (t < end))) for t in tabs)

            readers = [i for i, lay in enumerate(plan.layers) if reads_leaves(lay)]
            if len(readers) != 1 or plan.layers[readers[0]].kind != "product":
                return 0, None, -1
            zero_at = readers[0]
        stored[:end] = True  # row 0 is never written (its flows are masked) nor read as a flow
        return end, self._zero_rows(stored), zero_at

    def _sum_alias(self):
        """(alias end, layers whose sums keep G in their value rows, layers whose column kernels
        compute G for their children, row -> sum group or -1 as an int32 tensor, the flow
        buffer's rows to zero; the last two None where no sum joins the alias). The
        sums' rows that follow the leaves, layer by layer, join the alias while an exclusive
        layer stores every one of them (so their values are last read by that layer's
        preparation, and their own preparation is the only other reader); scratch product layers
        (rows of their own at the end) are passed over; the root and any other layer end it."""
        plan, e = self.plan, self.leaf_end
        none = (e, set(), set(), None, None)
        if not (SUM_ALIAS and e):
            return none
        stored = self._stored_mask()
        stored[plan.root_row : plan.root_row + plan.root_units] = False
        end, mine = e, set()
        for t, (L, lay) in enumerate(zip(self.layers, plan.layers, strict=True)):
            if not isinstance(L, _SumLayer):
                if getattr(lay, "scratch", False):
                    continue
                break
            r0 = min(g.row for g in lay.groups)
            n = sum(g.units for g in lay.groups)
            if r0 != end or not stored[r0 : r0 + n].all():
                break
            end += n
            mine.add(t)
        if not mine:
            return none
        rg = np.full(plan.num_rows, -1, dtype=np.int32)
        for t in mine:
            for g in plan.layers[t].groups:
                rg[g.row : g.row + g.units] = g.index
        parents = set()
        for t, (L, lay) in enumerate(zip(self.layers, plan.layers, strict=True)):
            if (
                isinstance(L, _SumLayer)
                and L.exclusive
                and any(bool(np.any(rg[np.asarray(g.cols)[:, : g.arity].reshape(-1)] >= 0)) for g in lay.groups)
            ):
                parents.add(t)
        stored[:end] = True
        stored[plan.root_row : plan.root_row + plan.root_units] = True
        return end, mine, parents, torch.as_tensor(rg, device=self.device), self._zero_rows(stored)

    def _alias_rows(self, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward's buffer under the alias: ``X [2 R - alias end, B]``, ``V = X[:R]``; the
        backward's flows are ``F = X[R - alias end:]``, whose rows from the alias end on follow
        ``V`` and whose rows below it are ``V``'s own (``codegen._flow_row``): the leaves' flows
        and the aliased sums' G (``_sum_alias``)."""
        R, e = self.plan.num_rows, self.alias_end
        X = torch.empty((2 * R - e, B), dtype=torch.float32, device=device)
        return X, X[:R]

    def _flow_buffer(self, V, root_flow, alias: bool = False):
        """The backward's flow buffer: uninitialised where an exclusive layer stores every
        sample's flow, zero elsewhere, the root flow on the root's rows (``FLOW_POISON``: the
        uninitialised rows filled with it instead, for tests)."""
        plan = self.plan
        if alias:
            X, R, e = V._base, plan.num_rows, self.alias_end
            assert X is not None and X.shape[0] == 2 * R - e, "leaf alias: V must come from forward(flow_rows=True)"
            F = X[R - e :]
            if FLOW_POISON is not None:
                F[e:].fill_(FLOW_POISON)
            if isinstance(self.flow_zero_alias, torch.Tensor):
                F.index_fill_(0, self.flow_zero_alias, 0.0)
            else:
                for a, b in self.flow_zero_alias:
                    F[a:b].zero_()
        elif self.flow_zero is None:
            F = torch.zeros_like(V)
        else:
            F = torch.empty_like(V) if FLOW_POISON is None else torch.full_like(V, FLOW_POISON)
            if isinstance(self.flow_zero, torch.Tensor):
                F.index_fill_(0, self.flow_zero, 0.0)
            else:
                for a, b in self.flow_zero:
                    F[a:b].zero_()
        F[plan.root_row : plan.root_row + plan.root_units] = root_flow
        return F

    def _leaf_rows_tables(self, plan: KernelPlan, device) -> dict:
        """{categorical block row: (tile table, tiles, unit tile BU, categories KP)} for the blocks
        whose leaves can run input_categorical_rows (every table at most LEAF_ROWS_MAX_K
        categories): one entry (row, units, var, table offset, k, unit tile) per unit tile."""
        out = {}
        for b in plan.inputs:
            if b.family != "categorical" or not b.count:
                continue
            groups = _categorical_groups(plan, b)
            kmax = max(g[4] for g in groups)
            if kmax > LEAF_ROWS_MAX_K:
                continue
            kp = 2
            while kp < kmax:
                kp *= 2
            bu = 4
            while bu < min(64, max(g[1] for g in groups), LEAF_ROWS_ELEMS // kp):
                bu *= 2
            ents = [(r, u, v, o, k, t) for r, u, v, o, k in groups for t in range(-(-u // bu))]
            tab = torch.as_tensor(np.asarray(ents, dtype=np.int64).reshape(-1), device=device)
            out[b.row] = (tab, len(ents), bu, kp)
        return out

    # ---- forward -----------------------------------------------------------------------------
    def check_data(self, xf, lo, hi, real, signal=None):
        """(``xT``, ``bad``): the data ``xf [B, V]`` transposed as the leaf kernels read it, every
        entry outside its variable's values (``lo <= x < hi``, an integer unless ``real``: the
        runtime's value check; ``lo``, ``hi`` float32 and ``real`` int8, one entry per variable)
        replaced by 0, and ``bad``, a 1-element int32 count of those entries; one launch (codegen's
        check_data). ``forward`` and ``input_stats`` take ``xT``. ``xf`` may have any dtype the
        runtime accepts (the kernel converts to float32 as ``Tensor.to`` does). ``signal``: as
        for ``check_data_at``."""
        B, NV = xf.shape
        return self._check_launch(xf, (B, NV), xf.stride(0), xf.stride(1), lo, hi, real, signal)

    def check_data_at(self, addr, shape, dtype, lo, hi, real, signal=None):
        """``check_data`` of contiguous data of ``shape`` and ``dtype`` whose address the launch
        reads from ``addr``, a one-element int64 tensor the device can read (pinned host memory
        for a CUDA graph: the runtime writes each call's address there and replays the graph on
        the caller's own tensor, with no copy into a static input). ``signal``: ``(word,
        counter)``, a one-element int64 tensor the host reads (pinned) and a one-element int32
        counter at 0 on the data's device: the launch's last program writes the count of rejected
        entries to ``word`` (and leaves the counter at 0)."""
        B, NV = shape
        return self._check_launch(addr, shape, NV, 1, lo, hi, real, signal, AT=True, XDT=_tl_dtype(dtype))

    def _check_launch(self, x, shape, sb, sv, lo, hi, real, signal, **const):
        """The one launch of codegen's check_data behind ``check_data`` and ``check_data_at``."""
        B, NV = shape
        xT = torch.empty((NV, B), dtype=torch.float32, device=lo.device)
        bad = torch.zeros(1, dtype=torch.int32, device=lo.device)
        grid = (triton_cdiv(NV, CHECK_BV), triton_cdiv(B, CHECK_BB))
        sig, done = signal if signal is not None else (None, None)
        self.k.check_data[grid](
            x, lo, hi, real, xT, bad, B, NV, sb, sv,
            BV=CHECK_BV, BB=CHECK_BB, SIG=sig, DONE=done, SG=signal is not None, **const,
        )  # fmt: skip
        return xT, bad

    def forward(self, W, cat_logp, gauss, xf, precompile: bool = True, flow_rows: bool = False, xT=None):
        """The forward pass: (V, M). ``flow_rows``: allocate ``V`` with the rows a leaf-alias
        backward's flows take after it (when the plan allows the alias, ``self.leaf_end``).
        ``xT``: the data as ``check_data`` returns it (else ``xf`` transposed here)."""
        B = xf.shape[0]
        if precompile and self.device.type == "cuda" and B not in self.compiled_for:
            # first launch for this batch size: compile every kernel at once, in parallel
            from .precompile import precompile as _precompile

            self.compiled_for.add(B)
            self.precompiled = _precompile(self, W, cat_logp, gauss, xf)
        plan, k = self.plan, self.k
        BB = _batch_tile(B)
        nb = triton_cdiv(B, BB)
        if xT is None:
            xT = xf.t().contiguous()
        if flow_rows and self.leaf_end:
            _X, V = self._alias_rows(B, xf.device)
        else:
            V = torch.empty((plan.num_rows, B), dtype=torch.float32, device=xf.device)
        V[0] = 0.0
        M = torch.full((max(self.num_sum_groups, 1), B), -math.inf, dtype=torch.float32, device=xf.device)
        for b, var, index in self.inputs:
            bf = LEAF_BATCH_FASTEST
            grid = (triton_cdiv(b.count, BU) * nb,) if bf else (triton_cdiv(b.count, BU), nb)
            rows = self.leaf_rows.get(b.row) if LEAF_ROWS and B >= min(LEAF_ROWS_MIN_BATCH, 64) else None
            if rows is not None:
                tab, n, bu, kp = rows
                bb = LEAF_ROWS_BB if B >= 64 else _batch_tile(B)
                # batch tiles split over programs only where the unit tiles are too few to fill the card
                split = max(1, min(triton_cdiv(B, bb), triton_cdiv(self.target_programs, n)))
                k.input_categorical_rows[(n, split)](
                    V, xT, cat_logp.contiguous(), tab, B, split * bb, BU=bu, KP=kp, BB=bb, num_warps=LEAF_ROWS_WARPS
                )  # fmt: skip
            elif b.family == "categorical":
                k.input_categorical[grid](
                    V, xT, var, index, cat_logp.contiguous(), b.row, b.count, B, BU=BU, BB=BB, BF=bf
                )
            elif b.family == "gaussian":
                k.input_gaussian[grid](V, xT, var, index, gauss.contiguous(), b.row, b.count, B, BU=BU, BB=BB, BF=bf)
            else:
                k.input_indicator[grid](V, xT, var, index, b.row, b.count, B, BU=BU, BB=BB, BF=bf)
        cap = self._chunk_caps(B, aliased=flow_rows and bool(self.leaf_end))[0]
        bmm_cols = [self._chunk_cols(L, B, cap) for L in self.layers if isinstance(L, _SumLayer) and self.use_bmm(L, B)]
        E = torch.empty((max(bmm_cols), B), dtype=torch.float32, device=xf.device) if bmm_cols else None
        t = 0
        while t < len(self.layers):
            L = self.layers[t]
            run = self.chain_at.get(t)
            if run is not None and self.use_chain(run, B):
                self.chain_forward(run, V, W, M)
                t = run.end
                continue
            if isinstance(L, _SumLayer):
                self.sum_forward(L, V, W, M, E, cap)
            else:
                k.product_fwd[(L.n, nb)](V, L.idx, L.tab, B, L.n, A=L.arity, BU=BU, BB=BB)
            t += 1
        return V, M

    def use_chain(self, run: _ChainRun, B: int) -> bool:
        """Whether the chained run ``run`` takes one launch at batch ``B`` (CHAIN; no layer of it
        a batched product there)."""
        return CHAIN and run.ok and not any(self.use_bmm(L, B) for L in run.layers)

    def chain_forward(self, run: _ChainRun, V, W, M) -> None:
        """The forward of the chained run ``run``: one launch of ``sum_fwd_chain``, one program per
        chain and batch tile (``_chain_bb``); up to batch CHAIN_VEC_MAX_B its VEC form, one
        program per chain."""
        B = V.shape[1]
        vec = _chain_vec(run, B)
        BB = _pow2_at_least(B, 1) if vec else _chain_bb(run, B)  # vec: a program per chain
        pdl = self._fwd_pdl("sum_fwd")
        self.k.sum_fwd_chain[(run.chains, triton_cdiv(B, BB))](
            V, W, run.ch, M, B, run.steps, run.width, AMAX=run.amax, BM=run.bm, BK=run.bk, BB=BB, PDL=pdl, VEC=vec, FULL=run.full,
            **({"launch_pdl": True} if pdl >= 2 else {}),
            num_warps=(CHAIN_VEC_WARPS or run.num_warps) if vec else max(run.num_warps, FWD_MIN_WARPS),
        )  # fmt: skip

    def _tile_for(self, L: _SumLayer, tiles: int, loop: int, B: int) -> int:
        """The batch tile of a launch of sum layer ``L`` over ``tiles`` (node or column) tiles
        whose programs loop over at most ``loop`` columns (nodes)."""
        BB = _batch_tile(B)
        if BB == 64 and L.contig and tiles < SMALL_LAYER * self.sms and loop <= SMALL_LAYER_LOOP:
            return 32
        return BB

    def use_bmm(self, L: _SumLayer, B: int, backward: bool = False) -> bool:
        """Whether sum layer ``L``'s forward (backward) runs as batched matrix products at batch
        ``B`` (see BMM)."""
        return (
            BMM and L.bmm is not None and B >= BMM_MIN_BATCH and L.bmm[1] >= BMM_MIN_UNITS
            and L.edges >= (BMM_MIN_EDGES_BWD if backward else BMM_MIN_EDGES)
            and (self.precision in ("tf32", "fp32") or (BMM_TF32X3 and self.precision == "tf32x3"))
        )  # fmt: skip

    @contextlib.contextmanager
    def _matmul_precision(self):
        """torch's fp32 matrix products in the engine's precision (tf32 or IEEE fp32) for the
        duration, the caller's setting restored after."""
        mm = torch.backends.cuda.matmul
        if hasattr(mm, "fp32_precision"):  # torch >= 2.9; reading allow_tf32 may raise there
            old = mm.fp32_precision
            mm.fp32_precision = "tf32" if self.precision == "tf32" else "ieee"
            try:
                yield
            finally:
                mm.fp32_precision = old
        else:  # pragma: no cover (older torch)
            old = mm.allow_tf32
            mm.allow_tf32 = self.precision == "tf32"
            try:
                yield
            finally:
                mm.allow_tf32 = old

    def _warming(self) -> bool:
        """True while precompile replays the passes (kernels compile, nothing runs): the library
        products are skipped then (their buffers are placeholders)."""
        return getattr(self.k, "warming", False)

    def bmm_views(self, L: _SumLayer, X, B: int | None = None):
        """``X`` (a ``[rows, B]`` buffer, or the flat weight layout when ``B`` is None) viewed as
        ``[groups, nodes, B]`` on ``L``'s rows (``[groups, nodes, columns]`` on its weights)."""
        G, N, K, row0, w0, _ = L.bmm
        if B is None:
            return X[w0 : w0 + G * N * K].view(G, N, K)
        return X[row0 : row0 + G * N].view(G, N, B)

    def _bmm_grid(self, L: _SumLayer, B: int) -> tuple[int, int, int]:
        """(groups, column tiles, batch tiles): the grid of the batched-product layers' kernels."""
        G, _, K, _, _, _ = L.bmm
        return (G, triton_cdiv(K, BMM_BK), triton_cdiv(B, BMM_BB))

    def _bmm_chunks(self, L: _SumLayer, B: int, cap: float | None = None) -> list[tuple[int, int]]:
        """The group ranges ``[g0, g1)`` a batched-product layer runs at a time: as many groups as
        keep each of the chunk's buffers within ``cap`` bytes (None: the backward's, see
        BMM_CHUNK_BYTES and _chunk_caps)."""
        G, N, K, _, _, _ = L.bmm
        if cap is None:
            cap = self._chunk_caps(B)[1]
        per = 4 * K * max(B, N)  # bytes per group: its column factors, its weights' temporary
        n = G if cap == math.inf else max(1, min(G, int(cap // per)))
        return [(g0, min(G, g0 + n)) for g0 in range(0, G, n)]

    def _chunk_cols(self, L: _SumLayer, B: int, cap: float | None = None) -> int:
        """Rows of ``E`` a batched-product layer's chunks need."""
        return max(g1 - g0 for g0, g1 in self._bmm_chunks(L, B, cap)) * L.bmm[2]

    def _chunk_caps(self, B: int, aliased: bool = False) -> tuple[float, float]:
        """(forward, backward) bytes a batched-product layer's chunk may take at batch ``B``. The
        backward's: BMM_CHUNK_BYTES, or half the largest ``E`` of the layers that are not batched
        products where that is more. The forward's: the room the backward's scratch (``E``, which
        holds the products' temporaries too) takes anyway, and the flow buffer's unless the
        training step's forward allocates it (``aliased``, see backward's leaf_alias)."""
        key = (B, aliased)
        if key not in self._caps:
            if BMM_CHUNK_BYTES <= 0:
                self._caps[key] = (math.inf, math.inf)
            elif not BMM_CHUNK_ROOM:
                self._caps[key] = (BMM_CHUNK_BYTES, BMM_CHUNK_BYTES)
            else:
                sums = [L for L in self.layers if isinstance(L, _SumLayer)]
                other = max([4 * L.columns * B for L in sums if not self.use_bmm(L, B, backward=True)], default=0)
                bwd = max(BMM_CHUNK_BYTES, other // 2)
                rows = max(
                    [2 * self._chunk_cols(L, B, bwd) if self.use_bmm(L, B, backward=True) else L.columns for L in sums],
                    default=1,
                )
                fwd = 4 * rows * B + (0 if aliased else 4 * self.plan.num_rows * B)
                self._caps[key] = (fwd, bwd)
        return self._caps[key]

    def _col_grid(self, n: int, L: _SumLayer, B: int) -> tuple[int, int, int]:
        """(groups, column tiles, batch tiles): the column kernels' grid over ``n`` groups."""
        return (n, triton_cdiv(L.bmm[2], BMM_BK), triton_cdiv(B, BMM_BB))

    def sum_forward(self, L: _SumLayer, V, W, M, E=None, cap: float | None = None) -> None:
        """One sum layer's forward launch (for a batched-product layer: the columns' maxima, then
        per chunk of groups (``cap`` bytes, see _chunk_caps) their factors into ``E``, a
        ``[columns, B]`` scratch allocated here when not given, and the product; then the log)."""
        B = V.shape[1]
        if self.use_bmm(L, B):
            G, N, K, _, _, grp0 = L.bmm
            if cap is None:
                cap = self._chunk_caps(B)[0]
            if E is None:
                E = torch.empty((self._chunk_cols(L, B, cap), B), dtype=torch.float32, device=V.device)
            fuse = K <= BMM_FUSE_MAX_K
            if not fuse:
                self.k.sum_cols_max[self._bmm_grid(L, B)](
                    V, L.cols, L.gtab, M, B, L.arity, BK=BMM_BK, BB=BMM_BB, CG=L.contig
                )
            warming = self._warming()
            for g0, g1 in self._bmm_chunks(L, B, cap):
                n, gt = g1 - g0, L.gtab[3 * g0 : 3 * g1]
                if fuse:
                    bk = _pow2_at_least(K, 16)
                    self.k.sum_cols_maxexp[(n, 1, triton_cdiv(B, BMM_BB))](
                        V, E, L.cols, gt, M, B, L.arity, g0 * K, BK=bk, BB=BMM_BB, CG=L.contig,
                        num_warps=max(4, min(16, bk * BMM_BB // 1024)),
                    )  # fmt: skip
                else:
                    self.k.sum_cols_exp[self._col_grid(n, L, B)](
                        V, E, L.cols, gt, M, B, L.arity, g0 * K, BK=BMM_BK, BB=BMM_BB, CG=L.contig
                    )
                if not warming:
                    Wv, Vv = self.bmm_views(L, W.detach()), self.bmm_views(L, V, B)
                    with self._matmul_precision():
                        torch.bmm(Wv[g0:g1], E[: n * K].view(n, K, B), out=Vv[g0:g1])
            self.k.sum_log_rows[(triton_cdiv(G * N, BU), triton_cdiv(B, 64))](
                V, M, L.bmm[3], N, G * N, grp0, B, BU=BU, BB=64
            )
            return
        BB = self._tile_for(L, L.n_fwd, L.max_k, B)
        if BB == 64 and B >= 1024:
            BB = FWD_BB_LARGE
        name = "sum_fwdt" if BB >= TRANS_FWD_MIN_BB else "sum_fwd"
        fn = getattr(self.k, f"{name}_v{L.variant}{L.sfx}")
        pdl = self._fwd_pdl(name)
        fn[(L.n_fwd, triton_cdiv(B, BB))](
            V,
            W,
            L.cols,
            L.fwd,
            L.fwd_list,
            M,
            B,
            L.arity,
            BB=BB,
            CG=L.contig,
            DENSE=L.dense_fwd,
            PDL=pdl,
            **FWD_OPTS,
            **({"launch_pdl": True} if pdl >= 2 else {}),
            num_warps=max(L.num_warps, FWD_MIN_WARPS),
        )

    def _fwd_pdl(self, name: str) -> int:
        """The sum forward kernel ``name``'s PDL form (the knobs PDL and PDL_FWDT, above)."""
        pdl = PDL if name == "sum_fwd" or PDL_FWDT else 0
        if pdl >= 2 and not self.pdl_ok:
            pdl = 0  # griddepcontrol needs Hopper; the loop alone (1) is slower than 0
        return pdl

    # ---- backward ----------------------------------------------------------------------------
    def backward(self, W, V, M, xf, root_flow, PF=None, leaf_alias: bool = False):
        """The flows pass: (F, PF). ``leaf_alias`` (needs ``V`` from ``forward(flow_rows=True)``
        and ``self.leaf_end``): the leaves' flows are written over their values in ``V`` (each
        leaf's value is read for the last time by the layer that then stores its flow), and ``F``
        holds rows from ``self.leaf_end`` on only; the leaf statistics then read ``V``
        (``leaf_flows``). Saves the leaves' rows of the flow buffer: 50-59% of its rows on the
        benchmark's circuits."""
        plan, k = self.plan, self.k
        B = V.shape[1]
        BB = _batch_tile(B)
        nb = triton_cdiv(B, BB)
        alias = bool(leaf_alias and self.leaf_end)
        F = self._flow_buffer(V, root_flow, alias)
        le_sh = (self.alias_end, plan.num_rows - self.alias_end) if alias else (0, 0)
        if PF is None:  # else accumulate into the given buffer (the model's flows)
            PF = torch.zeros(plan.w_size, dtype=torch.float32, device=V.device)
        E = torch.empty((self._bwd_e_rows(B), B), dtype=torch.float32, device=V.device)
        t = len(self.layers)
        while t > 0:
            t -= 1
            run = self.chain_top.get(t)
            if run is not None and self.use_chain_bwd(run, B):
                self.chain_backward(run, V, F, W, M, PF, le_sh, alias)
                t = run.start
                continue
            L = self.layers[t]
            for j in plan.recompute.get(t, ()):  # scratch products read from here down: recompute
                P = self.layers[j]
                k.product_fwd[(P.n, nb)](V, P.idx, P.tab, B, P.n, A=P.arity, BU=BU, BB=BB)
                F[P.row0 : P.row0 + P.rows].zero_()
            if isinstance(L, _SumLayer):
                g_in_v, sc = alias and t in self.g_alias, alias and t in self.scale_children
                self.sum_backward(L, V, F, W, M, PF, E, le_sh, g_in_v, sc)
            else:
                if alias and t == self.leaf_zero_at:  # the leaves' values are read: their flows start
                    V[1 : self.leaf_end].zero_()
                k.product_bwd[(L.n, nb)](F, L.idx, L.tab, B, L.n, *le_sh, A=L.arity, BU=BU, BB=BB)
        if not alias:
            F[0] = 0.0
        return F, PF

    def use_chain_bwd(self, run: _ChainRun, B: int) -> bool:
        """Whether the chained run ``run``'s backward takes one launch at batch ``B`` (CHAIN_BWD)."""
        cap = CHAIN_MAX_TILE if _chain_vec(run, B, backward=True) else CHAIN_BWD_MAX_TILE
        return (
            CHAIN_BWD and run.ok and not run.split and run.bm <= cap and run.bk <= cap
            and all(L.exclusive and not self.use_bmm(L, B, backward=True) for L in run.layers)
            and not any(self.plan.recompute.get(t) for t in range(run.start, run.end))
        )  # fmt: skip

    def chain_backward(self, run: _ChainRun, V, F, W, M, PF, le_sh, alias: bool) -> None:
        """The backward of the chained run ``run``: one launch of ``sum_bwd_chain``, one program
        per chain and batch tile, as sum_backward per step (``le_sh``, and with ``alias`` the
        steps' G in their value rows and their children's G stored, as there); at small batches
        (``_chain_vec``) its VEC form, one program per chain."""
        B = V.shape[1]
        if alias not in run.flags:
            fl = [
                (int(alias and t in self.g_alias), int(alias and t in self.scale_children))
                for t in range(run.start, run.end)
            ]
            run.flags[alias] = torch.as_tensor(np.asarray(fl, dtype=np.int32).reshape(-1), device=V.device)
        sc = alias and any(t in self.scale_children for t in range(run.start, run.end))
        rg = self.row_group if sc else M  # (a placeholder where no step stores G: never read)
        vec = _chain_vec(run, B, backward=True)
        if vec:
            BB = _pow2_at_least(B, 1)
            sub = min(run.bm, CHAIN_VEC_SUB)
            warps = CHAIN_VEC_WARPS or run.num_warps
        else:
            BB = _chain_bb(run, B)
            sub = min(run.bm, CHAIN_BWD_SUB if run.bk <= 64 else CHAIN_BWD_SUB_WIDE)
            warps = min(16, max(4, sub * run.bk // 512))
        self.k.sum_bwd_chain[(run.chains, triton_cdiv(B, BB))](
            F, V, W, PF, run.ch, run.flags[alias], M, rg, *le_sh, B, run.steps, run.width,
            AMAX=run.amax, BM=run.bm, BK=run.bk, BMS=sub, BB=BB, VEC=vec, FULL=run.full, num_warps=warps,
        )  # fmt: skip

    def _bwd_e_rows(self, B: int) -> int:
        """Rows of the backward's scratch ``E``: a layer's columns; for batched-product layers
        twice a chunk's (its column factors, then its products' temporaries, _bmm_backward)."""
        return max(
            [2 * self._chunk_cols(L, B) if self.use_bmm(L, B, backward=True) else L.columns
             for L in self.layers if isinstance(L, _SumLayer)],
            default=1,
        )  # fmt: skip

    def step_buffers(self, B: int) -> dict[str, int]:
        """Bytes of the buffers a training step (``forward_backward``) allocates at batch ``B``
        besides the model's tensors (which ``pcir info --plan`` lists next to these): the values
        and flows (one buffer under the leaf alias), the column scratch ``E`` (with the batched
        products' temporaries in it), the temporaries that do not fit there, the groups' maxima,
        and the kernel-layout parameter flows where explicit sums need them. Not counted: the
        inputs' copies (a few bytes per sample and variable) and library workspaces."""
        plan = self.plan
        R = plan.num_rows
        out: dict[str, int] = {}
        if self.leaf_end:
            out["values and flows"] = 4 * (2 * R - self.alias_end) * B
        else:
            out["values"] = out["flows"] = 4 * R * B
        out["column factors E"] = 4 * self._bwd_e_rows(B) * B
        own = [
            max(g1 - g0 for g0, g1 in self._bmm_chunks(L, B)) * L.bmm[1] * L.bmm[2]
            for L in self.layers
            if isinstance(L, _SumLayer) and self.use_bmm(L, B, backward=True) and L.bmm[1] > B
        ]
        if own:
            out["product temporaries"] = 4 * max(own)
        out["group maxima M"] = 4 * max(self.num_sum_groups, 1) * B
        if plan.w_size > plan.sum_param_size:
            out["parameter flows (kernel layout)"] = 4 * plan.w_size
        return out

    def leaf_flows(self, V, F, leaf_alias: bool = False):
        """The buffer holding the leaves' flows after ``backward(..., leaf_alias)``."""
        return V if leaf_alias and self.leaf_end else F

    def _bwd_shape(self, L: _SumLayer, B: int) -> tuple[int, int, bool]:
        """(samples per parameter-flow program, batch tile of the node flows, whether the two
        products run as one launch) of sum layer ``L``'s backward at batch ``B``."""
        nb = triton_cdiv(B, _batch_tile(B))
        chunks = max(1, min(nb, -(-self.target_programs // max(L.n_pf, 1))))
        ch = triton_cdiv(nb, chunks) * _batch_tile(B)
        CB = self._tile_for(L, L.n_col, L.max_units, B)
        return ch, CB, BWD_FUSED and L.n_pf + L.n_col <= FUSE_MM_MAX_TILES * self.sms

    def fwd_launches(self, L: _SumLayer, B: int) -> int:
        """Triton launches of sum layer ``L``'s forward at batch ``B`` in the training step (the
        profile's mapping; a batched-product layer's library products between them are not)."""
        return 2 + len(self._bmm_chunks(L, B, self._chunk_caps(B, bool(self.leaf_end))[0])) if self.use_bmm(L, B) else 1

    def fwd_launch_counts(self, B: int) -> list[int]:
        """Triton launches of each layer's forward at batch ``B`` (the profile's mapping): a
        chained run's one launch counts on its first layer, 0 on the others."""
        out: list[int] = []
        t = 0
        while t < len(self.layers):
            run = self.chain_at.get(t)
            if run is not None and self.use_chain(run, B):
                out += [1] + [0] * (run.end - t - 1)
                t = run.end
                continue
            L = self.layers[t]
            out.append(self.fwd_launches(L, B) if isinstance(L, _SumLayer) else 1)
            t += 1
        return out

    def bwd_launch_counts(self, B: int) -> list[int]:
        """Triton launches of each layer's backward at batch ``B`` (the profile's mapping; the
        recomputed scratch products not counted): a chained run's one launch (CHAIN_BWD) counts
        on its top layer, 0 on the others."""
        out = [self.bwd_launches(L, B) if isinstance(L, _SumLayer) else 1 for L in self.layers]
        for run in self.chain_at.values():
            if self.use_chain_bwd(run, B):
                out[run.start : run.end] = [0] * (run.end - run.start - 1) + [1]
        return out

    def bwd_launches(self, L: _SumLayer, B: int) -> int:
        """Triton launches of sum layer ``L``'s backward at batch ``B`` (the profile's mapping)."""
        if self.use_bmm(L, B, backward=True):
            return 1 + 2 * len(self._bmm_chunks(L, B))
        if not BWD_FUSED:
            return 4
        return 2 if self._bwd_shape(L, B)[2] else 3

    def sum_backward(
        self, L: _SumLayer, V, F, W, M, PF, E, le_sh: tuple[int, int] = (0, 0), g_in_v: bool = False, sc: bool = False
    ) -> None:
        """One sum layer's backward launches: its nodes' flows scaled in place (``F`` holds
        ``G = F exp(m - V)`` on those rows afterwards), its columns' factors ``exp(c - m)`` into
        the scratch ``E``, then the parameter flows into ``PF`` and the node flows of its columns'
        children into ``F``. The two exponentials are computed once per node (column) and sample
        instead of once per tile of the other side. ``le_sh``: rows below ``le`` are read and
        written in ``V`` (``codegen._flow_row``); ``g_in_v``: the layer's G is already in its
        value rows (its parent stored it, ``_sum_alias``), so its preparation skips the nodes;
        ``sc``: its column kernels store G, not flows, for the children that keep G there."""
        k = self.k
        B = V.shape[1]
        BB = _batch_tile(B)
        nb = triton_cdiv(B, BB)
        v, sfx = L.variant, L.sfx
        opts = {"num_warps": L.num_warps, "num_stages": BWD_STAGES}
        rg = self.row_group if sc else M  # (a placeholder where SC is off: never read)
        if self.use_bmm(L, B, backward=True):
            self._bmm_backward(L, V, F, W, M, PF, E, le_sh, g_in_v, sc)
            return
        ch, CB, fuse_mm = self._bwd_shape(L, B)
        nbp, nbc = triton_cdiv(B, ch), triton_cdiv(B, CB)
        nn = 0 if g_in_v else L.n_fwd
        if BWD_FUSED:
            getattr(k, f"sum_bwd_prep_v{v}{sfx}")[(nn + L.n_col, nb)](
                V, F, E, L.cols, L.fwd, L.col, M, nn, B, L.arity, BB=BB, CG=L.contig
            )
        else:
            if nn:
                getattr(k, f"sum_bwd_prep_nodes_v{v}")[(L.n_fwd, nb)](V, F, L.fwd, M, B, BB=BB)
            getattr(k, f"sum_bwd_prep_cols_v{v}{sfx}")[(L.n_col, nb)](
                V, E, L.cols, L.col, M, B, L.arity, BB=BB, CG=L.contig
            )
        le, sh = le_sh
        if sc and SC_MIN_WARPS > opts["num_warps"]:
            opts = {**opts, "num_warps": SC_MIN_WARPS}
        if fuse_mm:
            getattr(k, f"sum_bwd_mm_v{v}{sfx}")[(L.n_pf + L.n_col, max(nbp, nbc))](
                F, W, E, PF, L.cols, L.pf, L.col, L.col_list, ch, L.n_pf, V, M, rg, le, sh, B, L.arity,
                BB=BB, BC=CB, EXCL=L.exclusive, CG=L.contig, DENSE=L.dense_col, SC=sc, **opts,
            )  # fmt: skip
            return
        popts = {"num_warps": L.num_warps, "num_stages": BWD_STAGES}  # no SC here
        getattr(k, f"sum_bwd_params_v{v}")[(L.n_pf, nbp)](F, E, W, L.pf, PF, le, sh, B, ch, BB=BB, **popts)
        getattr(k, f"sum_bwd_cols_v{v}{sfx}")[(L.n_col, nbc)](
            F, W, E, L.cols, L.col, L.col_list, V, M, rg, le, sh, B, L.arity,
            BB=CB, EXCL=L.exclusive, CG=L.contig, DENSE=L.dense_col, SC=sc, **opts,
        )  # fmt: skip

    def _bmm_backward(
        self, L: _SumLayer, V, F, W, M, PF, E, le_sh: tuple[int, int] = (0, 0), g_in_v: bool = False, sc: bool = False
    ) -> None:
        """A batched-product layer's backward: its nodes' flows scaled in place (as in
        sum_backward), then per chunk of groups (BMM_CHUNK_BYTES) the columns' factors into ``E``,
        the parameter flows ``PF += W * (G E^T)`` and the column flows ``E * (W^T G)`` by library
        products, the latter sent to the children by ``sum_cols_scatter``. The products' results
        (of the chunk's weight size, then of its ``E``'s) go to ``E``'s rows past the chunk's (it
        has twice a chunk's rows, _bwd_e_rows), the first to a temporary where the chunk's weights
        are more than its column factors (groups of more nodes than the batch)."""
        k = self.k
        B = V.shape[1]
        BB = _batch_tile(B)
        G, N, K, _, _, _ = L.bmm
        le, sh = le_sh
        rg = self.row_group if sc else M  # (a placeholder where SC is off: never read)
        if not g_in_v:  # else the parent stored G in the value rows (_sum_alias)
            getattr(k, f"sum_bwd_prep_nodes_v{L.variant}")[(L.n_fwd, triton_cdiv(B, BB))](V, F, L.fwd, M, B, BB=BB)
        warming = self._warming()  # PF is then a placeholder: no views of it
        if not warming:
            Gv = self.bmm_views(L, V if g_in_v else F, B)
            Wv, PFv = self.bmm_views(L, W.detach()), self.bmm_views(L, PF)
        for g0, g1 in self._bmm_chunks(L, B):
            n, gt = g1 - g0, L.gtab[3 * g0 : 3 * g1]
            grid = self._col_grid(n, L, B)
            Ec = E[: n * K]
            k.sum_cols_exp[grid](V, Ec, L.cols, gt, M, B, L.arity, g0 * K, BK=BMM_BK, BB=BMM_BB, CG=L.contig)
            T = E[n * K : 2 * n * K]  # the temporaries' room (a placeholder while the kernels only compile)
            if not warming:
                Ev = Ec.view(n, K, B)
                flat = T.reshape(-1)  # a view: E is contiguous
                tmp = flat[: n * N * K].view(n, N, K) if N <= B else None
                with self._matmul_precision():
                    PFv[g0:g1].addcmul_(Wv[g0:g1], torch.bmm(Gv[g0:g1], Ev.transpose(1, 2), out=tmp))
                    torch.bmm(Wv[g0:g1].transpose(1, 2), Gv[g0:g1], out=T.view(n, K, B))
            k.sum_cols_scatter[grid](
                F, Ec, T, L.cols, gt, B, L.arity, g0 * K, V, M, rg, le, sh,
                BK=BMM_BK, BB=BMM_BB, EXCL=L.exclusive, CG=L.contig, SC=sc,
            )  # fmt: skip

    def input_stats(self, F, xf, gauss, cat=None, em=None, xT=None):
        """(categorical counts [cat_size], gaussian per-row sums [gauss_rows, 5]) from leaf flows;
        ``cat``: accumulate the counts into this buffer (the model's flows) instead of a new one
        (the kernels add atomically, so this saves a table-sized temporary per step).

        ``em = (logp, cat_logits, args)``: the training step's fused EM instead of counts. The
        categorical and bernoulli tables are updated straight from the flows, as ``em_rows`` would
        from the counts (``args`` = (s, pc) on the device), and ``cat`` is not used. A table that
        one group reads is updated in one pass (``input_categorical_em``: counts, row totals and
        the update per tile). Tied tables and tables counted by scatter take four:
        1. ``input_categorical_rowsum``: each table row's total flow ``S`` (a row-sized buffer);
        2. ``em_cat_prep``: ``logp`` <- ``(1 - s) p + s (pc / k) / (S + pc)`` in linear space;
        3. the count kernels add each count times ``s / (S + pc)`` to it (``SCALED``);
        4. ``em_cat_log``: ``logp``, ``cat_logits`` <- the log.
        Only the rows with mass (``S + pc > 0``) change, and none where ``s`` is 0 (the runtime
        passes ``s`` 0 for a batch that failed its value check). The row totals are summed by the
        counts' own product, so the rows stay normalised in every precision. Equal to ``em_rows``
        on the counts up to float rounding. ``xT``: as in ``forward``."""
        plan, k = self.plan, self.k
        B = xf.shape[0]
        BB = _batch_tile(B)
        if xT is None:
            xT = xf.t().contiguous()
        four = em is not None and bool(self.tied_n or self.scatter_n)
        if em is not None:
            logp, cat_logits, args = em
            S = torch.zeros(max(plan.cat_num_rows, 1) if four else 1, dtype=torch.float32, device=F.device)
            for tab, n, bu in ((self.tied_tab, self.tied_n, COUNT_BU), (self.scatter_tab, self.scatter_n, SCATTER_BU)):
                if n:
                    k.input_categorical_rowsum[(n,)](F, xT, tab, S, B, BU=bu, BB=BB)
            if four:
                self.em_cat_pass(logp, None, S, args)
            cat, scaled = logp, True
            dense_tab, dense_n = self.tied_tab, self.tied_n
        else:
            S = args = F  # (unused: SCALED is off)
            scaled = False
            if cat is None:
                cat = torch.zeros(plan.cat_size, dtype=torch.float32, device=F.device)
            dense_tab, dense_n = self.count_tab, self.count_n
        g5 = torch.zeros((plan.gauss_rows, 5), dtype=torch.float32, device=F.device)
        for b, var, index in self.inputs:
            if b.family == "categorical":
                if em is not None and self.em1_n:
                    grid = (self.em1_n, triton_cdiv(self.count_cmax, self.count_bc))
                    k.input_categorical_em[grid](
                        F, xT, self.em1_tab, logp, cat_logits, args, B,
                        BU=COUNT_BU, BC=self.count_bc, BB=BB, num_warps=COUNT_WARPS,
                    )  # fmt: skip
                if dense_n:
                    grid = (dense_n, triton_cdiv(self.count_cmax, self.count_bc))
                    k.input_categorical_counts[grid](
                        F, xT, dense_tab, cat, S, args, B,
                        BU=COUNT_BU, BC=self.count_bc, BB=BB, SCALED=scaled, num_warps=COUNT_WARPS,
                    )  # fmt: skip
                if self.scatter_n:
                    grid = (self.scatter_n, triton_cdiv(B, BB))
                    k.input_categorical_scatter[grid](
                        F, xT, self.scatter_tab, cat, S, args, B, BU=SCATTER_BU, BB=BB, SCALED=scaled
                    )
            elif b.family == "gaussian":
                out = torch.empty((b.count, 5), dtype=torch.float32, device=F.device)
                k.input_gaussian_bwd[(triton_cdiv(b.count, BU),)](
                    F, xT, var, index, gauss.detach().contiguous(), out, b.row, b.count, B, BU=BU, BB=BB
                )
                g5.index_add_(0, index, out)
        if em is not None:
            if four:
                self.em_cat_pass(logp, cat_logits, S, args)
            cat = None
        return cat, g5

    # ---- row-wise passes over the parameter stores (uniform runs only) ---------------------
    def em_cat_pass(self, logp, cat_logits, S, args) -> None:
        """The fused table update's row passes (``input_stats`` with ``em``): ``em_cat_prep``
        (``cat_logits`` None), else ``em_cat_log``."""
        for br, bk, tab, n, chunks in self.cat_em_tiles:
            if cat_logits is None:
                self.k.em_cat_prep[(n, chunks)](logp, S, tab, args, BR=br, BK=bk)
            else:
                self.k.em_cat_log[(n, chunks)](logp, cat_logits, S, tab, args, BR=br, BK=bk)

    def em_rows(self, W, sum_flows, sum_logits, sum_edge, logp, cat_flows, cat_logits, args, cat=True) -> None:
        """The EM update of every dense/block sum row and (``cat``) categorical/bernoulli table
        row, one launch per tile shape (the ragged rows of explicit sums are the caller's).
        ``sum_edge`` None: every entry is an edge (the kernels then read no mask)."""
        k = self.k
        edges = sum_edge is None
        if edges:
            sum_edge = W  # a placeholder, never read
        for br, bk, tab, n in self.row_tiles["sum"]:
            k.em_sum_rows[(n,)](W, sum_flows, sum_logits, sum_edge, tab, args, BR=br, BK=bk, ALL=edges)
        for br, bk, tab, n in self.row_tiles["cat"] if cat else ():
            k.em_cat_rows[(n,)](logp, cat_flows, cat_logits, tab, args, BR=br, BK=bk)

    def normalise_rows(self, store: str, x, out, log: bool) -> None:
        """``out`` = row-wise (log-)softmax of ``x`` on the uniform runs of ``store`` (sum | cat)."""
        for br, bk, tab, n in self.row_tiles[store]:
            self.k.normalise_rows[(n,)](x, out, tab, BR=br, BK=bk, LOG=log)


def _tl_dtype(dtype: torch.dtype):
    """Triton's element type for a torch dtype the runtime accepts as data."""
    import triton.language as tl

    return {
        torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16, torch.int64: tl.int64, torch.int32: tl.int32,
        torch.int16: tl.int16, torch.int8: tl.int8, torch.uint8: tl.uint8, torch.bool: tl.int1,
    }[dtype]  # fmt: skip


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
