"""The IR as a Graphviz DOT graph (written by hand: no pydot dependency).

One box per group, edges from children to parents (drawn bottom-up). A label shows the kind,
name, units and pattern, the scope (abbreviated), and the annotations the passes add: block size
``bs``, ``layer``, ``fuse``, fan-in ``part`` and buffer ``slot``. Groups of one layer share a rank
when the circuit is layered, so a layer reads as one row.
"""

from __future__ import annotations

import json

from ..ir.circuit import Circuit, InputGroup, ProductGroup, SumGroup

_FILL = {"input": "#dbeafe", "product": "#fef9c3", "sum": "#dcfce7"}


def abbreviate_scope(circuit: Circuit, scope: frozenset[int], max_ranges: int = 3) -> str:
    """``x0-x3,x7`` for few ranges, ``x0…x783 (784 vars)`` otherwise."""
    if not scope:
        return "{}"
    vs = sorted(scope)
    names = [v.name for v in circuit.variables]
    ranges: list[tuple[int, int]] = []
    for v in vs:
        if ranges and ranges[-1][1] == v - 1:
            ranges[-1] = (ranges[-1][0], v)
        else:
            ranges.append((v, v))
    if len(ranges) <= max_ranges:
        return ",".join(names[a] if a == b else f"{names[a]}-{names[b]}" for a, b in ranges)
    return f"{names[vs[0]]}…{names[vs[-1]]} ({len(vs)} vars)"


def _label(circuit: Circuit, g, scope: frozenset[int]) -> str:
    if isinstance(g, InputGroup):
        head = f"input {g.name}"
        body = [f"{g.units} x {g.dist}"]
    elif isinstance(g, ProductGroup):
        head = f"product {g.name}"
        body = [f"{g.units} units, {g.pattern}"]
    else:
        assert isinstance(g, SumGroup)
        head = f"sum {g.name}"
        pat = g.pattern if g.pattern != "block" else f"block {g.block[0]}x{g.block[1]}"  # type: ignore[index]
        body = [f"{g.units} units, {pat}"]
    body.append("scope " + abbreviate_scope(circuit, scope))
    notes = [f"{k}={g.attr(k)}" for k in ("bs", "layer", "part", "fuse", "slot") if g.attr(k) is not None]
    if notes:
        body.append(" ".join(notes))
    return "\\n".join([head] + body)


def _q(s: str) -> str:
    # DOT strings are C-like; json's escaping is a subset that dot accepts, but keep our "\n"
    return json.dumps(s, ensure_ascii=False).replace("\\\\n", "\\n")


def to_dot(circuit: Circuit, title: str | None = None) -> str:
    """The DOT text of ``circuit`` (deterministic: groups in topological order)."""
    scope = circuit.scope()
    roots = set(circuit.roots)
    out = [
        "digraph pcir {",
        "  rankdir=BT;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
    ]
    if title:
        out.append(f"  label={_q(title)}; labelloc=t;")
    layers: dict[int, list[str]] = {}
    for g in circuit:
        style = '"rounded,filled,dashed"' if g.attr("fuse") == "fused" else '"rounded,filled"'
        extra = ", penwidth=2" if g.name in roots else ""
        out.append(
            f'  {_q(g.name)} [label={_q(_label(circuit, g, scope[g.name]))}, fillcolor="{_FILL[g.kind]}", style={style}{extra}];'
        )
        layer = g.attr("layer")
        if isinstance(layer, int):
            layers.setdefault(layer, []).append(g.name)
    for g in circuit:
        for c in dict.fromkeys(g.children):
            out.append(f"  {_q(c)} -> {_q(g.name)};")
    for layer in sorted(layers):
        names = " ".join(_q(n) for n in layers[layer])
        out.append(f"  {{ rank=same; {names} }}  // layer {layer}")
    out.append("}")
    return "\n".join(out) + "\n"
