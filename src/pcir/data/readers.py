"""Readers for the data formats pcir trains on. numpy only (no torch here).

Every reader returns a :class:`Table`: a 2-d array (samples x columns) plus an :class:`Origin`
that remembers where it came from, so that a later check against a circuit's variables can point
at the file, row and column of a bad value. Rows and columns in messages count from 1.

=================  ===========================================================================
format             what is read
=================  ===========================================================================
``.data``/``.txt`` comma-separated rows without a header (the binary density-estimation format)
``.csv``/``.tsv``  comma- (tab-) separated rows, an optional header line (detected or forced)
``.npy``           one array, 1-d (one sample) or 2-d
``.npz``           several named arrays (``key`` picks one)
idx (``.gz``)      the MNIST / Fashion-MNIST format; images are flattened to rows
=================  ===========================================================================

Missing entries (an empty field, ``?`` or ``nan`` in text; NaN in arrays) read as NaN; whether
they are allowed is decided by :func:`pcir.data.dataset.check_table`.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir.diagnostics import DataError, SourceSpan

ROWS_FROM_1 = "rows and columns count from 1"
_MISSING_TOKENS = frozenset(("", "?", "nan", "NaN", "NA", "na"))


@dataclass(frozen=True)
class Origin:
    """Where a table came from. For text, data row r (1-based) is on file line ``header_lines + r``."""

    path: str
    kind: str  # "text" | "array"
    key: str | None = None  # the npz array name
    header_lines: int = 0
    delimiter: str = ","

    @property
    def label(self) -> str:
        return f"{self.path}[{self.key}]" if self.key else self.path

    def span(self, row: int, col: int | None = None) -> SourceSpan | None:
        """A source span for 1-based data ``row`` (and field ``col``) of a text file, else None."""
        if self.kind != "text":
            return None
        line_no = self.header_lines + row
        line = _read_line(self.path, line_no)
        if line is None:
            return SourceSpan(self.path, line_no, 1)
        start, end = 1, None
        if col is not None:
            fields = line.split(self.delimiter)
            if 1 <= col <= len(fields):
                start = sum(len(f) + len(self.delimiter) for f in fields[: col - 1]) + 1
                end = start + max(len(fields[col - 1]), 1)
        return SourceSpan(self.path, line_no, start, end, line)

    def error(
        self, message: str, row: int | None = None, col: int | None = None, hint: str | None = ROWS_FROM_1
    ) -> DataError:
        """A DataError at 1-based ``row``/``col``: a source span for text, the label for arrays."""
        span = self.span(row, col) if row is not None else None
        if span is None:
            return DataError(f"{self.label}: {message}", hint=hint)
        return DataError(message, span, hint=hint)


@dataclass(frozen=True)
class Table:
    """A 2-d array of samples (rows) by variables (columns) and its origin."""

    x: np.ndarray
    origin: Origin
    header: tuple[str, ...] | None = None
    image_shape: tuple[int, ...] | None = None  # (H, W) or (H, W, C) for image rows

    @property
    def num_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_cols(self) -> int:
        return int(self.x.shape[1])


def _read_line(path: str, line_no: int) -> str | None:
    try:
        with _open_text(Path(path)) as f:
            for i, line in enumerate(f, 1):
                if i == line_no:
                    return line.rstrip("\r\n")
    except (OSError, UnicodeDecodeError, EOFError, zlib.error):
        return None
    return None


def _open_text(p: Path):
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8")
    return open(p, encoding="utf-8")


def _file_error(p: Path, message: str, hint: str | None = None) -> DataError:
    """An error about a whole file (no row or column to point at)."""
    return DataError(f"{p}: {message}", hint=hint)


def _require_file(p: Path) -> None:
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a file")


# ---- text ---------------------------------------------------------------------------------------
def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return tok.strip() in _MISSING_TOKENS


def read_text(path: str | Path, *, delimiter: str = ",", header: bool | None = False) -> Table:
    """Read delimiter-separated numeric rows. ``header``: False (none), True, or None (detect:
    a first line with a field that is not a number is a header)."""
    p = Path(path)
    _require_file(p)
    try:
        with _open_text(p) as f:
            text = f.read()
    except UnicodeDecodeError:
        raise _file_error(p, "not a text file (cannot decode it as UTF-8)") from None
    except (OSError, EOFError, zlib.error) as e:
        raise _file_error(p, f"cannot read the file ({e})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise _file_error(p, "file is empty (no data rows)")
    head: tuple[str, ...] | None = None
    first = lines[0].split(delimiter)
    if header is None:
        header = not all(_is_number(t) for t in first)
    if header:
        head = tuple(t.strip() for t in first)
        lines = lines[1:]
        if not lines:
            raise _file_error(p, "file has a header line but no data rows")
    origin = Origin(str(p), "text", None, 1 if header else 0, delimiter)
    ncol = lines[0].count(delimiter) + 1
    if head is not None and len(head) != ncol:
        raise origin.error(f"row 1 has {ncol} values but the header names {len(head)} columns", 1)
    counts = np.fromiter((ln.count(delimiter) for ln in lines), dtype=np.int64, count=len(lines)) + 1
    bad = np.nonzero(counts != ncol)[0]
    if bad.size:
        r = int(bad[0])
        if not lines[r].strip():
            raise origin.error("empty line inside the data", r + 1)
        last = r == len(lines) - 1
        what = " (truncated file?)" if last and counts[r] < ncol else f" (row 1 has {ncol})"
        raise origin.error(f"row {r + 1} has {counts[r]} values, expected {ncol}{what}", r + 1)
    tokens = delimiter.join(lines).split(delimiter)
    try:
        x = np.array(tokens, dtype=np.float64)
    except ValueError:
        x = _parse_slow(tokens, origin, ncol)
    return Table(x.reshape(len(lines), ncol), origin, head)


def _parse_slow(tokens: list[str], origin: Origin, ncol: int) -> np.ndarray:
    """Token by token, to name the offending field; empty/'?'/'nan' fields become NaN."""
    out = np.empty(len(tokens), dtype=np.float64)
    for i, tok in enumerate(tokens):
        try:
            out[i] = float(tok)
        except ValueError:
            if tok.strip() in _MISSING_TOKENS:
                out[i] = np.nan
                continue
            r, c = divmod(i, ncol)
            raise origin.error(f"row {r + 1}, column {c + 1}: '{tok.strip()}' is not a number", r + 1, c + 1) from None
    return out


# ---- numpy --------------------------------------------------------------------------------------
def _as_2d(a: np.ndarray, origin: Origin) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Rows of samples; an array of 3+ dims is a stack of images, flattened (shape remembered)."""
    if a.dtype.kind not in "biuf":
        raise origin.error(f"array has dtype {a.dtype}, expected numbers (integers, booleans or floats)", hint=None)
    image_shape = None
    if a.ndim == 0:
        raise origin.error("array is a scalar, expected 2-d (samples x variables)", hint=None)
    if a.ndim == 1:
        a = a[None, :]
    elif a.ndim >= 3:
        image_shape = tuple(int(d) for d in a.shape[1:])
        a = a.reshape(a.shape[0], -1)
    if a.shape[0] == 0:
        raise origin.error("array has no rows (no samples)", hint=None)
    if a.shape[1] == 0:
        raise origin.error("array has no columns (no variables)", hint=None)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    return a, image_shape


def read_npy(path: str | Path) -> Table:
    """One ``.npy`` array: 2-d (samples x variables) or 1-d (one sample). Never unpickles."""
    p = Path(path)
    _require_file(p)
    if p.stat().st_size == 0:
        raise _file_error(p, "file is empty")
    with open(p, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise _file_error(p, "not a .npy file (bad magic number)")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
        except (ValueError, OSError, EOFError) as e:
            raise _file_error(p, f"corrupt .npy header ({e})") from None
        if not dtype.hasobject:
            need = int(np.prod(shape)) * dtype.itemsize
            have = p.stat().st_size - f.tell()
            if have < need:
                raise _file_error(
                    p,
                    f"truncated .npy file: the header says {dtype.str} {tuple(shape)} ({need} bytes of data), the file holds {have} bytes",
                )
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _file_error(p, f"truncated or corrupt .npy file ({e})") from None
    origin = Origin(str(p), "array")
    x, image_shape = _as_2d(np.asarray(a), origin)
    return Table(x, origin, image_shape=image_shape)


def npz_keys(path: str | Path) -> list[str]:
    """The array names in an ``.npz`` file."""
    p = Path(path)
    _require_file(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            return list(z.files)
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise _file_error(p, f"cannot read the .npz file: {e} (truncated or not an .npz file?)") from None


def read_npz(path: str | Path, key: str) -> Table:
    """The array ``key`` of an ``.npz`` file. Never unpickles."""
    p = Path(path)
    keys = npz_keys(p)
    if key not in keys:
        raise _file_error(p, f"no array '{key}' in the file (it has: {', '.join(keys) or 'nothing'})")
    origin = Origin(str(p), "array", key)
    try:
        with np.load(p, allow_pickle=False) as z:
            a = np.asarray(z[key])
    except (ValueError, OSError, EOFError, zlib.error, KeyError) as e:
        raise _file_error(p, f"cannot read array '{key}': {e} (truncated or corrupt file?)") from None
    x, image_shape = _as_2d(a, origin)
    return Table(x, origin, image_shape=image_shape)


# ---- idx (MNIST) --------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> Table:
    """An idx file (optionally gzipped), as in MNIST/Fashion-MNIST. A 3-d (N, H, W) image array
    is flattened to N rows of H*W pixels and remembers ``image_shape=(H, W)``."""
    p = Path(path)
    _require_file(p)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as f:
                raw = f.read()
        else:
            raw = p.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise _file_error(p, f"cannot read the file: {e} (truncated or not gzip?)") from None
    if len(raw) == 0:
        raise _file_error(p, "file is empty")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise _file_error(
            p,
            "not an idx file (bad magic number)",
            hint="idx files start with two zero bytes, a type code and the number of dimensions",
        )
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise _file_error(p, "truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dt.itemsize
    have = len(raw) - 4 - 4 * ndim
    if have < need:
        shape = " x ".join(map(str, dims))
        raise _file_error(
            p, f"truncated idx file: the header says {shape} values ({need} bytes), the file holds {have} bytes"
        )
    a = np.frombuffer(raw, dtype=dt, count=int(np.prod(dims)), offset=4 + 4 * ndim).reshape(dims)
    a = a.astype(dt.newbyteorder("="))
    x, image_shape = _as_2d(a, Origin(str(p), "array"))
    return Table(x, Origin(str(p), "array"), image_shape=image_shape)


def is_idx_name(p: Path) -> bool:
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    return "idx" in name.rsplit(".", 1)[-1] or "-idx" in name


def read_file(path: str | Path, key: str | None = None, header: bool | None = None) -> Table:
    """Read one file, choosing the reader from its name (see the module docstring)."""
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ".npy":
        return read_npy(p)
    if suffix == ".npz":
        if key is None:
            keys = npz_keys(p)
            if len(keys) != 1:
                raise _file_error(p, f"the file holds {len(keys)} arrays ({', '.join(keys)}); say which one")
            key = keys[0]
        return read_npz(p, key)
    if is_idx_name(p):
        return read_idx(p)
    if suffix == ".csv":
        return read_text(p, delimiter=",", header=header)
    if suffix == ".tsv":
        return read_text(p, delimiter="\t", header=header)
    return read_text(p, delimiter=",", header=bool(header))
