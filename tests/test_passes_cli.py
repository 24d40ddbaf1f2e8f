"""``pcir opt`` and ``pcir viz``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from passes.pcgen import hclt, random_circuit

import pcir.api
from pcir.cli import main
from pcir.ir import print_ir
from pcir.passes import DEFAULT_PIPELINE, run_pipeline
from pcir.passes.dot import abbreviate_scope, to_dot


@pytest.fixture
def fake_load(monkeypatch):
    """Serve circuits by file name (until every test input can be a real .pcir file)."""
    table = {}

    def load(path, fmt=None):
        return table[str(path)]

    monkeypatch.setattr(pcir.api, "load", load)
    return table


def test_opt_prints_the_optimised_ir(fake_load, capsys, tmp_path):
    fake_load["a.pcir"] = c = hclt(5, 3)
    assert main(["opt", "a.pcir", "--stats", "--dump-dir", str(tmp_path / "d")]) == 0
    out, err = capsys.readouterr()
    expected, _ = run_pipeline(c, DEFAULT_PIPELINE)
    assert out == print_ir(expected)
    assert "padded_edges" in err and "pass 3 group-layers" in err
    assert sorted(p.name for p in (tmp_path / "d").iterdir())[-1] == "003-group-layers.pcir"


def test_opt_output_file_and_print_after_all(fake_load, capsys, tmp_path):
    fake_load["a.pcir"] = random_circuit(7)
    target = tmp_path / "o.pcir"
    assert main(["opt", "a.pcir", "-p", "collapse-nodes,group-layers", "--print-after-all", "-o", str(target)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "IR after collapse-nodes (1/2)" in err and "IR after group-layers (2/2)" in err
    assert target.read_text().startswith("pcir 1\n")


def test_opt_bad_spec_is_a_diagnostic(fake_load, capsys):
    fake_load["a.pcir"] = random_circuit(1)
    assert main(["opt", "a.pcir", "-p", "collapse-nodes,group-layer"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("<pipeline>:1:16: error: unknown pass 'group-layer'") and "did you mean 'group-layers'?" in err
    )
    assert "Traceback" not in err


def test_opt_list_passes(capsys):
    assert main(["opt", "--list-passes"]) == 0
    out = capsys.readouterr().out
    for name in ("collapse-nodes", "partition-blocks", "group-layers", "max-block", "tolerance", "fuse"):
        assert name in out
    assert main(["opt"]) == 1


def test_opt_round_trips_through_pcir_text(tmp_path, capsys):
    from pcir.ir.parser import parse_ir

    src = tmp_path / "c.pcir"
    src.write_text(print_ir(hclt(6, 4)))
    out1 = tmp_path / "o1.pcir"
    assert main(["opt", str(src), "-o", str(out1)]) == 0
    once = parse_ir(out1.read_text())
    assert once.attr("pipeline") == DEFAULT_PIPELINE
    # the output is valid input: annotations survive, the pipeline attribute accumulates
    out2 = tmp_path / "o2.pcir"
    assert main(["opt", str(out1), "-p", "remove-dead", "-o", str(out2)]) == 0
    twice = parse_ir(out2.read_text())
    assert [g.attrs for g in twice] == [g.attrs for g in once]


def test_viz_writes_dot(fake_load, tmp_path):
    fake_load["a.pcir"] = hclt(4, 2)
    target = tmp_path / "g.dot"
    assert main(["viz", "a.pcir", "-p", DEFAULT_PIPELINE, "-o", str(target)]) == 0
    text = target.read_text()
    assert text.startswith("digraph pcir {") and text.rstrip().endswith("}")
    assert "layer=1" in text and "bs=" in text and "fuse=fused" in text and "rank=same" in text
    assert '"in3" -> "p2";' in text or '"in3" -> "p' in text


def test_viz_needs_graphviz_for_svg(fake_load, tmp_path, capsys, monkeypatch):
    fake_load["a.pcir"] = hclt(3, 2)
    if shutil.which("dot"):
        assert main(["viz", "a.pcir", "-o", str(tmp_path / "g.svg")]) == 0
        assert (tmp_path / "g.svg").read_text().lstrip().startswith("<")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["viz", "a.pcir", "-o", str(tmp_path / "g2.svg")]) == 1
    err = capsys.readouterr().err
    assert "Graphviz's 'dot' is not installed" in err and "apt-get install graphviz" in err
    assert main(["viz", "a.pcir", "-o", str(tmp_path / "g.jpg")]) == 1
    assert "unknown output format '.jpg'" in capsys.readouterr().err


def test_dot_labels_and_scope_abbreviation():
    c = hclt(12, 2)
    assert abbreviate_scope(c, frozenset({0, 1, 2, 5})) == "x0-x2,x5"
    assert abbreviate_scope(c, frozenset({0, 2, 4, 6, 8})) == "x0…x8 (5 vars)"
    text = to_dot(c, "t")
    assert text.count("->") == sum(len(set(g.children)) for g in c)
    assert "scope x0-x11" in text and "input in0" in text and 'label="t"' in text


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.pc"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_opt_on_pc_examples(path, tmp_path, capsys):
    from pcir.api import load
    from pcir.ir.parser import parse_ir

    out = tmp_path / "o.pcir"
    assert main(["opt", str(path), "--stats", "-o", str(out)]) == 0
    assert "pass 3 group-layers" in capsys.readouterr().err
    optimised = parse_ir(out.read_text())
    assert optimised.attr("pipeline") == DEFAULT_PIPELINE
    expected, _ = run_pipeline(load(path), DEFAULT_PIPELINE)
    assert optimised == expected
    assert main(["viz", str(path), "-p", "collapse-nodes", "-o", str(tmp_path / "g.dot")]) == 0
