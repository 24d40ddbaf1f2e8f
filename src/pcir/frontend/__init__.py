"""The `.pc` language: parse and lower to the IR, emit IR back as `.pc`, format `.pc` text.

>>> from pcir.frontend import parse_pc
>>> c = parse_pc('''
... var x[2]: binary
... A = bernoulli(x[0], units=2)
... B = bernoulli(x[1], units=2)
... root sum(A * B)
... ''')
>>> len(c.groups)
4

Reference: docs/language.md.
"""

from __future__ import annotations

from pathlib import Path

from ..ir.circuit import Circuit
from ..ir.diagnostics import PcSyntaxError
from .lower import lower_module
from .parser import parse_module

__all__ = ["emit_pc", "format_pc", "load_pc", "parse_module", "parse_pc", "save_pc"]


def parse_pc(text: str, filename: str = "<string>", base_dir: str | Path | None = None) -> Circuit:
    """Parse and lower `.pc` source text to a :class:`~pcir.ir.Circuit` (not verified).

    ``filename`` is what diagnostics call the text; ``base_dir`` is where relative paths
    (``include``, ``import``, ``load(...)``) are looked up (default: the directory of
    ``filename`` when it names a file, else the current directory). Raises
    :class:`~pcir.ir.PcSyntaxError` for every mistake in the source.
    """
    module = parse_module(text, filename)
    bd = Path(base_dir) if base_dir is not None else None
    if bd is None and not (filename.startswith("<") and filename.endswith(">")):
        bd = Path(filename).parent
    return lower_module(
        module, bd, str(Path(filename).resolve()) if bd is not None and Path(filename).is_file() else None
    )


def load_pc(path: str | Path) -> Circuit:
    """Read a `.pc` file and lower it to a circuit (relative paths are relative to the file)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise PcSyntaxError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PcSyntaxError(f"{p}: cannot read: {e}") from None
    return parse_pc(text, filename=str(p), base_dir=p.parent)


def emit_pc(circuit: Circuit, **kw) -> str:
    """Readable `.pc` text for a circuit (``load(emit(c))`` has the same function and structure)."""
    from .emit import emit_pc as _emit

    return _emit(circuit, **kw)


def save_pc(circuit: Circuit, path: str | Path) -> Path:
    """Write ``circuit`` as a `.pc` file; large arrays go to a ``.npz`` next to it."""
    from .emit import save_pc as _save

    return _save(circuit, path)


def format_pc(text: str, filename: str = "<string>") -> str:
    """The canonical formatting of `.pc` source (comments kept); raises on a syntax error."""
    from .fmt import format_module

    module = parse_module(text, filename)
    try:
        return format_module(module)
    except RecursionError:
        raise PcSyntaxError("the program is nested too deeply to format", None) from None
