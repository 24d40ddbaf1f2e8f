"""Parser of the canonical ``.pcir`` text: the exact inverse of :func:`pcir.ir.printer.print_ir`.

``parse_ir(print_ir(c)) == c`` for every circuit whose arrays have the shapes their places need
(every circuit that verifies). The format is line-oriented (one item a line; see the printer's
docstring and docs/ir.md for the grammar), so the parser is a small hand-written scanner with one
method per line kind: every error is an :class:`IRParseError` whose span points at the offending
token of the offending line, and semantic problems (an unknown child, variable or parameter, a
duplicate name, an array of the wrong shape or dtype) are reported on their line too.

Leniencies (the printer never needs them): blank lines, lines starting with ``#`` (comments),
extra spaces or tabs between tokens, and integers where floats are expected.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from . import distributions as dists
from .circuit import (
    NP_DTYPES,
    PRODUCT_PATTERNS,
    SUM_PATTERNS,
    Circuit,
    InputGroup,
    Param,
    ProductGroup,
    SumGroup,
    Variable,
)
from .diagnostics import IRParseError, PcirError, SourceSpan, suggest
from .distributions import Dist, Domain
from .printer import FORMAT_VERSION

__all__ = ["parse_ir"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]\-]*")
_NUMBER = re.compile(r"[+-]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![A-Za-z0-9_.])")
_INT = re.compile(r"[+-]?\d+")
_B64 = re.compile(r"[A-Za-z0-9+/=]*")
_WS = re.compile(r"[ \t]*")

_INT64_MAX = 2**63 - 1
_MAX_DEPTH = 32  # nesting of lists/tuples: deeper text is garbage, not a circuit
_MAX_DIGITS = 40  # an integer of more digits cannot be an index, a size or a seed
_ARRAY_DTYPE = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "bool": np.bool_}
_INITS = ("random", "uniform")


def parse_ir(text: str, filename: str = "<string>") -> Circuit:
    """Parse ``.pcir`` text into a :class:`Circuit`.

    Raises :class:`IRParseError` (with the file, line, column and source line) on malformed text;
    never any other exception type. The circuit is not verified: call
    :func:`pcir.ir.verify.verify` for the structural rules (the groups carry their source spans,
    so the verifier's errors point at the right line too).
    """
    if not isinstance(text, str):
        raise IRParseError(f"expected .pcir text (str), got {type(text).__name__}")
    if text.startswith("\ufeff"):  # a byte-order mark left by some editors
        text = text[1:]
    return _Parser(text, filename).parse()


# ---- one line ----------------------------------------------------------------------------------
class _Line:
    """A scanner over one source line; every method raises IRParseError pointing into it."""

    def __init__(self, text: str, lineno: int, filename: str):
        self.s = text
        self.pos = 0
        self.lineno = lineno
        self.filename = filename

    # -- positions and errors
    def span(self, start: int, end: int | None = None) -> SourceSpan:
        start = min(start, len(self.s))
        end = max(start + 1, end if end is not None else start + 1)
        return SourceSpan(self.filename, self.lineno, start + 1, end + 1, self.s)

    def error(
        self, msg: str, start: int | None = None, end: int | None = None, hint: str | None = None
    ) -> IRParseError:
        start = self.pos if start is None else start
        return IRParseError(msg, self.span(start, end), hint)

    def found(self) -> str:
        """What is at the cursor, for 'expected X, found Y' messages."""
        self.ws()
        if self.pos >= len(self.s):
            return "end of line"
        m = re.compile(r"[^ \t,(){}\[\]=:%]+").match(self.s, self.pos)
        tok = m.group(0) if m else self.s[self.pos]
        return repr(tok[:24] + ("..." if len(tok) > 24 else ""))

    def expected(self, what: str, hint: str | None = None) -> IRParseError:
        self.ws()
        return self.error(f"expected {what}, found {self.found()}", hint=hint)

    # -- tokens
    def ws(self) -> None:
        self.pos = _WS.match(self.s, self.pos).end()  # type: ignore[union-attr]

    def at_end(self) -> bool:
        self.ws()
        return self.pos >= len(self.s)

    def end(self) -> None:
        if not self.at_end():
            raise self.error(f"unexpected {self.found()} at the end of the line", end=len(self.s))

    def peek(self, lit: str) -> bool:
        self.ws()
        return self.s.startswith(lit, self.pos)

    def accept(self, lit: str) -> bool:
        if self.peek(lit):
            self.pos += len(lit)
            return True
        return False

    def expect(self, lit: str, what: str | None = None) -> None:
        if not self.accept(lit):
            raise self.expected(what or f"'{lit}'")

    def word(self, what: str) -> tuple[str, int]:
        """An identifier (letters, digits, underscore); returns it and its start."""
        self.ws()
        m = _WORD.match(self.s, self.pos)
        if not m:
            raise self.expected(what)
        self.pos = m.end()
        return m.group(0), m.start()

    def keyword(self, kw: str) -> None:
        """``kw`` as a whole word, e.g. ``units`` in ``units=3``."""
        self.ws()
        m = _WORD.match(self.s, self.pos)
        if not m or m.group(0) != kw:
            raise self.expected(f"'{kw}'")
        self.pos = m.end()

    def field(self, key: str) -> None:
        """``key=`` (spaces allowed around ``=``)."""
        self.keyword(key)
        self.expect("=", f"'=' after '{key}'")

    def string(self) -> str:
        """A JSON string literal (the printer writes non-bare names and strings with json.dumps)."""
        self.ws()
        start = self.pos
        if not self.s.startswith('"', start):
            raise self.expected("a string")
        i = start + 1
        while True:
            j = self.s.find('"', i)
            if j < 0:
                raise self.error("unterminated string", start, len(self.s))
            k = j - 1
            while k > start and self.s[k] == "\\":
                k -= 1
            if (j - 1 - k) % 2 == 0:  # an even number of backslashes: this quote closes
                break
            i = j + 1
        try:
            val = json.loads(self.s[start : j + 1])
        except ValueError as e:
            raise self.error(f"invalid string literal ({e.args[0].split(':')[0]})", start, j + 1) from None
        self.pos = j + 1
        return val

    def name(self, what: str) -> tuple[str, int]:
        """A bare name (``in0.w``, ``x-1``) or a quoted one (``"my group"``)."""
        self.ws()
        start = self.pos
        if self.s.startswith('"', start):
            return self.string(), start
        m = _BARE.match(self.s, start)
        if not m:
            raise self.expected(what)
        self.pos = m.end()
        return m.group(0), start

    def integer(self, what: str, lo: int = -_INT64_MAX - 1, hi: int = _INT64_MAX) -> int:
        self.ws()
        start = self.pos
        m = _INT.match(self.s, start)
        if not m or (m.end() < len(self.s) and (self.s[m.end()].isalnum() or self.s[m.end()] in "._")):
            raise self.expected(what)
        tok = m.group(0)
        if len(tok) > _MAX_DIGITS:
            raise self.error(f"integer {tok[:12]}... is too large", start, m.end())
        v = int(tok)
        if not lo <= v <= hi:
            raise self.error(f"{what} must be in [{lo}, {hi}], got {v}", start, m.end())
        self.pos = m.end()
        return v

    def number(self) -> int | float | None:
        """An int or float literal at the cursor (``None`` when there is none)."""
        self.ws()
        m = _NUMBER.match(self.s, self.pos)
        if not m:
            return None
        tok = m.group(0)
        self.pos = m.end()
        if _INT.fullmatch(tok):
            if len(tok) > _MAX_DIGITS:
                raise self.error(f"integer {tok[:12]}... is too large", m.start(), m.end())
            return int(tok)
        return float(tok)

    def scalar(self, depth: int = 0):
        """An attribute or distribution-argument value: int, float, string, bool or tuple."""
        self.ws()
        if depth > _MAX_DEPTH:
            raise self.error("value nested too deeply")
        c = self.s[self.pos : self.pos + 1]
        if c == '"':
            return self.string()
        if c == "(":
            self.pos += 1
            items = []
            if not self.accept(")"):
                while True:
                    items.append(self.scalar(depth + 1))
                    if self.accept(")"):
                        break
                    self.expect(",", "',' or ')' in a tuple")
            return tuple(items)
        for lit, val in (("true", True), ("false", False)):
            m = _WORD.match(self.s, self.pos)
            if m and m.group(0) == lit:
                self.pos = m.end()
                return val
        v = self.number()
        if v is None:
            raise self.expected("a value (number, string, true/false or tuple)")
        return v

    # -- arrays
    def array(self, what: str) -> _RawArray:
        """An inline nested list, a single number, or a ``b64z"..."`` string (shape comes later)."""
        self.ws()
        start = self.pos
        if self.s.startswith("<", start):
            close = self.s.find(">", start)
            raise self.error(
                f"{what} is a summarized array, which is not parseable",
                start,
                close + 1 if close > 0 else None,
                hint="this dump was printed with summarize=True (pcir ir --summarize); print it without summarizing to get text that parses",
            )
        if self.s.startswith("b64z", start):
            self.pos += 4
            if not self.s.startswith('"', self.pos):
                raise self.expected("'\"' after b64z")
            body_start = self.pos + 1
            m = _B64.match(self.s, body_start)
            end = m.end()  # type: ignore[union-attr]
            if not self.s.startswith('"', end):
                if end >= len(self.s):
                    raise self.error("unterminated b64z string", start, len(self.s))
                raise self.error(f"invalid character {self.s[end]!r} in b64z data", end)
            self.pos = end + 1
            return _RawArray(self, start, self.pos, None, self.s[body_start:end])
        if self.s.startswith("[", start):
            items = self._list(0)
            return _RawArray(self, start, self.pos, items, None)
        v = self._element()
        if v is None:
            raise self.expected(f'{what}: a list, a number or b64z"..."')
        return _RawArray(self, start, self.pos, v, None)

    def _element(self):
        """A number or true/false inside an array (None when there is none)."""
        self.ws()
        for lit, val in (("true", True), ("false", False)):
            if self.s.startswith(lit, self.pos):
                m = _WORD.match(self.s, self.pos)
                if m and m.group(0) == lit:
                    self.pos = m.end()
                    return val
        return self.number()

    def _list(self, depth: int) -> list:
        if depth > _MAX_DEPTH:
            raise self.error("array nested too deeply")
        self.expect("[")
        items: list = []
        if self.accept("]"):
            return items
        while True:
            self.ws()
            if self.peek("["):
                items.append(self._list(depth + 1))
            else:
                v = self._element()
                if v is None:
                    raise self.expected("a number, true/false or '[' in the array")
                items.append(v)
            if self.accept("]"):
                return items
            self.expect(",", "',' or ']' in the array")


class _RawArray:
    """An array as written, resolved to numpy once its dtype and shape are known."""

    def __init__(self, line: _Line, start: int, end: int, items, b64: str | None):
        self.line, self.start, self.end, self.items, self.b64 = line, start, end, items, b64

    def error(self, msg: str, hint: str | None = None) -> IRParseError:
        return self.line.error(msg, self.start, self.end, hint)

    def nested_shape(self) -> tuple[int, ...]:
        """The shape of an inline list (raises on a ragged one)."""

        def shape_of(x) -> tuple[int, ...]:
            if not isinstance(x, list):
                return ()
            if not x:
                return (0,)
            subs = [shape_of(e) for e in x]
            if any(s != subs[0] for s in subs):
                raise self.error("ragged array: rows have different lengths or depths")
            return (len(x),) + subs[0]

        return shape_of(self.items)

    def resolve(self, dtype: str, shape_for: Callable[[int], tuple[int, ...] | None], what: str) -> np.ndarray:
        """The numpy array of ``dtype``; ``shape_for(size)`` gives the shape a b64z array takes
        (``None``: cannot tell) and, for inline arrays, the shape an empty ``[]`` stands for."""
        np_dtype = np.dtype(_ARRAY_DTYPE[dtype]).newbyteorder("<")
        if self.b64 is not None:
            try:
                packed = base64.b64decode(self.b64, validate=True)
            except (binascii.Error, ValueError):
                raise self.error(f"{what}: b64z data is not valid base64") from None
            data = _inflate(packed, self, what)
            if len(data) % np_dtype.itemsize:
                raise self.error(f"{what}: b64z data has {len(data)} bytes, not a whole number of {dtype} values")
            flat = np.frombuffer(data, dtype=np_dtype)
            shape = shape_for(flat.size)
            if shape is None or math.prod(shape) != flat.size:
                raise self.error(
                    f"{what}: b64z data holds {flat.size} {dtype} values, which does not fit the expected shape {_fmt_shape(shape)}"
                )
            return flat.reshape(shape).astype(np_dtype.newbyteorder("="))
        items = self.items
        shape = self.nested_shape()
        if math.prod(shape) == 0:
            want = shape_for(0)
            if want is not None and math.prod(want) == 0:
                shape = want
        flat: list = []
        _flatten(items, flat)
        for v in flat:
            if dtype == "bool":
                if not isinstance(v, bool):
                    raise self.error(f"{what}: expected true/false values (a bool array), found {v!r}")
            elif isinstance(v, bool):
                raise self.error(f"{what}: true/false in a {dtype} array")
            elif dtype == "i64":
                if not isinstance(v, int):
                    raise self.error(f"{what}: expected integers (an i64 array), found {v!r}")
                if not -_INT64_MAX - 1 <= v <= _INT64_MAX:
                    raise self.error(f"{what}: {v} does not fit in i64")
            elif math.isfinite(v) and abs(v) > float(np.finfo(_ARRAY_DTYPE[dtype]).max):
                raise self.error(f"{what}: {v!r} does not fit in {dtype}")
        arr = np.array(flat, dtype=_ARRAY_DTYPE[dtype])
        return arr.reshape(shape)


def _flatten(x, out: list) -> None:
    if isinstance(x, list):
        for e in x:
            _flatten(e, out)
    else:
        out.append(x)


def _fmt_shape(shape) -> str:
    return "unknown" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _inflate(packed: bytes, raw: _RawArray, what: str) -> bytes:
    # Bounded: a corrupt or hostile b64z string must not expand into gigabytes.
    limit = 1 << 34
    d = zlib.decompressobj()
    try:
        data = d.decompress(packed, limit)
    except zlib.error:
        raise raw.error(f"{what}: b64z data is not valid zlib data") from None
    if d.unconsumed_tail:
        raise raw.error(f"{what}: b64z data expands beyond {limit} bytes")
    if not d.eof:
        raise raw.error(f"{what}: b64z data is truncated")
    return data


# ---- the whole text ----------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.variables: list[Variable] = []
        self.var_index: dict[str, int] = {}
        self.params: dict[str, Param] = {}
        self.groups: dict[str, InputGroup | ProductGroup | SumGroup] = {}
        self.roots: list[str] = []
        self.attrs: dict[str, object] = {}

    def parse(self) -> Circuit:
        header_seen = False
        line: _Line | None = None
        lineno = 0
        for lineno, raw in enumerate(self.text.split("\n"), start=1):
            raw = raw.rstrip("\r")
            line = _Line(raw, lineno, self.filename)
            if line.at_end() or raw.lstrip().startswith("#"):
                continue
            try:
                if not header_seen:
                    self.header(line)
                    header_seen = True
                else:
                    self.item(line)
            except PcirError:
                raise
            except (ValueError, TypeError, OverflowError, IndexError, KeyError, RecursionError, MemoryError) as e:
                # A safety net: a malformed line must give a located diagnostic, never a traceback.
                raise line.error(f"cannot parse this line ({type(e).__name__}: {e})", 0, len(raw)) from None
        if not header_seen:
            last = _Line("", max(lineno, 1), self.filename)
            raise last.error(f"empty input: expected the header 'pcir {FORMAT_VERSION}'")
        return Circuit(self.variables, self.groups.values(), self.params, self.roots, tuple(self.attrs.items()))  # type: ignore[arg-type]

    def header(self, ln: _Line) -> None:
        kw, start = _peek_word(ln)
        if kw != "pcir":
            raise ln.error(
                f"expected the header 'pcir {FORMAT_VERSION}' on the first line, found {ln.found()}",
                start,
                hint="a .pcir file starts with 'pcir 1' (the format version)",
            )
        ln.word("'pcir'")
        vstart = ln.pos
        version = ln.integer("a format version")
        if version != FORMAT_VERSION:
            raise ln.error(
                f"unsupported .pcir format version {version} (this pcir reads version {FORMAT_VERSION})",
                vstart + 1,
                ln.pos,
            )
        ln.end()

    def item(self, ln: _Line) -> None:
        ln.ws()
        if ln.peek("%"):
            self.group(ln)
            return
        kw, start = _peek_word(ln)
        handler = {"attr": self.attr_line, "var": self.var_line, "param": self.param_line, "root": self.root_line}.get(
            kw or ""
        )
        if handler is None:
            if kw == "pcir":
                raise ln.error("a second 'pcir' header", start, start + 4)
            hint = suggest(kw, ["attr", "var", "param", "root"]) if kw else None
            raise ln.error(
                f"expected 'attr', 'var', 'param', 'root' or a group '%name = ...', found {ln.found()}",
                start,
                start + len(kw) if kw else None,
                hint=hint,
            )
        ln.word("a keyword")
        handler(ln)
        ln.end()

    # -- top-level items
    def attr_line(self, ln: _Line) -> None:
        key, start = ln.name("an attribute name")
        if key in self.attrs:
            raise ln.error(f"duplicate circuit attribute '{key}'", start, ln.pos)
        ln.expect("=", "'=' after the attribute name")
        self.attrs[key] = ln.scalar()

    def var_line(self, ln: _Line) -> None:
        name, start = ln.name("a variable name")
        if name in self.var_index:
            raise ln.error(f"duplicate variable '{name}'", start, ln.pos)
        ln.expect(":", "':' after the variable name")
        kind, kstart = ln.word("a domain (binary, categorical(K) or real)")
        if kind == "binary":
            dom = Domain.binary()
        elif kind == "real":
            dom = Domain.real()
        elif kind == "categorical":
            ln.expect("(", "'(' after categorical")
            k = ln.integer("the number of categories", 1, _INT64_MAX)
            ln.expect(")")
            dom = Domain.categorical(k)
        else:
            raise ln.error(
                f"unknown domain '{kind}' (expected binary, categorical(K) or real)",
                kstart,
                ln.pos,
                hint=suggest(kind, ["binary", "categorical", "real"]),
            )
        self.var_index[name] = len(self.variables)
        self.variables.append(Variable(name, dom))

    def param_line(self, ln: _Line) -> None:
        name, start = ln.name("a parameter name")
        if name in self.params:
            raise ln.error(f"duplicate parameter '{name}'", start, ln.pos)
        ln.expect(":", "':' after the parameter name")
        dtype, dstart = ln.word("a dtype (f32, f64 or i64)")
        if dtype not in NP_DTYPES:
            raise ln.error(
                f"unknown parameter dtype '{dtype}' (expected f32, f64 or i64)",
                dstart,
                ln.pos,
                hint=suggest(dtype, NP_DTYPES),
            )
        if not ln.s.startswith("[", ln.pos):
            raise ln.expected(f"'[' right after {dtype} (the shape, e.g. {dtype}[2,3])")
        ln.pos += 1
        shape: list[int] = []
        if not ln.accept("]"):
            while True:
                shape.append(ln.integer("a dimension", 0, _INT64_MAX))
                if ln.accept("]"):
                    break
                ln.expect(",", "',' or ']' in the shape")
        ln.expect("=", "'=' after the parameter's type")
        kw, kstart = _peek_word(ln)
        if kw == "init":
            ln.word("init")
            ln.expect("(", "'(' after init")
            init, istart = ln.word("an initialisation (random or uniform)")
            if init not in _INITS:
                raise ln.error(
                    f"unknown initialisation '{init}' (expected random or uniform)",
                    istart,
                    ln.pos,
                    hint=suggest(init, _INITS),
                )
            ln.expect(",", "',' after the initialisation")
            ln.field("seed")
            seed = ln.integer("a seed", 0, 2**128)
            ln.expect(")", "')' closing init(...)")
            self.params[name] = Param(tuple(shape), dtype, None, init, seed)
            return
        raw = ln.array(f"the value of parameter '{name}'")
        want = tuple(shape)
        value = raw.resolve(dtype, lambda size: want, f"parameter '{name}'")
        if value.shape != want:
            raise raw.error(
                f"parameter '{name}' is declared {dtype}[{','.join(map(str, want))}] but its value has shape {list(value.shape)}"
            )
        self.params[name] = Param(want, dtype, value)

    def root_line(self, ln: _Line) -> None:
        self.roots.append(self.ref(ln))

    # -- groups
    def ref(self, ln: _Line) -> str:
        """``%name`` of a group defined on an earlier line."""
        ln.expect("%", "a group reference '%name'")
        name, start = ln.name("a group name after '%'")
        if name not in self.groups:
            raise ln.error(
                f"unknown group '%{name}'",
                start - 1,
                ln.pos,
                hint=suggest(name, self.groups)
                or "groups are listed children first: a group must be defined before it is used",
            )
        return name

    def refs(self, ln: _Line) -> tuple[str, ...]:
        ln.expect("(", "'(' and the children")
        out: list[str] = []
        if ln.accept(")"):
            return ()
        while True:
            out.append(self.ref(ln))
            if ln.accept(")"):
                return tuple(out)
            ln.expect(",", "',' or ')' in the children")

    def group(self, ln: _Line) -> None:
        gstart = ln.pos
        ln.expect("%")
        name, _ = ln.name("a group name after '%'")
        nend = ln.pos
        if name in self.groups:
            raise ln.error(f"duplicate group '%{name}'", gstart, nend)
        span = ln.span(gstart, nend)
        ln.expect("=", "'=' after the group name")
        kind, kstart = ln.word("a group kind (input, product or sum)")
        if kind == "input":
            g = self.input_group(ln, name, span)
        elif kind == "product":
            g = self.product_group(ln, name, span)
        elif kind == "sum":
            g = self.sum_group(ln, name, span)
        else:
            raise ln.error(
                f"unknown group kind '{kind}' (expected input, product or sum)",
                kstart,
                ln.pos,
                hint=suggest(kind, ["input", "product", "sum"]),
            )
        attrs = self.group_attrs(ln)
        ln.end()
        if attrs:
            g = replace(g, attrs=attrs)  # in printed order: the printer writes them sorted
        self.groups[name] = g

    def group_attrs(self, ln: _Line) -> tuple:
        if not ln.accept("{"):
            return ()
        out: list[tuple[str, object]] = []
        seen: set[str] = set()
        if ln.accept("}"):
            return ()
        while True:
            key, kstart = ln.name("an attribute name")
            if key in seen:
                raise ln.error(f"duplicate attribute '{key}'", kstart, ln.pos)
            seen.add(key)
            ln.expect("=", "'=' after the attribute name")
            out.append((key, ln.scalar()))
            if ln.accept("}"):
                return tuple(out)
            ln.expect(",", "',' or '}' in the attributes")

    def units(self, ln: _Line) -> int:
        ln.field("units")
        return ln.integer("a unit count", 0, _INT64_MAX)

    def param_ref(self, ln: _Line) -> str:
        ln.field("params")
        pname, start = ln.name("a parameter name")
        if pname not in self.params:
            raise ln.error(
                f"unknown parameter '{pname}'",
                start,
                ln.pos,
                hint=suggest(pname, self.params)
                or "parameters are declared with 'param NAME : dtype[shape] = ...' before the groups",
            )
        return pname

    def input_group(self, ln: _Line, name: str, span: SourceSpan) -> InputGroup:
        ln.ws()
        if ln.peek("#"):
            start = ln.pos
            ln.pos += 1
            idx = ln.integer("a variable index")
            raise ln.error(
                f"variable index #{idx} is out of range (the circuit has {len(self.variables)} variables)",
                start,
                ln.pos,
            )
        vname, vstart = ln.name("a variable name")
        if vname not in self.var_index:
            raise ln.error(
                f"unknown variable '{vname}'",
                vstart,
                ln.pos,
                hint=suggest(vname, self.var_index)
                or "variables are declared with 'var NAME : domain' before the groups",
            )
        units = self.units(ln)
        ln.field("dist")
        kind, kstart = ln.word("a distribution name")
        if kind not in dists.names():
            # the known families go in the hint: the list grows as families are registered
            raise ln.error(
                f"unknown distribution '{kind}'",
                kstart,
                ln.pos,
                hint=suggest(kind, dists.names()) or f"known distributions: {', '.join(dists.names())}",
            )
        args: list[tuple[str, object]] = []
        if ln.accept("("):
            if not ln.accept(")"):
                while True:
                    key, astart = ln.word("a distribution argument name")
                    if any(k == key for k, _ in args):
                        raise ln.error(f"duplicate distribution argument '{key}'", astart, ln.pos)
                    ln.expect("=", "'=' after the argument name")
                    v = ln.scalar()
                    if isinstance(v, tuple):
                        raise ln.error("a distribution argument must be a number or a string", astart, ln.pos)
                    args.append((key, v))
                    if ln.accept(")"):
                        break
                    ln.expect(",", "',' or ')' in the distribution arguments")
        dist = Dist(kind, tuple(args))  # type: ignore[arg-type]
        pname = self.param_ref(ln)
        return InputGroup(name, self.var_index[vname], units, dist, pname, (), span)

    def pattern(self, ln: _Line, allowed: tuple[str, ...], what: str) -> str:
        pat, start = ln.word(f"a {what} pattern ({', '.join(allowed)})")
        if pat not in allowed:
            raise ln.error(
                f"unknown {what} pattern '{pat}' (expected {', '.join(allowed)})",
                start,
                ln.pos,
                hint=suggest(pat, allowed),
            )
        return pat

    def product_group(self, ln: _Line, name: str, span: SourceSpan) -> ProductGroup:
        children = self.refs(ln)
        pattern = self.pattern(ln, PRODUCT_PATTERNS, "product")
        units = self.units(ln)
        edges = None
        if pattern == "explicit":
            ln.field("edges")
            raw = ln.array("the product's edges")
            want = (units, len(children))
            edges = raw.resolve("i64", lambda size: want, "edges")
            if edges.shape != want:
                raise raw.error(
                    f"an explicit product's edges must have shape [units, children] = {list(want)}, got {list(edges.shape)}"
                )
        return ProductGroup(name, children, pattern, units, edges, (), span)

    def sum_group(self, ln: _Line, name: str, span: SourceSpan) -> SumGroup:
        children = self.refs(ln)
        units = self.units(ln)
        pattern = self.pattern(ln, SUM_PATTERNS, "sum")
        k = sum(self.groups[c].units for c in children)
        mask = block = edges = None
        if pattern == "block":
            ln.field("block")
            bstart = ln.pos
            ln.expect("(", "'(' and the block shape (rows, columns)")
            bm = ln.integer("the block's rows", 1, _INT64_MAX)
            ln.expect(",", "',' in the block shape")
            bk = ln.integer("the block's columns", 1, _INT64_MAX)
            ln.expect(")", "')' closing the block shape")
            block = (bm, bk)
            if units % bm or k % bk:
                raise ln.error(f"block {list(block)} does not tile the sum's weights [{units}, {k}]", bstart, ln.pos)
            want = (units // bm, k // bk)
            ln.field("mask")
            raw = ln.array("the sum's mask")
            mask = raw.resolve("bool", lambda size: want, "mask")
            if mask.shape != want:
                raise raw.error(
                    f"the mask must have shape [units/{bm}, columns/{bk}] = {list(want)}, got {list(mask.shape)}"
                )
        elif pattern == "explicit":
            ln.field("edges")
            raw = ln.array("the sum's edges")
            edges = raw.resolve("i64", lambda size: (size // 2, 2), "edges")
            if edges.ndim != 2 or edges.shape[1] != 2:
                raise raw.error(
                    f"an explicit sum's edges must have shape [E, 2] (node, column pairs), got {list(edges.shape)}"
                )
        pname = self.param_ref(ln)
        return SumGroup(name, units, children, pattern, pname, mask, block, edges, (), span)


def _peek_word(ln: _Line) -> tuple[str | None, int]:
    ln.ws()
    m = _WORD.match(ln.s, ln.pos)
    return (m.group(0) if m else None), ln.pos
