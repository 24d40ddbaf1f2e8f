"""What a pass is: a frozen dataclass with a kebab-case ``name`` and typed options.

A pass is a pure ``Circuit -> Circuit`` function. Its options are the dataclass fields (their
kebab-case spelling is what a pipeline spec uses: field ``max_block`` is option ``max-block``).
Passes register themselves by name with :func:`register_pass`; :func:`get_pass` finds them.

>>> from dataclasses import dataclass
>>> @register_pass
... @dataclass(frozen=True)
... class Noop(Pass):
...     name = "noop-example"
...     def apply(self, circuit):
...         return circuit
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args, get_origin

from ..ir.circuit import Circuit
from ..ir.diagnostics import PassError, suggest

PassStats = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Pass:
    """Base class of every pass. Subclasses are frozen dataclasses whose fields are options.

    Override :meth:`apply` (or :meth:`apply_with_stats` when the pass reports statistics of its
    own, such as padding before and after). Neither may mutate the input circuit.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def apply(self, circuit: Circuit) -> Circuit:
        """The transformed circuit (a new object; ``circuit`` is left untouched)."""
        if type(self).apply_with_stats is Pass.apply_with_stats:
            raise NotImplementedError(f"pass '{self.name}' implements neither apply nor apply_with_stats")
        return self.apply_with_stats(circuit)[0]

    def apply_with_stats(self, circuit: Circuit) -> tuple[Circuit, PassStats]:
        """The transformed circuit and pass-specific statistics (shown by ``--stats``)."""
        if type(self).apply is Pass.apply:
            raise NotImplementedError(f"pass '{self.name}' implements neither apply nor apply_with_stats")
        return self.apply(circuit), {}

    # ---- options -------------------------------------------------------------------------
    @classmethod
    def options(cls) -> dict[str, dataclasses.Field]:
        """Option name (kebab-case) -> dataclass field."""
        return {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {opt: hints[f.name] for opt, f in cls.options().items()}

    def option_values(self) -> dict[str, Any]:
        return {opt: getattr(self, f.name) for opt, f in self.options().items()}

    def spec(self, all_options: bool = False) -> str:
        """The pipeline-spec text of this pass: ``name{opt=value,...}`` (non-default options)."""
        parts = []
        for opt, f in self.options().items():
            v = getattr(self, f.name)
            if all_options or f.default is dataclasses.MISSING or v != f.default:
                parts.append(f"{opt}={format_option_value(v)}")
        return self.name + ("{" + ",".join(parts) + "}" if parts else "")

    def __str__(self) -> str:
        return self.spec()


def format_option_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def convert_option(pass_name: str, option: str, typ: Any, text: str) -> Any:
    """Convert the text of an option value to the option's type, or raise :class:`PassError`."""
    text = text.strip()
    where = f"option '{option}' of pass '{pass_name}'"
    if get_origin(typ) is Literal:
        choices = get_args(typ)
        if text not in choices:
            raise PassError(
                f"{where} must be one of {', '.join(map(str, choices))}, got '{text}'", hint=suggest(text, choices)
            )
        return text
    if typ is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise PassError(f"{where} must be true or false, got '{text}'")
    if typ is int:
        try:
            return int(text, 0)
        except ValueError:
            raise PassError(f"{where} must be an integer, got '{text}'") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise PassError(f"{where} must be a number, got '{text}'") from None
    if typ is str:
        return text
    raise PassError(f"{where} has an unsupported type {typ!r}")  # pragma: no cover - a pass-author bug


_REGISTRY: dict[str, type[Pass]] = {}

P = typing.TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: make a pass available by its ``name`` in pipeline specs."""
    name = cls.name
    if not name or name != name.lower() or "_" in name or " " in name:
        raise ValueError(f"pass name must be kebab-case, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"pass '{name}' registered twice")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"pass '{name}' must be a dataclass")
    _REGISTRY[name] = cls
    return cls


def registered_passes() -> Mapping[str, type[Pass]]:
    """Every registered pass by name (sorted)."""
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = suggest(name, _REGISTRY) or f"known passes: {', '.join(sorted(_REGISTRY))}"
        raise PassError(f"unknown pass '{name}'", hint=hint) from None
