"""Juice.jl ``.jpc`` (ProbabilisticCircuits.jl): one node a line, children before parents.

Grammar (as supported; tokens separated by blanks; ``c`` lines are comments)::

    jpc NODES
    L id vtree literal                 literal = +v / -v: indicator [x_v = 1] / [x_v = 0]
    I id vtree var value               indicator [x_var = value] (values from 0)
    C id vtree var logp_0 .. logp_k-1  categorical leaf (log-probabilities)
    B id vtree var N logp              binomial(N, exp(logp)); N = 1 is a Bernoulli leaf
    G id vtree var mean std            gaussian leaf
    P id vtree n child_1 .. child_n    product
    S id vtree n {child logw}*n        sum (log-weights)

Variables are numbered from 1 in the file (column ``v - 1`` here, named ``x{v-1}``); ids are any
distinct non-negative integers; the last node is the root. The vtree column is ignored on import
and written as 0.
"""

from __future__ import annotations

import math

from ...ir.circuit import Circuit
from ._common import FormatError, Lines
from .nodes import INPUT, PRODUCT, FlatCircuit, NodeGraph, fmt_float, log_text, to_circuit

HEADER = """c this file was written by pcir
c ids of jpc nodes start at 0; nodes appear bottom-up, children before parents
c
c file syntax:
c jpc count-of-jpc-nodes
c L id-of-jpc-node id-of-vtree literal
c I id-of-jpc-node id-of-vtree variable indicator-value
c C id-of-jpc-node id-of-vtree variable {log-probability}+
c B id-of-jpc-node id-of-vtree variable binomial-N log-binomial-P
c G id-of-jpc-node id-of-vtree variable gaussian-mu gaussian-sigma
c P id-of-product-jpc-node id-of-vtree number-of-children {child-id}+
c S id-of-sum-jpc-node id-of-vtree number-of-children {child-id log-weight}+
c"""

_KINDS = "LICBGPS"


def read(text: str, filename: str) -> Circuit:
    src = Lines(filename, text)
    g = NodeGraph(filename, src.lines)
    ids: dict[int, int] = {}
    header_line = 0
    declared = -1
    last = -1
    for lineno, line in src:
        toks = line.split()
        if not toks or toks[0] == "c" or toks[0].startswith("c"):
            continue
        head = toks[0]
        if head == "jpc":
            if header_line:
                raise src.error(lineno, "a second 'jpc' header line", 0)
            header_line = lineno
            declared = src.int_at(lineno, toks, 1, "the node count", 0)
            if len(toks) > 2:
                raise src.error(lineno, "unexpected text after the node count", 2)
            continue
        if head not in _KINDS or len(head) != 1:
            raise src.error(
                lineno,
                f"unknown line type '{head}'",
                0,
                "jpc lines start with c (comment), jpc (header), L, I, C, B, G, P or S",
            )
        if not header_line:
            raise src.error(lineno, "node line before the 'jpc NODES' header", 0)
        nid = src.int_at(lineno, toks, 1, "a node id", 0)
        if nid in ids:
            raise src.error(lineno, f"node id {nid} is defined twice", 1)
        src.int_at(lineno, toks, 2, "a vtree id")
        if head in "LICBG":
            last = _leaf(src, g, lineno, toks, head)
        else:
            n = src.int_at(lineno, toks, 3, "the number of children", 1)
            per = 1 if head == "P" else 2
            have = len(toks) - 4
            if have != per * n:
                if head == "P":
                    msg = f"P line says {n} children but lists {have}"
                else:
                    msg = f"S line says {n} children but has {have} numbers after the count (expected {2 * n}: a child and its log-weight each)"
                raise src.error(lineno, msg, 3)
            fast = _fast_children(toks, ids, per) if "_" not in line else None
            if fast is None:  # the slow path names the faulty token
                children = []
                for j in range(n):
                    t = 4 + per * j
                    cid = src.int_at(lineno, toks, t, "a child id", 0)
                    if cid not in ids:
                        raise src.error(
                            lineno,
                            f"child {cid} of node {nid} is not defined before it",
                            t,
                            "jpc nodes must come bottom-up: children before parents",
                        )
                    children.append(ids[cid])
                ws = (
                    [src.prob_from_log(lineno, toks, 5 + 2 * j, "the log-weight") for j in range(n)] if per == 2 else []
                )
            else:
                children, ws = fast
            if head == "P":
                last = g.product(children, lineno)
            else:
                last = g.sum(children, ws, lineno)
        ids[nid] = last
    if not header_line:
        raise FormatError("no 'jpc NODES' header: not a jpc file", src.span(1) if src.lines else None)
    if declared != len(ids):
        raise src.error(header_line, f"header says {declared} nodes but the file has {len(ids)}", 1)
    if last < 0:
        raise src.error(header_line, "the file has no nodes", 0)
    variables = g.infer_variables()
    return to_circuit(g, last, variables)


def _fast_children(toks: list[str], ids: dict[int, int], per: int) -> tuple[list[int], list[float]] | None:
    """Children (and weights) of a well-formed P/S line, or None to take the checking path."""
    try:
        children = [ids[int(t)] for t in toks[4::per]]
        lws = [float(t) for t in toks[5::2]] if per == 2 else []
    except (ValueError, KeyError):
        return None
    if not all(lw <= 700.0 for lw in lws):  # also false for nan
        return None
    return children, [math.exp(lw) for lw in lws]


def _leaf(src: Lines, g: NodeGraph, lineno: int, toks: list[str], head: str) -> int:
    if head == "L":
        lit = src.int_at(lineno, toks, 3, "a literal")
        if lit == 0:
            raise src.error(lineno, "literal 0 is not a variable (variables start at 1)", 3)
        _no_more(src, lineno, toks, 4)
        return g.indicator(abs(lit) - 1, 1 if lit > 0 else 0, lineno)
    var = src.int_at(lineno, toks, 3, "a variable", 1) - 1
    if head == "I":
        value = src.int_at(lineno, toks, 4, "an indicator value", 0)
        _no_more(src, lineno, toks, 5)
        return g.indicator(var, value, lineno)
    if head == "C":
        if len(toks) < 5:
            raise src.error(lineno, "C line has no log-probabilities", 4)
        probs = [src.prob_from_log(lineno, toks, t, "the log-probability") for t in range(4, len(toks))]
        total = sum(probs)
        if abs(total - 1.0) > 1e-4:
            raise src.error(lineno, f"categorical probabilities sum to {total:.6g}, not 1", 4)
        return g.categorical(var, probs, lineno)
    if head == "B":
        n = src.int_at(lineno, toks, 4, "the binomial N", 1)
        p = src.prob_from_log(lineno, toks, 5, "the binomial log-probability")
        if p > 1.0 + 1e-12:
            raise src.error(lineno, "the binomial log-probability must be <= 0", 5)
        _no_more(src, lineno, toks, 6)
        p = min(p, 1.0)
        if n == 1:
            return g.bernoulli(var, p, lineno)
        return g.binomial(var, n, p, lineno)
    mean = src.float_at(lineno, toks, 4, "the gaussian mean")
    std = src.float_at(lineno, toks, 5, "the gaussian standard deviation")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise src.error(lineno, "gaussian needs a finite mean and a finite standard deviation > 0", 4)
    _no_more(src, lineno, toks, 6)
    return g.gaussian(var, mean, std, lineno)


def _no_more(src: Lines, lineno: int, toks: list[str], n: int) -> None:
    if len(toks) > n:
        raise src.error(lineno, f"unexpected text after the {toks[0]} node", n)


def write(flat: FlatCircuit) -> str:
    out = [HEADER, f"jpc {len(flat.nodes)}"]
    for i, nd in enumerate(flat.nodes):
        if nd.kind == INPUT:
            fam, var, val = nd.leaf  # type: ignore[misc]
            v = var + 1
            dom = flat.variables[var].domain
            if fam == "indicator":
                if dom.is_discrete and dom.k == 2:
                    out.append(f"L {i} 0 {v if val == 1 else -v}")
                else:
                    out.append(f"I {i} 0 {v} {val}")
            elif fam == "categorical":
                out.append(f"C {i} 0 {v} " + " ".join(log_text(p) for p in val))
            elif fam == "bernoulli":
                out.append(f"B {i} 0 {v} 1 {log_text(val)}")
            elif fam == "binomial":
                out.append(f"B {i} 0 {v} {val[0]} {log_text(val[1])}")
            else:
                out.append(f"G {i} 0 {v} {fmt_float(val[0])} {fmt_float(val[1])}")
        elif nd.kind == PRODUCT:
            out.append(f"P {i} 0 {len(nd.children)} " + " ".join(map(str, nd.children)))
        else:
            pairs = " ".join(f"{c} {log_text(w)}" for c, w in zip(nd.children, nd.weights, strict=True))  # type: ignore[arg-type]
            out.append(f"S {i} 0 {len(nd.children)} {pairs}")
    return "\n".join(out) + "\n"
