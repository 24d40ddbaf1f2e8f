"""docs/language.md stays true: ```pc blocks load and verify, ```pc fragment blocks parse,
```pc error blocks raise a diagnostic, ```python blocks run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pcir.frontend import format_pc, parse_module, parse_pc
from pcir.ir import verify
from pcir.ir.diagnostics import PcirError

DOC = Path(__file__).resolve().parents[1] / "docs" / "language.md"
FENCE = re.compile(r"^```([\w ]*)\n(.*?)^```", re.S | re.M)


def blocks(info: str) -> list[tuple[int, str]]:
    text = DOC.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1).strip() == info
    ]


def test_doc_has_examples():
    assert len(blocks("pc")) >= 8 and blocks("pc fragment") and blocks("pc error") and blocks("python")


@pytest.mark.parametrize("line,code", blocks("pc"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_pc_blocks_load_and_verify(line, code):
    verify(parse_pc(code, filename=f"language.md:{line}"))
    assert format_pc(code) == code  # the listings are canonically formatted


@pytest.mark.parametrize("line,code", blocks("pc fragment"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_pc_fragments_parse(line, code):
    parse_module(code, f"language.md:{line}")
    assert format_pc(code) == code


@pytest.mark.parametrize("line,code", blocks("pc error"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_pc_error_blocks_fail_with_a_diagnostic(line, code):
    with pytest.raises(PcirError) as e:
        verify(parse_pc(code, filename="doc.pc"))
    assert e.value.render().startswith("doc.pc:")


def test_python_blocks_run(capsys):
    namespace: dict = {}
    for line, code in blocks("python"):
        exec(compile(code, f"{DOC}:{line}", "exec"), namespace)  # noqa: S102 - our own docs
