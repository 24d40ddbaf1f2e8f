"""Loading circuits from files, whatever their format."""

from __future__ import annotations

from pathlib import Path

from .ir.circuit import Circuit
from .ir.diagnostics import PcirError


def load(path: str | Path, fmt: str | None = None) -> Circuit:
    """Read a circuit: ``.pc`` (the language), ``.pcir`` (the IR text), or an imported format."""
    p = Path(path)
    if not p.exists():
        raise PcirError(f"{p}: no such file")
    suffix = fmt or p.suffix.lstrip(".")
    if suffix == "pcir":
        from .ir.parser import parse_ir

        return parse_ir(p.read_text(), filename=str(p))
    if suffix == "pc":
        from .frontend import load_pc

        return load_pc(p)
    from .frontend.formats import import_file  # type: ignore[import-not-found]

    return import_file(p, fmt)
