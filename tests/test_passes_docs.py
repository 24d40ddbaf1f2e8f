"""docs/passes.md stays true: every ```python block runs (in order, one namespace), every
```pcir block parses and verifies, and each example marked ``<!-- pipeline: SPEC -->`` (a
*before* and an *after* listing) is exactly what the pass produces."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pcir.ir import parse_ir, print_ir, verify
from pcir.passes import run_pipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "passes.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"^<!-- pipeline: (.*?) -->$", re.M)


def blocks(lang: str) -> list[tuple[int, str]]:
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def examples() -> list[tuple[str, str, str]]:
    text = DOC.read_text()
    out = []
    for m in MARK.finditer(text):
        fences = [f for f in FENCE.finditer(text, m.end()) if f.group(1) == "pcir"][:2]
        out.append((m.group(1), fences[0].group(2), fences[1].group(2)))
    return out


def test_doc_has_examples():
    specs = [e[0] for e in examples()]
    assert specs == ["collapse-nodes", "partition-blocks", "group-layers"]
    assert len(blocks("python")) >= 4


@pytest.mark.parametrize("spec,before,after", examples(), ids=[e[0] for e in examples()])
def test_before_after_examples(spec, before, after):
    out, _ = run_pipeline(parse_ir(before), spec)
    assert print_ir(out) == after


@pytest.mark.parametrize("line,code", blocks("pcir"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_pcir_blocks_parse_and_verify(line, code):
    c = verify(parse_ir(code, f"{DOC.name}:{line}"))
    assert print_ir(c) == code


def test_python_blocks_run(capsys):
    namespace: dict = {}
    for line, code in blocks("python"):
        exec(compile(code, f"{DOC}:{line}", "exec"), namespace)  # noqa: S102 - our own docs
    assert "layers" in capsys.readouterr().out
