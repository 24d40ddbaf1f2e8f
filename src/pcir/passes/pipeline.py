"""Pipeline specs and the pass manager.

A pipeline is a spec string, ``collapse-nodes,partition-blocks{max-block=64},group-layers``:
pass names separated by commas, each optionally followed by ``{option=value,...}``. Whitespace
around names, options and values is ignored. :func:`parse_pipeline` turns it into pass objects
(errors name the column and suggest close names); :func:`run_pipeline` runs it with instruments
(print after each pass, numbered dumps, verification between passes, timings, statistics).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, get_args, get_origin

from ..ir.circuit import Circuit
from ..ir.diagnostics import PassError, PcirError, SourceSpan, VerifyError, suggest
from ..ir.printer import print_ir
from ..ir.verify import verify
from .base import Pass, PassStats, convert_option, format_option_value, get_pass, registered_passes
from .stats import circuit_stats, format_stats_table

DEFAULT_PIPELINE = "collapse-nodes,partition-blocks,group-layers"
"""The pipeline ``pcir.compile`` and ``pcir opt`` use when none is given."""

PIPELINE_FILE = "<pipeline>"


def _span(spec: str, start: int, end: int) -> SourceSpan:
    return SourceSpan(PIPELINE_FILE, 1, start + 1, max(end, start + 1) + 1, spec)


class _Scanner:
    def __init__(self, spec: str):
        self.spec = spec
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.spec) and self.spec[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.spec[self.pos] if self.pos < len(self.spec) else ""

    def error(self, msg: str, start: int | None = None, end: int | None = None, hint: str | None = None):
        s = self.pos if start is None else start
        e = s + 1 if end is None else end
        return PassError(msg, _span(self.spec, s, e), hint)

    def take_until(self, stops: str) -> tuple[str, int, int]:
        """Raw text up to one of ``stops`` (or the end), stripped, with its span."""
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.spec) and self.spec[self.pos] not in stops:
            self.pos += 1
        raw = self.spec[start : self.pos]
        stripped = raw.rstrip()
        return stripped, start, start + len(stripped)


def parse_pipeline(spec: str | Sequence[Pass]) -> list[Pass]:
    """Pass objects for a spec string (or a list of passes, returned as a list).

    The whole spec ``"default"`` stands for :data:`DEFAULT_PIPELINE`.
    Raises :class:`PassError` with the column of the fault: unknown pass or option (with a
    'did you mean' hint), a value of the wrong type, a missing brace.
    """
    if not isinstance(spec, str):
        passes = list(spec)
        for p in passes:
            if not isinstance(p, Pass):
                raise PassError(f"not a pass: {p!r}")
        return passes
    if spec.strip() == "default":
        spec = DEFAULT_PIPELINE
    sc = _Scanner(spec)
    passes: list[Pass] = []
    if not spec.strip():
        return passes
    while True:
        sc.skip_ws()
        n0 = sc.pos
        while sc.pos < len(spec) and (spec[sc.pos].isalnum() or spec[sc.pos] in "-_"):
            sc.pos += 1
        name, n1 = spec[n0 : sc.pos], sc.pos
        if not name:
            c = sc.peek()
            raise sc.error("expected a pass name" + (f", got '{c}'" if c else ""), n0)
        if name not in registered_passes():
            known = registered_passes()
            hint = suggest(name, known) or f"known passes: {', '.join(known)}"
            raise sc.error(f"unknown pass '{name}'", n0, n1, hint)
        cls = get_pass(name)
        kwargs: dict[str, Any] = {}
        value_spans: dict[str, tuple[int, int]] = {}
        if sc.peek() == "{":
            brace = sc.pos
            sc.pos += 1
            kwargs = _parse_options(sc, cls, brace, value_spans)
        try:
            passes.append(cls(**kwargs))
        except PassError as e:
            where = next((v for k, v in value_spans.items() if f"option '{k}'" in e.message), (n0, n1))
            raise PassError(e.message, _span(spec, *where), e.hint) from None
        c = sc.peek()
        if c == "":
            return passes
        if c != ",":
            raise sc.error(f"expected ',' between passes, got '{c}'")
        sc.pos += 1
        if sc.peek() == "":
            raise sc.error("expected a pass name after ','")


def _parse_options(
    sc: _Scanner, cls: type[Pass], brace: int, value_spans: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    options = cls.options()
    types = cls.option_types()
    kwargs: dict[str, Any] = {}
    if sc.peek() == "}":
        sc.pos += 1
        return kwargs
    while True:
        key, k0, k1 = sc.take_until("=,{}")
        if not key and sc.peek() == "":
            raise sc.error(f"unclosed '{{' of pass '{cls.name}'", brace)
        if not key:
            raise sc.error("expected an option name", k0)
        if key not in options:
            hint = suggest(key, options) or (
                f"options of '{cls.name}': {', '.join(options)}" if options else f"'{cls.name}' takes no options"
            )
            raise sc.error(f"unknown option '{key}' of pass '{cls.name}'", k0, k1, hint)
        if sc.peek() != "=":
            raise sc.error(f"expected '=' after option '{key}'")
        sc.pos += 1
        value, v0, v1 = sc.take_until(",{}")
        if not value:
            raise sc.error(f"option '{key}' has no value", v0)
        fname = options[key].name
        if fname in kwargs:
            raise sc.error(f"option '{key}' given twice", k0, k1)
        value_spans[key] = (v0, v1)
        try:
            kwargs[fname] = convert_option(cls.name, key, types[key], value)
        except PassError as e:
            raise sc.error(e.message, v0, v1, e.hint) from None
        c = sc.peek()
        if c == ",":
            sc.pos += 1
            continue
        if c == "}":
            sc.pos += 1
            return kwargs
        if c == "":
            raise sc.error(f"unclosed '{{' of pass '{cls.name}'", brace)
        raise sc.error(f"expected ',' or '}}' after the value of '{key}', got '{c}'")


def pipeline_spec(passes: Sequence[Pass]) -> str:
    """The canonical spec text of a list of passes (inverse of :func:`parse_pipeline`)."""
    return ",".join(p.spec() for p in passes)


# ---- running ---------------------------------------------------------------------------------


@dataclass
class PassRecord:
    """What one pass did: its spec, wall time, its own statistics and the circuit's after it."""

    index: int
    spec: str
    seconds: float
    pass_stats: PassStats
    stats: dict[str, Any]


@dataclass
class PipelineReport:
    """Per-pass records plus the statistics of the input circuit."""

    spec: str
    input_stats: dict[str, Any]
    records: list[PassRecord] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    @property
    def final_stats(self) -> dict[str, Any]:
        return self.records[-1].stats if self.records else self.input_stats

    def format(self, *, timings: bool = True) -> str:
        """A human-readable table: circuit statistics after each pass, then pass statistics."""
        cols = [("input", self.input_stats)] + [(f"{r.index}:{r.spec.split('{')[0]}", r.stats) for r in self.records]
        out = [format_stats_table(cols)]
        for r in self.records:
            line = f"pass {r.index} {r.spec}"
            if timings:
                line += f": {r.seconds * 1000:.1f} ms"
            out.append(line)
            for k, v in r.pass_stats.items():
                out.append(f"    {k}: {_fmt(v)}")
        if timings:
            out.append(f"total: {self.total_seconds * 1000:.1f} ms")
        return "\n".join(out) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _dump_name(index: int, name: str) -> str:
    return f"{index:03d}-{name}.pcir"


def run_pipeline(
    circuit: Circuit,
    spec: str | Sequence[Pass] = DEFAULT_PIPELINE,
    *,
    print_after_all: bool = False,
    dump_dir: str | Path | None = None,
    verify_each: bool = True,
    timings: bool = True,
    stream: TextIO | None = None,
) -> tuple[Circuit, PipelineReport]:
    """Run the passes of ``spec`` on ``circuit``; returns the result and a :class:`PipelineReport`.

    * ``print_after_all``: write the IR after every pass to ``stream`` (default stderr).
    * ``dump_dir``: write ``000-input.pcir``, ``001-<pass>.pcir``, ... there.
    * ``verify_each``: verify the input and the output of every pass; a pass that breaks a rule
      raises :class:`PassError` naming the pass.
    * ``timings``: measure each pass (``report.records[i].seconds``); off gives zeros.

    The result carries the circuit attribute ``pipeline``: the specs run so far (appended to an
    existing ``pipeline`` attribute, so a circuit can go through ``pcir opt`` twice).
    """
    passes = parse_pipeline(spec)
    text = pipeline_spec(passes)
    out = stream if stream is not None else sys.stderr
    ddir = Path(dump_dir) if dump_dir is not None else None
    if ddir is not None:
        ddir.mkdir(parents=True, exist_ok=True)
        (ddir / _dump_name(0, "input")).write_text(print_ir(circuit))
    if verify_each:
        verify(circuit)
    report = PipelineReport(text, circuit_stats(circuit))
    prior = str(circuit.attr("pipeline") or "")
    done: list[str] = [prior] if prior else []
    current = circuit
    for i, p in enumerate(passes, start=1):
        t0 = time.perf_counter()
        try:
            result, pstats = p.apply_with_stats(current)
        except PcirError as e:
            if isinstance(e, PassError) and e.message.startswith(f"pass '{p.name}'"):
                raise
            raise PassError(f"pass '{p.name}' failed: {e.message}", e.span, e.hint) from e
        seconds = time.perf_counter() - t0 if timings else 0.0
        if not isinstance(result, Circuit):
            raise PassError(f"pass '{p.name}' returned {type(result).__name__}, not a Circuit")
        done.append(p.spec())
        attrs = dict(result.attrs)
        attrs["pipeline"] = ",".join(done)
        result = result.replace(attrs=tuple(sorted(attrs.items())))
        if verify_each:
            try:
                verify(result)
            except VerifyError as e:
                raise PassError(f"pass '{p.name}' produced an invalid circuit: {e.message}", e.span) from e
        report.records.append(PassRecord(i, p.spec(), seconds, dict(pstats), circuit_stats(result)))
        if print_after_all:
            out.write(f"// ----- IR after {p.spec()} ({i}/{len(passes)}) -----\n")
            out.write(print_ir(result, summarize=True))
            out.flush()
        if ddir is not None:
            (ddir / _dump_name(i, p.name)).write_text(print_ir(result))
        current = result
    return current, report


def describe_passes() -> str:
    """One paragraph per registered pass: name, summary, options with their types and defaults."""
    out = []
    for name, cls in registered_passes().items():
        out.append(f"{name}: {cls.summary}")
        types = cls.option_types()
        for opt, f in cls.options().items():
            typ = types[opt]
            tname = (
                " | ".join(map(str, get_args(typ)))
                if get_origin(typ) is Literal
                else getattr(typ, "__name__", str(typ))
            )
            default = "" if f.default is dataclasses.MISSING else f" = {format_option_value(f.default)}"
            out.append(f"    {opt}: {tname}{default}")
    return "\n".join(out) + "\n"
