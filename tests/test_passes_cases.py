"""FileCheck case files: tests/passes/cases/*.pcir.

Each file is an input circuit in .pcir text with directives in comments:

* ``# RUN: <pipeline spec>``: the passes to run;
* ``# VERIFY: off``: do not verify (for inputs the verifier rejects, such as dead groups);
* ``# CHECK...:`` lines (LLVM FileCheck syntax, via the ``filecheck`` package) matched against
  the printed output circuit, or against the rendered diagnostic when the pipeline fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from filecheck.matcher import Matcher
from filecheck.options import Options

from pcir.ir import PcirError, print_ir
from pcir.passes import run_pipeline

CASES = sorted((Path(__file__).parent / "passes" / "cases").glob("*.pcir"))


def _directive(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    return None


def run_case(path: Path) -> str:
    from pcir.ir.parser import parse_ir

    text = path.read_text()
    spec = _directive(text, "RUN")
    assert spec is not None, f"{path.name}: no '# RUN:' line"
    try:
        circuit = parse_ir(text, filename=str(path))
        out, _ = run_pipeline(circuit, spec, verify_each=_directive(text, "VERIFY") != "off")
    except PcirError as e:
        return e.render() + "\n"
    return print_ir(out)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path, tmp_path, capsys):
    output = tmp_path / "output.txt"
    output.write_text(run_case(path))
    rc = Matcher.from_opts(Options(match_filename=str(path), input_file=str(output))).run()
    assert rc == 0, f"FileCheck failed for {path.name}:\n{capsys.readouterr()}\n--- output ---\n{output.read_text()}"


def test_cases_exist_for_every_pass():
    names = " ".join(_directive(p.read_text(), "RUN") or "" for p in CASES)
    for p in ("collapse-nodes", "partition-blocks", "group-layers", "remove-dead"):
        assert p in names
