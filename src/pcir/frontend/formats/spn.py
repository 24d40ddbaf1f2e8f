"""Juice.jl ``.spn`` (a dialect of Libra's arithmetic-circuit text): nodes numbered by position.

Grammar (as supported)::

    (k_0 k_1 ... k_n-1)        the domain size of every variable (Juice.jl writes only 2s)
    v var value                indicator [x_var = value]; variables and values from 0
    * child_1 .. child_n       product of earlier nodes (0-based line positions)
    + {child logw}+            sum with log-weights
    EOF                        end marker (required; nothing may follow)

The first node line is node 0; the last node is the root. Domains larger than 2 are accepted
(Juice.jl itself reads binary ones only).
"""

from __future__ import annotations

from ...ir.circuit import Circuit
from ...ir.distributions import Domain
from ._common import FormatError, Lines
from .nodes import INPUT, PRODUCT, FlatCircuit, NodeGraph, log_text, to_circuit


def read(text: str, filename: str) -> Circuit:
    src = Lines(filename, text)
    g = NodeGraph(filename, src.lines)
    pos: list[int] = []  # node position -> graph id
    domains: list[int] | None = None
    domain_line = 0
    ended = 0
    for lineno, line in src:
        toks = line.split()
        if not toks:
            continue
        if ended:
            raise src.error(lineno, "text after the EOF line", 0)
        if domains is None:
            domains = _domains(src, lineno, line)
            domain_line = lineno
            continue
        head = toks[0]
        if head == "EOF":
            if len(toks) > 1:
                raise src.error(lineno, "unexpected text after EOF", 1)
            ended = lineno
            continue
        if head == "v":
            var = src.int_at(lineno, toks, 1, "a variable", 0)
            if var >= len(domains):
                raise src.error(lineno, f"variable {var} is out of range (the header declares {len(domains)})", 1)
            val = src.int_at(lineno, toks, 2, "a value", 0)
            if val >= domains[var]:
                raise src.error(lineno, f"value {val} is outside variable {var}'s domain of {domains[var]} values", 2)
            if len(toks) > 3:
                raise src.error(lineno, "unexpected text after the indicator", 3)
            pos.append(g.indicator(var, val, lineno))
        elif head in ("*", "+"):
            per = 1 if head == "*" else 2
            if len(toks) == 1:
                raise src.error(lineno, f"'{head}' node without children", 0)
            if (len(toks) - 1) % per:
                raise src.error(lineno, "a sum lists (child, log-weight) pairs; the last pair is incomplete", len(toks))
            children = []
            for t in range(1, len(toks), per):
                c = src.int_at(lineno, toks, t, "a child position", 0)
                if c >= len(pos):
                    raise src.error(
                        lineno,
                        f"child {c} of node {len(pos)} is not defined before it",
                        t,
                        "spn nodes must come bottom-up: children before parents",
                    )
                children.append(pos[c])
            if head == "*":
                pos.append(g.product(children, lineno))
            else:
                ws = [src.prob_from_log(lineno, toks, t, "the log-weight") for t in range(2, len(toks), 2)]
                pos.append(g.sum(children, ws, lineno))
        else:
            raise src.error(lineno, f"unknown line type '{head}'", 0, "spn node lines start with v, * or +")
    if domains is None:
        raise FormatError("empty file: expected the domain line '(2 2 ...)'", src.span(1) if src.lines else None)
    if not ended:
        raise FormatError("the file ends without the EOF line (truncated?)", src.span(len(src.lines)))
    if not pos:
        raise src.error(domain_line, "the file has no nodes", 0)
    variables = g.infer_variables(len(domains))
    for v, k in enumerate(domains):
        variables[v] = type(variables[v])(variables[v].name, Domain.categorical(k))
    return to_circuit(g, pos[-1], variables)


def _domains(src: Lines, lineno: int, line: str) -> list[int]:
    s = line.strip()
    if not (s.startswith("(") and s.endswith(")")):
        raise src.error(lineno, "expected the domain line '(k_0 k_1 ...)' first", 0)
    toks = s[1:-1].split()
    out = []
    for j, t in enumerate(toks):
        try:
            k = int(t)
        except ValueError:
            k = 0
        if k < 1:
            raise src.error(lineno, f"domain size '{t}' is not a positive integer", j)
        out.append(k)
    if not out:
        raise src.error(lineno, "the domain line declares no variables", 0)
    return out


def write(flat: FlatCircuit) -> str:
    doms = []
    for v in flat.variables:
        if not v.domain.is_discrete:
            raise FormatError(
                f"spn cannot express variable '{v.name}' of domain {v.domain}: spn variables are discrete"
            )
        doms.append(str(v.domain.k))
    out = ["(" + " ".join(doms) + ")"]
    for nd in flat.nodes:
        if nd.kind == INPUT:
            fam, var, val = nd.leaf  # type: ignore[misc]
            if fam != "indicator":
                raise FormatError(f"spn cannot express group '{nd.group}': {fam} leaves (spn has indicators only)")
            out.append(f"v {var} {val}")
        elif nd.kind == PRODUCT:
            out.append("* " + " ".join(map(str, nd.children)))
        else:
            out.append("+ " + " ".join(f"{c} {log_text(w)}" for c, w in zip(nd.children, nd.weights, strict=True)))  # type: ignore[arg-type]
    out.append("EOF")
    return "\n".join(out) + "\n"
