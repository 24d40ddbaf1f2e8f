"""Importers and exporters of other tools' PC file formats (see docs/formats.md).

=========  ============================================  ===================================
format     file                                          leaves
=========  ============================================  ===================================
``jpc``    Juice.jl ``.jpc`` (also ``.jpc.gz``)          indicator, categorical, Bernoulli,
                                                         binomial, gaussian
``psdd``   ``.psdd`` (+ optional ``.vtree``)             literals, Bernoulli ("T" nodes)
``spn``    Juice.jl ``.spn``                             indicators
``spflow`` SPFlow text (``spn_to_str_equation``)        categorical, Bernoulli, gaussian
=========  ============================================  ===================================

Every format is one record per PC node; importing groups the nodes into node groups with
explicit edge lists (:mod:`.nodes`), keeping shared sub-circuits shared. Any input may be gzipped.

>>> from pcir.frontend.formats import import_file, export_circuit
>>> c = import_file("model.psdd")                     # doctest: +SKIP
>>> text = export_circuit(c, "jpc")                   # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path

from ...ir.circuit import Circuit
from . import jpc, psdd, spflow, spn
from ._common import FormatError, read_source, write_atomic
from .nodes import flatten

FORMATS = ("jpc", "psdd", "spn", "spflow")
EXPORT_FORMATS = FORMATS

_SUFFIXES = {".jpc": "jpc", ".psdd": "psdd", ".spn": "spn", ".spflow": "spflow"}

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "FormatError",
    "detect_format",
    "export_circuit",
    "export_file",
    "export_files",
    "import_file",
    "import_text",
]


def detect_format(path: str | Path, text: str | None = None) -> str:
    """The format of ``path``: from its suffix (``.gz`` ignored), else from its first line."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]
    if text is not None:
        for line in text.splitlines():
            s = line.strip()
            if not s:
                continue
            head = s.split()[0]
            if head == "c":
                continue  # a comment line of jpc/psdd/vtree files
            if head in ("jpc", "psdd"):
                return head
            if head == "vtree":
                raise FormatError(f"{p} is a vtree file: import the .psdd file (its vtree is found next to it)")
            if re.fullmatch(r"\(\s*\d+(\s+\d+)*\s*\)", s):
                return "spn"
            if s.startswith("(") or s.split("(")[0] in spflow.LEAVES:
                return "spflow"
            break
    raise FormatError(
        f"{p}: cannot tell the file format",
        hint=f"name it .jpc, .psdd, .spn or .spflow, or pass a format ({', '.join(FORMATS)})",
    )


def import_text(text: str, fmt: str, filename: str = "<string>", *, vtree: str | None = None) -> Circuit:
    """Import a circuit from the text of a file in format ``fmt``; ``vtree`` is the text of a
    PSDD's vtree file (optional)."""
    fmt = _check_format(fmt, FORMATS)
    if fmt == "jpc":
        return jpc.read(text, filename)
    if fmt == "psdd":
        vt = psdd.read_vtree(vtree, f"{filename}.vtree") if vtree is not None else None
        return psdd.read(text, filename, vt)
    if fmt == "spn":
        return spn.read(text, filename)
    return spflow.read(text, filename)


def import_file(path: str | Path, fmt: str | None = None, *, vtree: str | Path | None = None) -> Circuit:
    """Read a circuit file of another tool (gzipped or not) into a :class:`Circuit`.

    ``fmt`` is one of ``jpc``, ``psdd``, ``spn``, ``spflow``; by default it comes from the file
    name (``.jpc``, ``.jpc.gz``, ``.psdd``, ...) or the first line. For a PSDD, ``vtree`` names its
    vtree file; by default ``X.vtree`` next to ``X.psdd`` is used when it exists.
    Malformed files raise :class:`FormatError` naming ``file:line``.
    """
    p = Path(path)
    text = read_source(p)
    if fmt is None:
        fmt = detect_format(p, text)
    fmt = _check_format(fmt, FORMATS)
    vtree_text = None
    if fmt == "psdd":
        vpath = Path(vtree) if vtree is not None else _sibling_vtree(p)
        if vpath is not None:
            vtree_text = read_source(vpath)
            vt = psdd.read_vtree(vtree_text, str(vpath))
            return psdd.read(text, str(p), vt)
    elif vtree is not None:
        raise FormatError(f"a vtree goes with a psdd file, not with {fmt}")
    return import_text(text, fmt, str(p), vtree=vtree_text)


def _sibling_vtree(p: Path) -> Path | None:
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    stem = name[: -len(".psdd")] if name.endswith(".psdd") else Path(name).stem
    for cand in (p.with_name(stem + ".vtree"), p.with_name(stem + ".vtree.gz")):
        if cand.exists():
            return cand
    return None


def export_circuit(circuit: Circuit, fmt: str) -> str:
    """The text of ``circuit`` in format ``fmt``; a :class:`FormatError` names what the format
    cannot express (e.g. gaussian leaves in a PSDD). For a PSDD that keeps its vtree, use
    :func:`export_files` to get the vtree text too."""
    return export_files(circuit, fmt)[0]


def export_files(circuit: Circuit, fmt: str) -> tuple[str, str | None]:
    """(main text, vtree text or None): the vtree only for a PSDD imported with one."""
    fmt = _check_format(fmt, EXPORT_FORMATS)
    flat = flatten(circuit, fmt)
    if fmt == "jpc":
        return jpc.write(flat), None
    if fmt == "psdd":
        return psdd.write(flat)
    if fmt == "spn":
        return spn.write(flat), None
    return spflow.write(flat), None


def export_file(circuit: Circuit, fmt: str | None, path: str | Path) -> list[Path]:
    """Write ``circuit`` to ``path`` in ``fmt`` (default: from the suffix); ``.gz`` compresses.

    Everything is converted before anything is written, and each file is written to a temporary
    file and renamed, so an error never leaves a half-written file. A PSDD that keeps its vtree
    also writes ``X.vtree`` next to ``X.psdd``. Returns the paths written.
    """
    p = Path(path)
    if fmt is None:
        fmt = detect_format(p)
    text, vtree_text = export_files(circuit, fmt)
    gz = p.name.endswith(".gz")
    outs: list[tuple[Path, str]] = [(p, text)]
    if vtree_text is not None:
        name = p.name[:-3] if gz else p.name
        stem = name[: -len(".psdd")] if name.endswith(".psdd") else name
        outs.append((p.with_name(stem + ".vtree"), vtree_text))
    for q, t in outs:
        data: str | bytes = t
        if q.name.endswith(".gz"):
            import gzip

            data = gzip.compress(t.encode("utf-8"), mtime=0)
        write_atomic(q, data)
    return [q for q, _ in outs]


def _check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    f = fmt.lower().lstrip(".")
    if f not in allowed:
        from ...ir.diagnostics import suggest

        raise FormatError(f"unknown format '{fmt}' (known: {', '.join(allowed)})", hint=suggest(f, allowed))
    return f
