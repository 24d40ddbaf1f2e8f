"""Errors and source spans shared by every layer.

Every user-facing error is a :class:`PcirError`. When it carries a :class:`SourceSpan` it renders
as ``file:line:col: message``, then the source line and a caret under the fault, then an optional
hint; no parser-library internals and no Python traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceSpan:
    """A place in a source file (1-based line and column)."""

    file: str
    line: int
    col: int
    end_col: int | None = None
    source_line: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class PcirError(Exception):
    """Base class of every error pcir reports to a user."""

    kind = "error"

    def __init__(self, message: str, span: SourceSpan | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def render(self) -> str:
        """The full diagnostic: location, message, source line with caret, hint."""
        head = f"{self.span}: " if self.span is not None else ""
        lines = [f"{head}{self.kind}: {self.message}"]
        if self.span is not None and self.span.source_line is not None:
            src = self.span.source_line.rstrip("\n").expandtabs(1)
            lines.append(f"  {src}")
            width = 1
            if self.span.end_col is not None and self.span.end_col > self.span.col:
                width = self.span.end_col - self.span.col
            lines.append("  " + " " * (self.span.col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class IRParseError(PcirError):
    """Malformed `.pcir` text."""


class VerifyError(PcirError):
    """A circuit breaks a structural rule (acyclic, shapes, smoothness, decomposability...)."""


class PcSyntaxError(PcirError):
    """Malformed `.pc` source (syntax or semantics)."""


class PassError(PcirError):
    """A pass or pipeline spec is wrong, or a pass failed."""


class DataError(PcirError):
    """Data that does not fit the circuit (shape, domain, NaN, empty or truncated file)."""


class BackendError(PcirError):
    """The compiler backend could not lower or run a circuit."""


class CheckpointError(PcirError):
    """A checkpoint is missing, corrupt or does not match the circuit."""


def suggest(name: str, candidates) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
