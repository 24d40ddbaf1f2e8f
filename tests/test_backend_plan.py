"""Lowering (circuit -> kernel plan, pure data) and codegen (plan -> Triton text): unit and golden
tests, and ``pcir compile`` end to end. No kernels run here except in the CLI test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import circuits
from test_backend_helpers import hmm, mixed, product_root, tied_bernoulli

from pcir.backend.codegen import generate, variants
from pcir.backend.plan import MAX_FUSED_ARITY, lower
from pcir.ir import CircuitBuilder, Dist, Domain, verify

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "backend"


def test_products_are_fused_and_take_no_rows():
    plan = lower(mixed())
    assert set(plan.fuse.values()) == {"fused"}
    stored = {g.name for layer in plan.layers for g in layer.groups}
    assert not any(n.startswith("p") for n in stored)
    # rows: zero row + inputs + sums only
    c = mixed()
    n_in = sum(g.units for g in c if g.kind == "input")
    n_sum = sum(g.units for g in c if g.kind == "sum")
    assert plan.num_rows == 1 + n_in + n_sum


def test_nested_products_are_flattened():
    plan = lower(tied_bernoulli())
    (s,) = [g for g in plan.sum_groups if g.name == "s3"]  # sum over outer(s01, a2) x a3
    assert s.arity == 3 and s.cols.shape == (s.k, 3)
    assert (s.cols > 0).all()  # every column reads three stored rows, no pad


def test_root_product_is_stored():
    plan = lower(product_root())
    assert plan.fuse[plan.root] == "stored"
    assert plan.layers[-1].kind == "product"
    assert plan.root_row == plan.layers[-1].groups[0].row


def test_wide_products_are_stored():
    b = CircuitBuilder()
    xs = b.variables(MAX_FUSED_ARITY + 2, Domain.binary())
    leaves = [b.input(x, 2, Dist.make("bernoulli")) for x in xs]
    b.root(b.sum([b.product(leaves)], 1))
    plan = lower(verify(b.build()))
    assert list(plan.fuse.values()) == ["scratch"]
    assert [layer.kind for layer in plan.layers] == ["product", "sum"]
    assert plan.layers[0].scratch and plan.layers[0].live_end == 1
    assert plan.recompute == {1: [0]}  # recomputed before the sum's backward


def test_depth_layering_of_a_chain():
    plan = lower(hmm(6))
    assert [layer.kind for layer in plan.layers] == ["sum"] * 6
    assert all(len(layer.groups) == 1 for layer in plan.layers)
    rows = [layer.groups[0].row for layer in plan.layers]
    assert rows == sorted(rows)  # each layer's rows are contiguous and in order


def test_layer_annotation_followed_when_valid_else_ignored():
    c = hmm(4)
    sums = [g.name for g in c if g.kind == "sum"]
    # valid: put every sum one layer apart but with gaps (renumbered densely)
    valid = c.replace(groups=[g.with_attrs(layer=10 * (sums.index(g.name) + 1)) if g.name in sums else g for g in c])
    assert [layer.groups[0].name for layer in lower(valid).layers] == sums
    # invalid (a parent before its child): the default depth layering is used
    bad = c.replace(groups=[g.with_attrs(layer=100 - sums.index(g.name)) if g.name in sums else g for g in c])
    assert [layer.groups[0].name for layer in lower(bad).layers] == sums


@pytest.mark.parametrize(
    "spec", ["group-layers", "group-layers{fuse=none}", "collapse-nodes,partition-blocks,group-layers"]
)
def test_pass_schedule_with_scratch_products_is_followed(spec):
    # scratch products sit in the layer of their first reader and run before its sums: the plan
    # follows the pass's layers (one schedule step per pass layer) instead of falling back
    from pcir import structures
    from pcir.passes import run_pipeline

    for c in (
        structures.pd(data_shape=(4, 4), num_latents=4, split_intervals=(2, 2), input_dist="categorical(k=3)"),
        tied_bernoulli(),
        mixed(),
    ):
        c2, report = run_pipeline(c, spec, timings=False)
        plan = lower(c2)
        assert plan.schedule == "annotated"
        if spec.endswith("{fuse=none}"):  # products share their consumers' pass layer
            steps = {(layer.step, layer.kind) for layer in plan.layers}
            assert any((st, "sum") in steps for st, kind in steps if kind == "product")
        assert len({layer.step for layer in plan.layers}) + 1 == report.records[-1].pass_stats["layers"]
        layer_of = {g.name: layer for layer in plan.layers for g in layer.groups}
        for n, layer in layer_of.items():
            assert layer.step == [s for s in sorted({x.step for x in plan.layers})].index(layer.step) + 1
            for d in c2.children(n):
                if d in layer_of:  # a stored child runs in an earlier launch group
                    assert layer_of[d].index < layer.index
                    assert layer_of[d].step < layer.step or layer_of[d].kind == "product"


def test_tied_sums_share_weights_and_explicit_sums_expand():
    plan = lower(tied_bernoulli())
    s01 = [g for g in plan.sum_groups if g.params == "s0.w"]
    assert len(s01) == 2 and s01[0].w_off == s01[1].w_off
    pm = lower(mixed())
    (ex,) = [g for g in pm.sum_groups if g.pattern == "explicit" and g.k == 16]
    assert ex.w_off >= pm.sum_param_size  # dense expansion appended after the parameters
    gather = pm.explicit_gather[ex.w_off - pm.sum_param_size : ex.w_off - pm.sum_param_size + ex.units * ex.k]
    assert (gather >= 0).sum() == len(mixed().group(ex.name).edges)


def test_block_sparse_tiles_skip_empty_blocks():
    b = CircuitBuilder()
    xs = b.variables(2, Domain.binary())
    a = b.input(xs[0], 32, Dist.make("bernoulli"))
    c = b.input(xs[1], 32, Dist.make("bernoulli"))
    mask = np.eye(2, dtype=bool)
    s = b.sum([b.product([a, c])], 32, mask=mask, block=(16, 16), attrs={"bs": 16})
    b.root(b.sum([s], 1))
    plan = lower(verify(b.build()))
    (g,) = [g for g in plan.sum_groups if g.name == s]
    assert (g.block_m, g.block_k) == (16, 16)
    assert g.tiles.tolist() == [[0, 0], [1, 1]]


def test_plan_is_deterministic_and_torch_free():
    code = "import sys; from pcir.backend.plan import lower; import pcir; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env())
    assert out.stdout.strip() == "False"
    assert lower(mixed()).to_text() == lower(mixed()).to_text()


def test_codegen_one_kernel_set_per_tile_shape():
    plan = lower(hmm(5))
    src = generate(plan, "tf32")
    assert len(variants(plan)) == 1
    assert src.count("def sum_fwd_v") == 1
    assert "input_precision='tf32'" in src
    assert "input_precision='ieee'" in generate(plan, "fp32")
    assert ".to(tl.bfloat16)" in generate(plan, "bf16")


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize(
    "example, emit, golden, extra",
    [
        ("mixture.pc", "plan", "mixture.plan.txt", []),
        ("mixture.pc", "triton", "mixture.triton.py.txt", []),
        # every product in its own launch: the scratch region, reused by all product launches
        ("pd.pc", "plan", "pd-scratch.plan.txt", ["-p", "group-layers{fuse=none}"]),
        # the HMM's eight sum layers are one chain (plan.find_chains): one forward launch
        ("hmm.pc", "plan", "hmm.plan.txt", []),
    ],
)
def test_compile_command_golden(example, emit, golden, extra):
    out = subprocess.run(
        [sys.executable, "-m", "pcir", "compile", str(ROOT / "examples" / example), f"--emit={emit}", *extra],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == (GOLDEN / golden).read_text()


def test_compile_command_builds_on_device(device, tmp_path):
    env = _env()
    env["PCIR_CACHE_DIR"] = str(tmp_path / "cache")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pcir",
            "compile",
            str(ROOT / "examples" / "hmm.pc"),
            "--device",
            device,
            "--dump-dir",
            str(tmp_path / "dump"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "layers=" in out.stdout
    assert (tmp_path / "dump" / "plan.txt").exists() and (tmp_path / "dump" / "kernels.py").exists()
    assert list((tmp_path / "cache" / "kernels").glob("pcir_*.py"))


def test_compile_command_reports_errors(tmp_path):
    bad = tmp_path / "bad.pc"
    bad.write_text("var x: binary\nroot Q\n")
    out = subprocess.run(
        [sys.executable, "-m", "pcir", "compile", str(bad)], capture_output=True, text=True, env=_env()
    )
    assert out.returncode == 1
    assert "error" in out.stderr and "Traceback" not in out.stderr


def _check_scratch_invariants(plan):
    """Rows of launches whose live ranges overlap are disjoint; other rows are owned once; every
    reader of a scratch launch runs no later than its recompute point."""
    owner = np.full(plan.num_rows, -1)
    for lay in plan.layers:
        for g in lay.groups:
            span = slice(g.row, g.row + g.units)
            if lay.scratch:
                assert plan.scratch_row <= g.row and g.row + g.units <= plan.scratch_row + plan.scratch_rows
                continue
            assert g.row + g.units <= plan.scratch_row or not plan.scratch_rows
            assert (owner[span] == -1).all(), f"row of {g.name} owned twice"
            owner[span] = lay.index
    scratch = [lay for lay in plan.layers if lay.scratch]
    rows = {lay.index: {r for g in lay.groups for r in range(g.row, g.row + g.units)} for lay in scratch}
    for a in scratch:
        for b in scratch:
            if a.index < b.index <= a.live_end:  # both live at b's launch
                assert not rows[a.index] & rows[b.index], (a.index, b.index)
    for lay in plan.layers:  # a scratch row read by a launch belongs to exactly one live launch
        for g in lay.groups:
            used = set((g.cols if hasattr(g, "cols") else g.idx).reshape(-1).tolist())
            for r in used:
                if r < plan.scratch_row:
                    continue
                owners = [s for s in scratch if r in rows[s.index] and s.index < lay.index <= s.live_end]
                assert len(owners) == 1, (g.name, r)
    assert plan.scratch_rows <= plan.scratch_units
    assert sorted(j for js in plan.recompute.values() for j in js) == [s.index for s in scratch]
    for t, js in plan.recompute.items():
        assert all(plan.layers[j].live_end == t for j in js)


def test_scratch_region_is_reused_across_layers():
    from pcir import structures
    from pcir.passes import run_pipeline

    c, _ = run_pipeline(
        structures.pd(data_shape=(4, 4), num_latents=4, split_intervals=(2, 2), input_dist="categorical(k=3)"),
        "group-layers{fuse=none}",
        timings=False,
    )
    plan = lower(c)
    assert plan.scratch_units > 0 and plan.scratch_rows < plan.scratch_units / 2
    assert set(plan.fuse.values()) == {"scratch"}
    _check_scratch_invariants(plan)
    # the same circuit without reuse would need every product row
    assert plan.num_rows == plan.scratch_row + plan.scratch_rows


def test_chained_scratch_products_stay_live_for_their_readers():
    # q reads the scratch product p (both wider than MAX_FUSED_ARITY); the sum reads q: p's rows
    # must stay live until q's recompute point, the sum's launch
    b = CircuitBuilder()
    xs = b.variables(2 * MAX_FUSED_ARITY + 2, Domain.binary())
    leaves = [b.input(x, 2, Dist.make("bernoulli")) for x in xs]
    p = b.product(leaves[: MAX_FUSED_ARITY + 1])
    q = b.product([p, *leaves[MAX_FUSED_ARITY + 1 :]])
    s1 = b.sum([p], 2)
    q2 = b.product([s1, *leaves[MAX_FUSED_ARITY + 1 :]])
    b.root(b.sum([q, q2], 1))
    plan = lower(verify(b.build()))
    _check_scratch_invariants(plan)
    lay = {g.name: lay for lay in plan.layers for g in lay.groups}
    assert plan.fuse[p] == plan.fuse[q] == plan.fuse[q2] == "scratch"
    assert lay[p].live_end == lay[q].live_end == lay[plan.root].index


@settings(max_examples=40, deadline=None, derandomize=True)
@given(circuits(max_vars=4, max_units=3), st.sampled_from(["group-layers{fuse=none}", "group-layers", "none"]))
def test_scratch_invariants_on_generated_circuits(c, spec):
    from pcir.passes import run_pipeline

    if spec != "none":
        c, _ = run_pipeline(c, spec, timings=False)
    _check_scratch_invariants(lower(c))


def test_row_ids_are_computed_per_slice():
    # the normalisation row of each parameter entry, for the ragged rows of explicit sums, without
    # materialising the whole store; equal to the rows the parameter slots describe
    for c in (mixed(), tied_bernoulli(), hmm(3)):
        plan = lower(c)
        want = np.zeros(plan.sum_param_size, dtype=np.int64)
        row = 0
        for slot in sorted((p for p in plan.params.values() if p.kind == "sum"), key=lambda p: p.offset):
            g = next(g for g in c if getattr(g, "params", None) == slot.name and g.kind == "sum")
            if g.pattern == "explicit":
                want[slot.offset : slot.offset + len(g.edges)] = row + g.edges[:, 0]
            else:
                n = int(np.prod(slot.shape))
                want[slot.offset : slot.offset + n] = row + np.arange(n) // slot.shape[1]
            row += g.units
        got = np.asarray(plan.sum_row_id)
        np.testing.assert_array_equal(got, want)
        for a, b in [(0, 1), (3, 11), (5, plan.sum_param_size)]:
            np.testing.assert_array_equal(plan.sum_row_id[a:b], want[a:b])
        assert len(plan.cat_row_id) == plan.cat_size
