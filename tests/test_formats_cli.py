"""``pcir import`` and ``pcir export`` from the command line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pcir.cli import main
from pcir.frontend.formats import import_file
from pcir.ir import log_likelihood
from pcir.ir.evaluator import enumerate_assignments

DATA = Path(__file__).parent / "data" / "circuits"
HAVE_PARSER = importlib.util.find_spec("pcir.ir.parser") is not None


def test_import_prints_the_ir(capsys):
    assert main(["import", str(DATA / "little_4var.psdd")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pcir 1\n")
    assert "%s2 = sum(%p2) units=1 dense params=s2.w {vtree=6}" in out


def test_import_to_pcir_file(tmp_path, capsys):
    out = tmp_path / "m.pcir"
    assert main(["import", str(DATA / "hand.spn"), "--format", "spn", "-o", str(out)]) == 0
    assert out.read_text().startswith("pcir 1\n")
    assert "2 variables, 5 groups, 10 nodes, 12 edges" in capsys.readouterr().out


def test_import_to_pc_needs_the_frontend_emitter(tmp_path, capsys):
    out = tmp_path / "m.pc"
    code = main(["import", str(DATA / "hand.jpc"), "-o", str(out)])
    if importlib.util.find_spec("pcir.frontend.emit") is not None:
        assert code == 0 and out.exists()
    else:
        assert code == 1 and not out.exists()
        assert "writing .pc needs pcir.frontend.emit_pc" in capsys.readouterr().err


def test_import_rejects_other_output_suffixes(tmp_path, capsys):
    assert main(["import", str(DATA / "hand.jpc"), "-o", str(tmp_path / "m.txt")]) == 1
    assert "the output must end in .pcir or .pc" in capsys.readouterr().err


def test_import_missing_file(capsys):
    assert main(["import", "no/such/file.jpc"]) == 1
    assert capsys.readouterr().err.strip() == "error: no/such/file.jpc: no such file"


def test_export_to_stdout_and_file(tmp_path, capsys):
    assert main(["export", str(DATA / "little_4var.psdd"), "--format", "jpc"]) == 0
    text = capsys.readouterr().out
    assert "\njpc 20\n" in text
    out = tmp_path / "l4.jpc"
    assert main(["export", str(DATA / "little_4var.psdd"), "--format", "jpc", "-o", str(out)]) == 0
    assert out.read_text() == text
    a, b = import_file(DATA / "little_4var.psdd"), import_file(out)
    x = enumerate_assignments(a)
    np.testing.assert_allclose(log_likelihood(b, x), log_likelihood(a, x), rtol=1e-12)


def test_export_refusal_is_a_diagnostic(tmp_path, capsys):
    out = tmp_path / "h.psdd"
    assert main(["export", str(DATA / "hand.spflow"), "--format", "psdd", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: psdd cannot express variable 'x2' of domain real: psdd variables are binary"
    assert not out.exists()


@pytest.mark.skipif(not HAVE_PARSER, reason="reading .pcir needs pcir.ir.parser (merge main)")
def test_import_then_export_through_pcir(tmp_path):
    pcir_file = tmp_path / "m.pcir"
    assert main(["import", str(DATA / "simple2.1.psdd"), "-o", str(pcir_file)]) == 0
    out = tmp_path / "back.psdd"
    assert main(["export", str(pcir_file), "--format", "psdd", "-o", str(out)]) == 0
    assert import_file(out) == import_file(DATA / "simple2.1.psdd")
