"""docs/ir.md stays true: every ```pcir block parses and verifies, every ```python block runs
(in order, sharing one namespace, like a notebook)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pcir.ir import parse_ir, print_ir, verify

DOC = Path(__file__).resolve().parents[1] / "docs" / "ir.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[int, str]]:
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def test_doc_has_examples():
    assert len(blocks("pcir")) >= 1 and len(blocks("python")) >= 3


@pytest.mark.parametrize("line,code", blocks("pcir"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_pcir_blocks_parse_and_verify(line, code):
    c = verify(parse_ir(code, f"{DOC.name}:{line}"))
    assert print_ir(c) == code  # the listings are canonical dumps


def test_python_blocks_run():
    namespace: dict = {}
    for line, code in blocks("python"):
        exec(compile(code, f"{DOC}:{line}", "exec"), namespace)  # noqa: S102 - our own docs
