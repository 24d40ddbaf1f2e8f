"""The pass infrastructure: specs, registry, options, instruments, purity."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from passes.pcgen import hclt, random_circuit

from pcir.ir import Circuit, PassError, SumGroup, print_ir
from pcir.passes import (
    DEFAULT_PIPELINE,
    Pass,
    circuit_stats,
    describe_passes,
    get_pass,
    parse_pipeline,
    pipeline_spec,
    register_pass,
    registered_passes,
    run_pipeline,
)

GOLDEN = Path(__file__).parent / "passes" / "pipeline_errors.golden"


@register_pass
@dataclass(frozen=True)
class _BreakWeights(Pass):
    """Test-only: renames a sum's parameter to one that does not exist (an invalid circuit)."""

    name = "test-break-circuit"
    summary = "test only: make the circuit invalid"

    def apply(self, circuit: Circuit) -> Circuit:
        g = next(g for g in circuit if isinstance(g, SumGroup))
        return circuit.with_group(replace(g, params="nope"))


def test_registry_has_the_passes():
    names = set(registered_passes())
    assert {"collapse-nodes", "partition-blocks", "group-layers", "remove-dead", "strip-annotations"} <= names
    for name, cls in registered_passes().items():
        assert cls.name == name and cls.summary, name
    assert "max-block" in describe_passes()


def test_parse_default_pipeline_round_trips():
    passes = parse_pipeline(DEFAULT_PIPELINE)
    assert [p.name for p in passes] == ["collapse-nodes", "partition-blocks", "group-layers"]
    assert pipeline_spec(passes) == DEFAULT_PIPELINE


def test_options_are_typed_and_printed_back():
    (p,) = parse_pipeline(" partition-blocks { max-block = 32 , tolerance=0.5, pow2=true } ")
    assert (p.max_block, p.tolerance, p.pow2) == (32, 0.5, True)
    assert p.spec() == "partition-blocks{max-block=32,tolerance=0.5,pow2=true}"
    assert parse_pipeline(p.spec()) == [p]
    assert parse_pipeline("") == []
    assert parse_pipeline([p]) == [p]
    assert get_pass("collapse-nodes")().spec() == "collapse-nodes"


ERROR_SPECS = [
    "colapse-nodes",
    "collapse-nodes,partition-blocks{max-blok=64}",
    "partition-blocks{max-block=sixty}",
    "partition-blocks{tolerance=abc}",
    "partition-blocks{pow2=maybe}",
    "partition-blocks{max-block=0}",
    "partition-blocks{max-block=64",
    "partition-blocks{max-block}",
    "partition-blocks{max-block=}",
    "collapse-nodes,,group-layers",
    "collapse-nodes,",
    "collapse-nodes group-layers",
    "group-layers{fuse=sometimes}",
    "remove-dead{x=1}",
    "partition-blocks{max-block=8,max-block=16}",
]


def _render_errors() -> str:
    out = []
    for spec in ERROR_SPECS:
        with pytest.raises(PassError) as ei:
            parse_pipeline(spec)
        out.append(f"$ {spec}\n{ei.value.render()}\n")
    return "\n".join(out)


def test_pipeline_errors_match_golden():
    text = _render_errors()
    if os.environ.get("UPDATE_GOLDENS"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_errors_name_the_column():
    with pytest.raises(PassError) as ei:
        parse_pipeline("collapse-nodes,partition-blocks{max-blok=64}")
    e = ei.value
    assert e.span is not None and e.span.col == len("collapse-nodes,partition-blocks{") + 1
    assert e.hint == "did you mean 'max-block'?"


def test_run_pipeline_instruments(tmp_path):
    c = random_circuit(3)
    stream = io.StringIO()
    out, report = run_pipeline(c, DEFAULT_PIPELINE, print_after_all=True, dump_dir=tmp_path / "d", stream=stream)
    files = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert files == ["000-input.pcir", "001-collapse-nodes.pcir", "002-partition-blocks.pcir", "003-group-layers.pcir"]
    assert (tmp_path / "d" / "003-group-layers.pcir").read_text() == print_ir(out)
    text = stream.getvalue()
    assert text.count("// ----- IR after") == 3 and "group-layers (3/3)" in text
    assert [r.spec for r in report.records] == DEFAULT_PIPELINE.split(",")
    assert all(r.seconds >= 0 for r in report.records)
    assert out.attr("pipeline") == DEFAULT_PIPELINE
    table = report.format()
    for key in ("groups", "nodes", "edges", "params", "padded_edges", "layers", "kernels", "buffer_nodes", "total:"):
        assert key in table
    assert report.final_stats == circuit_stats(out)
    # fed back in: the pipeline attribute accumulates
    again, _ = run_pipeline(out, "remove-dead")
    assert again.attr("pipeline") == DEFAULT_PIPELINE + ",remove-dead"


def test_verify_between_passes_names_the_pass():
    c = random_circuit(5)
    with pytest.raises(PassError, match="pass 'test-break-circuit' produced an invalid circuit"):
        run_pipeline(c, "collapse-nodes,test-break-circuit")
    out, _ = run_pipeline(c, "test-break-circuit", verify_each=False)
    assert out.group(next(g.name for g in out if isinstance(g, SumGroup))).params == "nope"


@pytest.mark.parametrize(
    "spec", [DEFAULT_PIPELINE, "collapse-nodes", "partition-blocks", "group-layers", "strip-annotations"]
)
def test_passes_never_mutate_their_input(spec):
    for seed in range(6):
        c = random_circuit(seed)
        before = print_ir(c)
        for p in parse_pipeline(spec):
            p.apply(c)
        assert print_ir(c) == before


def test_strip_annotations_undoes_the_annotations():
    c = hclt(6, 4)
    out, _ = run_pipeline(c, DEFAULT_PIPELINE)
    assert any(g.attr("layer") is not None for g in out)
    stripped, _ = run_pipeline(out, "strip-annotations")
    assert all(not g.attrs for g in stripped) and stripped.attr("pipeline") == DEFAULT_PIPELINE + ",strip-annotations"


def test_stats_of_an_unannotated_circuit_are_naive():
    c = hclt(5, 3)
    s = circuit_stats(c)
    depth = c.depth()
    assert s["layered"] is False and s["layers"] == max(depth.values()) + 1
    assert s["buffer_nodes"] == s["nodes"] and s["padded_edges"] == 0
    assert s["groups"] == len(c) and s["params"] == sum(int(np.prod(p.shape)) for p in c.params.values())


def test_default_is_an_alias_of_the_default_pipeline():
    from pcir.passes import DEFAULT_PIPELINE, parse_pipeline

    assert [p.name for p in parse_pipeline("default")] == [p.name for p in parse_pipeline(DEFAULT_PIPELINE)]
    assert [p.name for p in parse_pipeline(" default ")] == DEFAULT_PIPELINE.split(",")
