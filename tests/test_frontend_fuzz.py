"""Garbage in, PcirError out: random and mutated `.pc` text never raises anything else.

Whatever the text, parsing + lowering (+ verifying and formatting what parses) either succeeds or
raises a :class:`PcirError` whose rendering names a place; never a Python or lark exception.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pcir.frontend import format_pc
from pcir.frontend.lower import lower_module
from pcir.frontend.parser import parse_module
from pcir.ir import problems
from pcir.ir.diagnostics import PcirError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SOURCES = [p.read_text() for p in sorted(EXAMPLES.glob("*.pc"))]

# characters and tokens that matter to the grammar, so random text gets past the lexer often
ALPHABET = st.sampled_from(list("abxyzSLP01234567899_ \n\t()[]{}.,:;=+-*/%<>!#\"'@\\") + ["\x00", "é"])
TOKENS = st.sampled_from(
    [
        "var ", "x", "[2]", ": binary", ": categorical(3)", " = ", "sum(", "prod(", "outer(", ")",
        "bernoulli(x[0], units=2)", "categorical(", "units=", "weights=[[0.5, 0.5]]", "for i in 0..3 {",
        "}", "if ", " else ", "def f(a) {", "return ", "root ", "param p", "attr k = 1", "include \"q.pc\"",
        "import \"q.pc\"", "with bs=2", "\n", "A", "B", "*", ", ", "[", "]", "i", "1", "-", "..", "**",
        "load(\"w.npz\")", "len(", "permutation(", "children(", "true", "not ", " and ", "#c\n", ";",
    ]
)  # fmt: skip


def run(text: str) -> None:
    """Everything a user can do to a text file: parse, lower, verify, format."""
    try:
        module = parse_module(text, "fuzz.pc")
    except PcirError as e:
        assert e.render().startswith("fuzz.pc:")
        return
    try:
        c = lower_module(module, base_dir=EXAMPLES, max_steps=20_000)
        if c.stats()["nodes"] < 200_000:
            problems(c)
    except PcirError as e:
        e.render()
    format_pc(text)


@settings(max_examples=60)
@given(st.text(ALPHABET, max_size=80))
def test_random_characters(text):
    run(text)


@settings(max_examples=60)
@given(st.lists(TOKENS, max_size=25).map("".join))
def test_random_token_soup(text):
    run(text)


@st.composite
def mutated_example(draw):
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        n = draw(st.integers(1, 8))
        if op == "delete":
            text = text[:i] + text[i + n :]
        elif op == "insert":
            text = text[:i] + draw(st.one_of(TOKENS, st.text(ALPHABET, max_size=3))) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.text(ALPHABET, min_size=1, max_size=n)) + text[i + n :]
        else:
            text = text[:i] + text[i : i + n] + text[i:]
    return text


@settings(max_examples=80)
@given(mutated_example())
def test_mutated_examples(text):
    run(text)
