"""Every pass preserves the circuit's function (reference evaluator as the oracle), and the
annotations of group-layers describe a schedule that really evaluates the circuit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from passes.pcgen import circuits as pass_circuits
from passes.pcgen import hclt, hmm, pd, random_data, rat_spn
from strategies import circuits as shared_circuits  # odd names, real variables, attributes, ties

from pcir.ir import Circuit, InputGroup, ProductGroup, SumGroup, log_likelihood, verify
from pcir.ir.evaluator import _input_values, _logmatmul, _sum_weights, check_data, enumerate_assignments, forward
from pcir.passes import DEFAULT_PIPELINE, run_pipeline

SPECS = [
    "collapse-nodes",
    "collapse-nodes{merge-sums=false,flatten-products=false,hash-cons=false}",
    "partition-blocks",
    "partition-blocks{max-block=4,tolerance=0.5,pow2=true}",
    "partition-blocks{tolerance=0,reorder=false}",
    "group-layers",
    "group-layers{fuse=none,merge-kernels=false}",
    "group-layers{fuse=all}",
    "group-layers{max-fused-arity=1}",
    DEFAULT_PIPELINE,
    DEFAULT_PIPELINE + ",collapse-nodes,partition-blocks{max-block=2},group-layers",
]


def _data(c: Circuit, seed: int):
    rng = np.random.default_rng(seed)
    if all(v.domain.is_discrete for v in c.variables) and np.prod([v.domain.k for v in c.variables]) <= 256:
        x = enumerate_assignments(c)
    else:
        x, _ = random_data(c, 64, rng)
    missing = rng.random(x.shape) < 0.35
    return x, missing


def _outputs(c: Circuit, x, missing) -> list[np.ndarray]:
    vals = forward(c, x, missing)
    return [vals[r] for r in c.roots]


def assert_same_function(before: Circuit, after: Circuit, seed: int = 0) -> None:
    assert after.num_vars == before.num_vars and len(after.roots) == len(before.roots)
    x, missing = _data(before, seed)
    for miss in (None, missing):
        for a, b in zip(_outputs(before, x, miss), _outputs(after, x, miss), strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spec", SPECS)
@given(c=pass_circuits())
def test_pass_preserves_function(spec, c):
    out, _ = run_pipeline(c, spec)
    assert_same_function(c, out)


@pytest.mark.parametrize("spec", ["collapse-nodes", "partition-blocks{max-block=3}", DEFAULT_PIPELINE])
@given(c=shared_circuits(max_vars=3), seed=st.integers(0, 2**16))
def test_pass_preserves_function_on_shared_circuits(spec, c, seed):
    out, _ = run_pipeline(c, spec)
    assert_same_function(c, out, seed)
    if "group-layers" in spec:
        check_schedule(out)


def test_collapse_nodes_shrinks_what_it_should():
    # collapse-nodes only ever removes groups, and the generator plants work for it
    removed = 0
    from passes.pcgen import random_circuit

    for seed in range(30):
        c = random_circuit(seed)
        out, _ = run_pipeline(c, "collapse-nodes")
        assert len(out) <= len(c)
        removed += len(c) - len(out)
        for g in out:  # the fixed point: no rule matches any more
            if isinstance(g, ProductGroup):
                assert len(g.children) > 1 or out.group(g.children[0]).units != g.units or g.pattern == "explicit"
                assert not any(isinstance(out.group(ch), ProductGroup) for ch in g.children)
            if isinstance(g, SumGroup):
                assert len(set(g.children)) == len(g.children)
    assert removed > 30


# ---- the schedule is executable -------------------------------------------------------------


def check_schedule(c: Circuit) -> None:
    """Static rules of group-layers' annotations."""
    groups = c.groups
    buffer_nodes = c.attr("buffer_nodes")
    assert isinstance(buffer_nodes, int)

    def avail(n: str) -> int:
        g = groups[n]
        if isinstance(g, ProductGroup) and g.attr("fuse") == "fused":
            return max(avail(ch) for ch in g.children)
        return int(g.attr("layer"))  # type: ignore[arg-type]

    for g in c:
        layer = g.attr("layer")
        assert isinstance(layer, int)
        if isinstance(g, InputGroup):
            assert layer == 0
        elif isinstance(g, SumGroup):
            for ch in g.children:
                cg = groups[ch]
                if isinstance(cg, ProductGroup) and cg.attr("fuse") == "scratch":
                    assert cg.attr("layer") <= layer
                else:
                    assert avail(ch) < layer, (g.name, ch)
        else:
            assert g.attr("fuse") in ("fused", "scratch")
            if g.attr("fuse") == "fused":
                assert all(isinstance(groups[p], SumGroup) for p in c.parents(g.name))
                assert g.name not in c.roots
            for ch in g.children:
                assert avail(ch) < layer or (isinstance(groups[ch], ProductGroup) and groups[ch].attr("layer") <= layer)
        if not (isinstance(g, ProductGroup) and g.attr("fuse") == "fused"):
            slot = g.attr("slot")
            assert isinstance(slot, int) and 0 <= slot and slot + g.units <= buffer_nodes


def run_schedule(c: Circuit, x, missing=None) -> list[np.ndarray]:
    """Evaluate ``c`` the way the annotations say: one value buffer addressed by ``slot``; layer by
    layer, scratch products then sums, every group of a phase reading the buffer before any of
    them writes; fused products recomputed by their consumers. A liveness bug overwrites a value
    before its last reader and changes the result."""
    x, miss = check_data(c, x, missing)
    buf = np.full((x.shape[0], int(c.attr("buffer_nodes"))), np.nan)  # type: ignore[arg-type]
    groups = c.groups

    def read(n: str) -> np.ndarray:
        g = groups[n]
        if isinstance(g, ProductGroup) and g.attr("fuse") == "fused":
            return product(g)
        s = int(g.attr("slot"))  # type: ignore[arg-type]
        return buf[:, s : s + g.units]

    def product(g: ProductGroup) -> np.ndarray:
        idx = g.child_index(c.child_units(g.name))
        return sum(read(ch)[:, idx[:, j]] for j, ch in enumerate(g.children))

    def write(g, v: np.ndarray) -> None:
        s = int(g.attr("slot"))
        buf[:, s : s + g.units] = v

    for g in c:
        if isinstance(g, InputGroup):
            write(g, _input_values(c, g, x, miss))
    last = max(int(g.attr("layer")) for g in c)  # type: ignore[arg-type]
    for layer in range(1, last + 1):
        for kind in (ProductGroup, SumGroup):
            phase = [g for g in c if isinstance(g, kind) and g.attr("layer") == layer and g.attr("fuse") != "fused"]
            if kind is ProductGroup:  # a product may read a product of its own phase
                for g in phase:
                    write(g, product(g))
                continue
            vals = []
            for g in phase:
                cat = np.concatenate([read(ch) for ch in g.children], axis=1)
                vals.append(_logmatmul(cat, _sum_weights(c, g))[0])
            for g, v in zip(phase, vals, strict=True):
                write(g, v)
    return [read(r).copy() for r in c.roots]


@pytest.mark.parametrize("fuse", ["auto", "all", "none"])
@given(c=pass_circuits())
def test_schedule_and_slots_evaluate_the_circuit(fuse, c):
    out, _ = run_pipeline(c, f"collapse-nodes,partition-blocks,group-layers{{fuse={fuse}}}")
    check_schedule(out)
    x, missing = _data(c, 1)
    for got, want in zip(run_schedule(out, x, missing), _outputs(c, x, missing), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "make",
    [lambda: hclt(9, 4), lambda: pd(5, 3), lambda: rat_spn(8, 3, 2, 3), lambda: hmm(7, 4)],
    ids=["hclt", "pd", "rat", "hmm"],
)
def test_default_pipeline_on_structures(make):
    c = verify(make())
    out, _ = run_pipeline(c, DEFAULT_PIPELINE)
    assert_same_function(c, out)
    check_schedule(out)
    x, missing = _data(c, 2)
    for got, want in zip(run_schedule(out, x, missing), _outputs(c, x, missing), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_normalised_after_the_default_pipeline():
    from passes.pcgen import random_circuit

    for seed in range(10):
        c = random_circuit(seed)
        out, _ = run_pipeline(c, DEFAULT_PIPELINE)
        x = enumerate_assignments(out)
        for r in out.roots:
            if out.group(r).units == 1:
                assert abs(np.exp(log_likelihood(out, x, root=r)).sum() - 1.0) < 1e-9
