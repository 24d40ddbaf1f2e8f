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
