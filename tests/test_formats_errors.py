"""Malformed files give ``file:line:col`` diagnostics with the source line and a caret.

Each ``tests/data/circuits/bad/NAME`` (``.vtree`` files are companions) is imported from inside
that folder, so that the file name in the message is just ``NAME``; its rendered error must equal
the golden ``golden/NAME.err`` exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pcir.cli import main
from pcir.frontend.formats import FormatError, import_file, import_text

BAD = Path(__file__).parent / "data" / "circuits" / "bad"
GOLDEN = BAD / "golden"
CASES = sorted(p.name for p in BAD.iterdir() if p.is_file() and p.suffix != ".vtree")


def test_every_bad_file_has_a_golden():
    assert CASES, "no malformed files found"
    assert sorted(p.name[: -len(".err")] for p in GOLDEN.glob("*.err")) == CASES


@pytest.mark.parametrize("name", CASES)
def test_malformed_file_diagnostic(name, monkeypatch):
    monkeypatch.chdir(BAD)
    with pytest.raises(FormatError) as e:
        import_file(name)
    assert e.value.render() + "\n" == (GOLDEN / f"{name}.err").read_text()
    assert e.value.span is not None and e.value.span.file.startswith(Path(name).stem)


def test_cli_prints_the_diagnostic_and_exits_1(monkeypatch, capsys):
    monkeypatch.chdir(BAD)
    assert main(["import", "count.jpc"]) == 1
    err = capsys.readouterr().err
    assert err == (GOLDEN / "count.jpc.err").read_text()


@pytest.mark.parametrize(
    "text, fmt, message",
    [
        ("", "jpc", "no 'jpc NODES' header: not a jpc file"),
        ("jpc 0\n", "jpc", "the file has no nodes"),
        ("jpc 1\nL 0 0 0\n", "jpc", "literal 0 is not a variable (variables start at 1)"),
        ("jpc 1\nG 0 0 1 0.0 -1.0\n", "jpc", "gaussian needs a finite mean and a finite standard deviation > 0"),
        ("jpc 1\nB 0 0 1 1 0.5\n", "jpc", "the binomial log-probability must be <= 0"),
        ("jpc 1\nL 0 0 1 7\n", "jpc", "unexpected text after the L node"),
        ("jpc 2\nL 0 0 1\nS 1 0 1 0 800\n", "jpc", "the log-weight 800 is too large (its exponential overflows)"),
        ("jpc 2\nL 0 0 1\nS 1 0 1 0 nan\n", "jpc", "the log-weight is not a number: 'nan'"),
        ("psdd\n", "psdd", "the file has no nodes"),
        ("psdd 1\nT 0 0 1 0.5\n", "psdd", "the log-probability of a T node must be <= 0"),
        ("(2)\nEOF\n", "spn", "the file has no nodes"),
        ("(2)\nv 0 0\nEOF\nv 0 1\n", "spn", "text after the EOF line"),
        ("(2)\n* 0\nEOF\n", "spn", "child 0 of node 0 is not defined before it"),
        ("(2)\nv 0 0\n+ 0\nEOF\n", "spn", "a sum lists (child, log-weight) pairs; the last pair is incomplete"),
        ("", "spflow", "empty file: expected an SPFlow expression"),
        ("()", "spflow", "empty parentheses: a node needs children"),
        ("Categorical(V0|p=[1.0]) Categorical(V1|p=[1.0])", "spflow", "unexpected 'Categorical' after the end"),
        ("(Bernoulli(V0|p=0.5) * Bernoulli(a|p=0.5))", "spflow", "feature 'a' mixes with V<i> features"),
        ("Bernoulli(V0|p=1.5)", "spflow", "Bernoulli p must be a number in [0, 1]"),
        ("(0.5*(Bernoulli(V0|p=0.5)) + -1*(Bernoulli(V0|p=0.5)))", "spflow", "sum weight -1.0 must be finite"),
    ],
)
def test_more_malformed_texts(text, fmt, message):
    with pytest.raises(FormatError, match=re.escape(message)):
        import_text(text, fmt, f"t.{fmt}")


def test_long_spflow_lines_are_shown_as_a_window():
    inner = " + ".join(["0.01*(Bernoulli(V0|p=0.5))"] * 99)
    text = f"({inner} + 0.01*(Bernoulli(V0|p=2.5)))"
    with pytest.raises(FormatError) as e:
        import_text(text, "spflow", "long.spflow")
    shown = e.value.span.source_line
    assert len(shown) <= 110 and "p=2.5" in shown
    assert e.value.hint.startswith("at character ")
