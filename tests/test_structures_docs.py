"""docs/structures.md, docs/queries.md and docs/training.md stay true: their ```python blocks run
(in order, sharing one namespace per page, like a notebook), and the `pcir gen`/`pcir query`
examples of the first two name real options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pcir.cli import build_parser

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(page: str, lang: str) -> list[tuple[int, str]]:
    text = (DOCS / page).read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


@pytest.mark.parametrize("page", ["structures.md", "queries.md", "training.md"])
def test_python_blocks_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    code_blocks = blocks(page, "python")
    assert len(code_blocks) >= 2
    for line, code in code_blocks:
        exec(compile(code, f"{DOCS / page}:{line}", "exec"), namespace)  # noqa: S102 - our own docs


@pytest.mark.parametrize("page", ["structures.md", "queries.md"])
def test_command_examples_parse(page):
    parser = build_parser()
    seen = 0
    for _, code in blocks(page, "sh"):
        for line in code.splitlines():
            argv = shlex.split(line)
            if argv[:2] in (["pcir", "gen"], ["pcir", "query"]):
                parser.parse_args(argv[1:])  # exits on an unknown option
                seen += 1
    assert seen >= 3
