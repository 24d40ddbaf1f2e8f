"""pcir's graph IR: node groups, parameters, verifier, text form and reference evaluator.

This layer imports nothing else of pcir's.
"""

from . import distributions
from .builder import CircuitBuilder
from .circuit import (
    Attrs,
    Circuit,
    Group,
    InputGroup,
    Param,
    ProductGroup,
    SumGroup,
    Variable,
    make_attrs,
)
from .diagnostics import (
    BackendError,
    CheckpointError,
    DataError,
    IRParseError,
    PassError,
    PcirError,
    PcSyntaxError,
    SourceSpan,
    VerifyError,
)
from .distributions import Dist, Domain
from .evaluator import em_step, flows, forward, log_likelihood
from .printer import print_ir
from .verify import problems, verify

__all__ = [
    "Attrs",
    "BackendError",
    "CheckpointError",
    "Circuit",
    "CircuitBuilder",
    "DataError",
    "Dist",
    "Domain",
    "Group",
    "IRParseError",
    "InputGroup",
    "Param",
    "PassError",
    "PcSyntaxError",
    "PcirError",
    "ProductGroup",
    "SourceSpan",
    "SumGroup",
    "Variable",
    "VerifyError",
    "distributions",
    "em_step",
    "flows",
    "forward",
    "log_likelihood",
    "make_attrs",
    "print_ir",
    "problems",
    "verify",
]

try:  # the parser lands separately; keep the package importable meanwhile
    from .parser import parse_ir  # noqa: F401

    __all__.append("parse_ir")
except ImportError:  # pragma: no cover
    pass
