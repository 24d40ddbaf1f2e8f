"""Golden diagnostics: every user mistake renders as ``file:line:col: error: ...`` + line + caret.

Each ``tests/golden/frontend/errors/NAME.pc`` is a small faulty program; ``NAME.err`` is the
expected rendering of the error (parse + lower, then verify). Regenerate after an intended change
with ``PCIR_UPDATE_GOLDEN=1 pytest tests/test_frontend_errors.py`` and review the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcir.frontend import parse_pc
from pcir.ir import verify
from pcir.ir.diagnostics import PcirError, PcSyntaxError, VerifyError

GOLDEN = Path(__file__).parent / "golden" / "frontend" / "errors"
CASES = sorted(p.stem for p in GOLDEN.glob("*.pc"))
UPDATE = os.environ.get("PCIR_UPDATE_GOLDEN") == "1"


def diagnose(name: str) -> PcirError:
    src = (GOLDEN / f"{name}.pc").read_text()
    with pytest.raises(PcirError) as info:
        verify(parse_pc(src, filename=f"{name}.pc", base_dir=GOLDEN))
    return info.value


@pytest.mark.parametrize("name", CASES)
def test_error_golden(name):
    err = diagnose(name)
    assert isinstance(err, (PcSyntaxError, VerifyError))
    text = err.render() + "\n"
    golden = GOLDEN / f"{name}.err"
    if UPDATE or not golden.exists():
        golden.write_text(text)
        if not UPDATE:
            pytest.fail(f"wrote missing golden {golden.name}; review it")
    assert text == golden.read_text()


@pytest.mark.parametrize("name", CASES)
def test_error_names_a_place(name):
    err = diagnose(name)
    assert err.span is not None, "every diagnostic points at the source"
    head = err.render().splitlines()[0]
    assert head.startswith(f"{err.span.file}:{err.span.line}:{err.span.col}: error: ")
    assert "lark" not in err.render().lower() and "Token(" not in err.render()


def test_every_golden_has_a_case():
    assert {p.stem for p in GOLDEN.glob("*.err")} == set(CASES)


def test_cli_check_exits_1_with_diagnostic(tmp_path):
    f = tmp_path / "bad.pc"
    f.write_text((GOLDEN / "unknown_name.pc").read_text())
    r = subprocess.run([sys.executable, "-m", "pcir", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "unknown name 'S3'" in r.stderr and "did you mean 'S1'?" in r.stderr
    assert "Traceback" not in r.stderr
