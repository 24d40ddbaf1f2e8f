"""Shared plumbing of the importers and exporters: errors with places, reading (gzip-aware),
number parsing and atomic writing."""

from __future__ import annotations

import math
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from ...ir.diagnostics import PcirError, SourceSpan

# A source line longer than this is shown as a window around the fault (SPFlow files are often
# one line of megabytes).
_MAX_SHOWN = 100


class FormatError(PcirError):
    """A circuit file of another tool's format is malformed, or a circuit cannot be written in
    the format asked for. Names ``file:line`` when there is one."""


def span_at(filename: str, lineno: int, line: str, col: int = 1, end_col: int | None = None) -> SourceSpan:
    """A span on ``line`` (1-based ``col``). A very long line is shown as a window around the
    fault; the caret (and so the column reported) is then relative to that window."""
    if len(line) <= _MAX_SHOWN:
        return SourceSpan(filename, lineno, col, end_col, line)
    start = max(0, col - 1 - _MAX_SHOWN // 2)
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + _MAX_SHOWN < len(line) else ""
    shown = prefix + line[start : start + _MAX_SHOWN] + suffix
    new_col = col - start + len(prefix)
    new_end = None if end_col is None else min(end_col - start, _MAX_SHOWN + 1) + len(prefix)
    return SourceSpan(filename, lineno, new_col, new_end, shown)


def token_cols(line: str, index: int) -> tuple[int, int]:
    """1-based (col, end_col) of the ``index``-th whitespace-separated token of ``line`` (or of
    the end of the line when there are fewer tokens)."""
    pos = 0
    n = len(line)
    k = -1
    while pos < n:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos >= n:
            break
        start = pos
        while pos < n and not line[pos].isspace():
            pos += 1
        k += 1
        if k == index:
            return start + 1, pos + 1
    end = len(line.rstrip()) + 1
    return end, end + 1


class Lines:
    """The lines of a text file with error helpers naming ``file:line:col``."""

    def __init__(self, filename: str, text: str):
        self.filename = filename
        self.lines = text.splitlines()

    def __iter__(self) -> Iterator[tuple[int, str]]:
        """(1-based line number, line) pairs."""
        return ((i + 1, s) for i, s in enumerate(self.lines))

    def line(self, lineno: int) -> str:
        return self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""

    def span(self, lineno: int, token: int | None = None) -> SourceSpan:
        line = self.line(lineno)
        if token is None:
            stripped = len(line) - len(line.lstrip())
            return span_at(self.filename, lineno, line, stripped + 1, len(line.rstrip()) + 1)
        col, end = token_cols(line, token)
        return span_at(self.filename, lineno, line, col, end)

    def error(self, lineno: int, message: str, token: int | None = None, hint: str | None = None) -> FormatError:
        return FormatError(message, self.span(lineno, token), hint)

    def int_at(self, lineno: int, toks: list[str], i: int, what: str, minimum: int | None = None) -> int:
        """Token ``i`` as an integer (>= ``minimum``), or a located error naming ``what``."""
        if i >= len(toks):
            raise self.error(lineno, f"line ends early: expected {what}", i)
        t = toks[i]
        try:
            v = int(t)
        except ValueError:
            raise self.error(lineno, f"expected {what} (an integer), got '{t}'", i) from None
        if "_" in t:
            raise self.error(lineno, f"expected {what} (an integer), got '{t}'", i)
        if minimum is not None and v < minimum:
            raise self.error(lineno, f"{what} must be >= {minimum}, got {v}", i)
        return v

    def float_at(self, lineno: int, toks: list[str], i: int, what: str) -> float:
        """Token ``i`` as a float (``inf``/``-inf`` allowed, ``nan`` not)."""
        if i >= len(toks):
            raise self.error(lineno, f"line ends early: expected {what}", i)
        v = parse_float(toks[i])
        if v is None:
            raise self.error(lineno, f"{what} is not a number: '{toks[i]}'", i)
        return v

    def prob_from_log(self, lineno: int, toks: list[str], i: int, what: str) -> float:
        """Token ``i`` is a log-probability/log-weight; returns exp of it (finite)."""
        lw = self.float_at(lineno, toks, i, what)
        if lw > 700:
            raise self.error(lineno, f"{what} {toks[i]} is too large (its exponential overflows)", i)
        return math.exp(lw)


def parse_float(tok: str) -> float | None:
    """A float in the usual decimal/exponent syntax, or inf; None for anything else (nan too)."""
    if "_" in tok:
        return None
    try:
        v = float(tok)
    except ValueError:
        return None
    return None if math.isnan(v) else v


def read_source(path: str | Path) -> str:
    """The text of ``path``, gunzipped when it starts with the gzip magic bytes.

    A truncated or corrupt gzip stream is a :class:`FormatError` naming the line where the
    readable text stops.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{p}: no such file") from None
    except OSError as e:
        raise FormatError(f"{p}: cannot read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(str(p), raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise FormatError("file is not UTF-8 text", SourceSpan(str(p), line, 1)) from None


def _gunzip(filename: str, raw: bytes, strict=True) -> bytes:
    out: list[bytes] = []
    data = raw
    try:
        # Concatenated gzip members are legal; decode them all.
        while data:
            d = zlib.decompressobj(wbits=31)
            out.append(d.decompress(data))
            out.append(d.flush())
            if not d.eof:
                raise _Truncated()
            data = d.unused_data
            if data and data[:2] != b"\x1f\x8b":
                break  # trailing garbage after a complete member: ignore, as gzip(1, strict=True) warns
    except (_Truncated, zlib.error) as e:
        text = b"".join(out)
        line = text.count(b"\n") + 1
        last = text[text.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")
        what = "ends early (truncated gzip stream)" if isinstance(e, _Truncated) else f"is corrupt gzip data ({e})"
        col = len(last) + 1
        raise FormatError(
            f"compressed file {what}: the text stops here, in line {line}",
            span_at(filename, line, last, col, col + 1),
        ) from None
    return b"".join(out)


class _Truncated(Exception):
    pass


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename, so that
    a failure never leaves a half-written file behind (an existing file stays as it was)."""
    p = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    folder = p.parent if str(p.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
        raise
