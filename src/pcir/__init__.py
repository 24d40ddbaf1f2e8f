"""pcir: a compiler for probabilistic circuits.

``.pc`` text -> graph IR (node groups) -> passes -> Triton kernels -> a ``torch.nn.Module``.
"""

from .ir import *  # noqa: F401,F403
from .ir import __all__ as _ir_all

__version__ = "0.1.0"
__all__ = list(_ir_all) + ["__version__", "compile"]


def compile(*args, **kwargs):  # noqa: A001
    """Compile a circuit to a ``torch.nn.Module``: see :func:`pcir.backend.compile`.

    Imported lazily so that ``import pcir`` does not import torch.
    """
    from .backend import compile as _compile

    return _compile(*args, **kwargs)


def parse_pc(text: str, filename: str = "<string>", base_dir=None):
    """Parse `.pc` source text into a Circuit (see docs/language.md)."""
    from .frontend import parse_pc as _parse_pc

    return _parse_pc(text, filename=filename, base_dir=base_dir)


def load_pc(path):
    """Load a `.pc` file into a Circuit."""
    from .frontend import load_pc as _load_pc

    return _load_pc(path)


def emit_pc(circuit) -> str:
    """A readable `.pc` text for a circuit (inverse of parse_pc up to names)."""
    from .frontend import emit_pc as _emit_pc

    return _emit_pc(circuit)


def load(path, fmt=None):
    """Load a circuit from `.pc`, `.pcir` or an imported format (jpc, psdd, spn, spflow)."""
    from .api import load as _load

    return _load(path, fmt)


__all__ += ["parse_pc", "load_pc", "emit_pc", "load"]
