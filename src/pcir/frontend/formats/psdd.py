"""``.psdd`` (probabilistic sentential decision diagrams, as written by the PSDD package, LearnPSDD
and Juice.jl) and its ``.vtree``.

PSDD grammar (as supported; ``c`` lines are comments)::

    psdd [COUNT]                       COUNT is not checked (files in the wild disagree with it)
    L id vtree literal                 literal +v / -v: indicator [x_v = 1] / [x_v = 0]
    T id vtree var logp                "true" node with a parameter: Bernoulli, P(x_var = 1) = exp(logp)
    D id vtree n {prime sub logw}*n    decision node: sum over n elements prime * sub

The last node is the root. Each element ``prime * sub`` becomes a product node (an element that
occurs in several decision nodes is one shared product); each decision node a sum node with
weights exp(logw). Literals become indicator leaves on binary variables, ``T`` nodes Bernoulli
leaves.

Vtree grammar::

    vtree COUNT                        the number of vtree nodes (checked)
    L id var                           leaf on variable var (from 1)
    I id left right                    internal node; children before parents, the last is the root

With a vtree, the circuit has one variable per vtree leaf (so variables the PSDD never mentions
are still columns), literal/T nodes are checked against their vtree leaf, decision nodes keep
their vtree id as the sum-group attribute ``vtree`` and the vtree itself is kept as the circuit
attribute ``psdd.vtree`` (its lines joined by ``;``), so an export writes both files back.

Smoothness: a decision node whose elements do not all mention the same variables is imported as
it is (its sum group gets ``waive="smooth"``), exactly the function PSDD tools compute; we do not
add "true" leaves, because no normalised pcir leaf is 1 for every value *and* when marginalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...ir.circuit import Circuit
from ._common import FormatError, Lines
from .nodes import INPUT, PRODUCT, FlatCircuit, NodeGraph, fmt_float, log_text, to_circuit

VTREE_ATTR = "psdd.vtree"

HEADER = """c this file was written by pcir
c ids of psdd nodes start at 0
c psdd nodes appear bottom-up, children before parents
c
c file syntax:
c psdd count-of-sdd-nodes
c L id-of-literal-sdd-node id-of-vtree literal
c T id-of-trueNode-sdd-node id-of-vtree variable log(litProb)
c D id-of-decomposition-sdd-node id-of-vtree number-of-elements {id-of-prime id-of-sub log(elementProb)}*
c"""

VTREE_HEADER = """c this file was written by pcir
c ids of vtree nodes start at 0
c ids of variables start at 1
c vtree nodes appear bottom-up, children before parents
c
c file syntax:
c vtree number-of-nodes-in-vtree
c L id-of-leaf-vtree-node id-of-variable
c I id-of-internal-vtree-node id-of-left-child id-of-right-child
c"""


@dataclass
class Vtree:
    """A parsed vtree: node id -> ("L", var) (var from 1) or ("I", left, right); ``lines`` in
    file order (node lines only)."""

    nodes: dict[int, tuple]
    lines: list[str]
    root: int

    def leaf_of(self) -> dict[int, int]:
        """variable (from 1) -> its vtree leaf id."""
        return {t[1]: vid for vid, t in self.nodes.items() if t[0] == "L"}

    @property
    def num_vars(self) -> int:
        vs = [t[1] for t in self.nodes.values() if t[0] == "L"]
        return max(vs) if vs else 0

    def attr(self) -> str:
        return ";".join(self.lines)


def read_vtree(text: str, filename: str) -> Vtree:
    src = Lines(filename, text)
    nodes: dict[int, tuple] = {}
    lines: list[str] = []
    header = 0
    declared = -1
    last = -1
    seen_vars: dict[int, int] = {}
    for lineno, line in src:
        toks = line.split()
        if not toks or toks[0].startswith("c"):
            continue
        head = toks[0]
        if head == "vtree":
            if header:
                raise src.error(lineno, "a second 'vtree' header line", 0)
            header = lineno
            declared = src.int_at(lineno, toks, 1, "the vtree node count", 0)
            continue
        if head not in ("L", "I"):
            raise src.error(lineno, f"unknown vtree line type '{head}'", 0, "vtree lines are c, vtree, L or I")
        if not header:
            raise src.error(lineno, "vtree node line before the 'vtree COUNT' header", 0)
        vid = src.int_at(lineno, toks, 1, "a vtree node id", 0)
        if vid in nodes:
            raise src.error(lineno, f"vtree node {vid} is defined twice", 1)
        if head == "L":
            var = src.int_at(lineno, toks, 2, "a variable", 1)
            if var in seen_vars:
                raise src.error(lineno, f"variable {var} has a second vtree leaf", 2)
            seen_vars[var] = vid
            nodes[vid] = ("L", var)
            n_tok = 3
        else:
            kids = []
            for t in (2, 3):
                c = src.int_at(lineno, toks, t, "a vtree child id", 0)
                if c not in nodes:
                    raise src.error(lineno, f"vtree child {c} is not defined before node {vid}", t)
                kids.append(c)
            nodes[vid] = ("I", kids[0], kids[1])
            n_tok = 4
        if len(toks) > n_tok:
            raise src.error(lineno, "unexpected text after the vtree node", n_tok)
        lines.append(" ".join(toks))
        last = vid
    if not header:
        raise FormatError("no 'vtree COUNT' header: not a vtree file", src.span(1) if src.lines else None)
    if declared != len(nodes):
        raise src.error(header, f"header says {declared} vtree nodes but the file has {len(nodes)}", 1)
    if last < 0:
        raise src.error(header, "the vtree has no nodes", 0)
    return Vtree(nodes, lines, last)


def read(text: str, filename: str, vtree: Vtree | None = None) -> Circuit:
    src = Lines(filename, text)
    g = NodeGraph(filename, src.lines)
    ids: dict[int, int] = {}
    leaf_of = vtree.leaf_of() if vtree is not None else {}
    header = 0
    last = -1
    for lineno, line in src:
        toks = line.split()
        if not toks or toks[0].startswith("c"):
            continue
        head = toks[0]
        if head == "psdd":
            if header:
                raise src.error(lineno, "a second 'psdd' header line", 0)
            header = lineno
            if len(toks) > 1:
                src.int_at(lineno, toks, 1, "the node count", 0)
            if len(toks) > 2:
                raise src.error(lineno, "unexpected text after the node count", 2)
            continue
        if head not in ("L", "T", "D"):
            hint = "psdd lines start with c (comment), psdd (header), L, T or D"
            if head == "F":
                hint = "a PSDD has no false nodes (an SDD 'F' node): drop the elements that use it"
            raise src.error(lineno, f"unknown line type '{head}'", 0, hint)
        if not header:
            raise src.error(lineno, "node line before the 'psdd' header", 0)
        nid = src.int_at(lineno, toks, 1, "a node id", 0)
        if nid in ids:
            raise src.error(lineno, f"node id {nid} is defined twice", 1)
        vt = src.int_at(lineno, toks, 2, "a vtree id", 0)
        if vtree is not None and vt not in vtree.nodes:
            raise src.error(lineno, f"vtree node {vt} is not in the vtree", 2)
        if head in ("L", "T"):
            if head == "L":
                lit = src.int_at(lineno, toks, 3, "a literal")
                if lit == 0:
                    raise src.error(lineno, "literal 0 is not a variable (variables start at 1)", 3)
                var = abs(lit)
                n_tok = 4
            else:
                var = src.int_at(lineno, toks, 3, "a variable", 1)
                n_tok = 5
            if vtree is not None and vtree.nodes[vt] != ("L", var):
                where = leaf_of.get(var)
                raise src.error(
                    lineno,
                    f"variable {var} is not at vtree node {vt}"
                    + (f" (its vtree leaf is {where})" if where is not None else " (it is not in the vtree)"),
                    2,
                )
            if len(toks) > n_tok:
                raise src.error(lineno, f"unexpected text after the {head} node", n_tok)
            if head == "L":
                last = g.indicator(var - 1, 1 if lit > 0 else 0, lineno, vt)
            else:
                p = src.prob_from_log(lineno, toks, 4, "the log-probability")
                if p > 1.0 + 1e-12:
                    raise src.error(lineno, "the log-probability of a T node must be <= 0", 4)
                last = g.bernoulli(var - 1, min(p, 1.0), lineno, vt)
        else:
            n = src.int_at(lineno, toks, 3, "the number of elements", 1)
            have = len(toks) - 4
            if have != 3 * n:
                raise src.error(
                    lineno,
                    f"D line says {n} elements but has {have} numbers after the count"
                    f" (expected {3 * n}: prime, sub and log-weight each)",
                    3,
                )
            fast = _fast_elements(toks, ids) if "_" not in line else None
            if fast is not None:
                pairs, ws = fast
            else:  # the slow path names the faulty token
                pairs, ws = [], []
                for j in range(n):
                    pair = []
                    for t in (4 + 3 * j, 5 + 3 * j):
                        cid = src.int_at(lineno, toks, t, "a prime/sub id", 0)
                        if cid not in ids:
                            raise src.error(
                                lineno,
                                f"element node {cid} of node {nid} is not defined before it",
                                t,
                                "psdd nodes must come bottom-up: children before parents",
                            )
                        pair.append(ids[cid])
                    pairs.append(pair)
                    ws.append(src.prob_from_log(lineno, toks, 6 + 3 * j, "the element log-weight"))
            elems = [g.product(pair, lineno, dedupe=True) for pair in pairs]
            last = g.sum(elems, ws, lineno, vt)
        ids[nid] = last
    if not header:
        raise FormatError("no 'psdd' header: not a psdd file", src.span(1) if src.lines else None)
    if last < 0:
        raise src.error(header, "the file has no nodes", 0)
    num_vars = vtree.num_vars if vtree is not None else None
    if num_vars is not None and g.var_use and max(g.var_use) + 1 > num_vars:
        raise FormatError(f"the psdd uses variable {max(g.var_use) + 1}, which the vtree lacks")
    variables = g.infer_variables(num_vars)
    for v in variables:
        if v.domain.k != 2:
            raise FormatError(f"psdd variables are binary; {v.name} is {v.domain}")
    attrs = {VTREE_ATTR: vtree.attr()} if vtree is not None else {}
    return to_circuit(g, last, variables, attrs=attrs, sum_attrs_from_vtree=True)


def _fast_elements(toks: list[str], ids: dict[int, int]) -> tuple[list, list[float]] | None:
    """The (prime, sub) node pairs and weights of a well-formed D line, or None (then the
    token-by-token path finds and reports the fault)."""
    try:
        primes = [ids[int(t)] for t in toks[4::3]]
        subs = [ids[int(t)] for t in toks[5::3]]
        lws = [float(t) for t in toks[6::3]]
    except (ValueError, KeyError):
        return None
    if not all(lw <= 700.0 for lw in lws):  # also false for nan
        return None
    return list(zip(primes, subs, strict=True)), [math.exp(lw) for lw in lws]


# ------------------------------------------------------------------------------------------------
# Writing


def write(flat: FlatCircuit) -> tuple[str, str | None]:
    """The ``.psdd`` text and, when the circuit keeps one, the ``.vtree`` text."""
    vt_text = flat.attrs.get(VTREE_ATTR)
    leaf_of: dict[int, int] = {}
    vtree_lines: list[str] = []
    if isinstance(vt_text, str) and vt_text:
        vtree_lines = [s.strip() for s in vt_text.split(";") if s.strip()]
        for s in vtree_lines:
            t = s.split()
            if t[0] == "L":
                leaf_of[int(t[2]) - 1] = int(t[1])
    for v in flat.variables:
        if not (v.domain.is_discrete and v.domain.k == 2):
            raise FormatError(
                f"psdd cannot express variable '{v.name}' of domain {v.domain}: psdd variables are binary"
            )

    nodes = flat.nodes
    out: list[str] = []
    pid: dict[int, int] = {}  # flat node -> psdd id
    next_id = 0

    def emit(line_fmt: str) -> int:
        nonlocal next_id
        i = next_id
        next_id += 1
        out.append(line_fmt.format(id=i))
        return i

    def group_of(i: int) -> str:
        return nodes[i].group

    def need(i: int) -> int:
        """The psdd id of flat node i, emitting a wrapper D node for a product."""
        if i in pid:
            return pid[i]
        nd = nodes[i]
        assert nd.kind == PRODUCT
        prime, sub = element(i)
        pid[i] = emit(f"D {{id}} 0 1 {prime} {sub} 0.0")
        return pid[i]

    def element(i: int) -> tuple[int, int]:
        """(prime, sub) psdd ids of product node i; longer products nest to the right."""
        ch = nodes[i].children
        if len(ch) < 2:
            raise FormatError(
                f"psdd cannot express group '{group_of(i)}': a product of {len(ch)} child"
                " (PSDD elements are prime * sub pairs)"
            )
        prime = need(ch[0])
        if len(ch) == 2:
            return prime, need(ch[1])
        # prime * (c1 * (c2 * ...)): the inner products are one-element decision nodes
        acc = emit(f"D {{id}} 0 1 {need(ch[-2])} {need(ch[-1])} 0.0")
        for c in reversed(ch[1:-2]):
            acc = emit(f"D {{id}} 0 1 {need(c)} {acc} 0.0")
        return prime, acc

    for i, nd in enumerate(nodes):
        if nd.kind == INPUT:
            fam, var, val = nd.leaf  # type: ignore[misc]
            vt = leaf_of.get(var, 0)
            if fam == "indicator":
                lit = var + 1 if val == 1 else -(var + 1)
                pid[i] = emit(f"L {{id}} {vt} {lit}")
            elif fam == "bernoulli":
                pid[i] = emit(f"T {{id}} {vt} {var + 1} {log_text(val)}")
            else:
                raise FormatError(
                    f"psdd cannot express group '{nd.group}': {fam} leaves"
                    " (psdd has literals and Bernoulli 'T' nodes only)"
                )
        elif nd.kind == PRODUCT:
            continue  # emitted as elements of their parents (or wrapped when used elsewhere)
        else:
            if any(nodes[c].kind != PRODUCT for c in nd.children):
                t = _as_true_node(nodes, nd, leaf_of)
                if t is None:
                    bad = next(c for c in nd.children if nodes[c].kind != PRODUCT)
                    raise FormatError(
                        f"psdd cannot express group '{nd.group}': a sum node with a child that is not a product"
                        f" (group '{nodes[bad].group}'); PSDD decision nodes sum over prime * sub elements"
                    )
                pid[i] = emit(t)
                continue
            elems = []
            for c, w in zip(nd.children, nd.weights, strict=True):  # type: ignore[arg-type]
                prime, sub = element(c)
                elems.append(f"{prime} {sub} {log_text(w)}")
            vt = _vtree_attr(flat, nd.group)
            pid[i] = emit(f"D {{id}} {vt} {len(elems)} " + " ".join(elems))
    root = len(nodes) - 1
    if nodes[root].kind == PRODUCT:
        need(root)
    text = HEADER + f"\npsdd {next_id}\n" + "\n".join(out) + "\n"
    vt_out = None
    if vtree_lines:
        vt_out = VTREE_HEADER + f"\nvtree {len(vtree_lines)}\n" + "\n".join(vtree_lines) + "\n"
    return text, vt_out


def _as_true_node(nodes, nd, leaf_of) -> str | None:
    """A sum of exactly the two literals of one variable with weights p, 1 - p is a T node."""
    if len(nd.children) != 2:
        return None
    leaves = [nodes[c].leaf for c in nd.children]
    if any(lf is None or lf[0] != "indicator" for lf in leaves) or leaves[0][1] != leaves[1][1]:
        return None
    by_val = {lf[2]: w for lf, w in zip(leaves, nd.weights, strict=True)}
    if set(by_val) != {0, 1} or not math.isclose(by_val[0] + by_val[1], 1.0, rel_tol=0, abs_tol=1e-12):
        return None
    var = leaves[0][1]
    return f"T {{id}} {leaf_of.get(var, 0)} {var + 1} {log_text(by_val[1])}"


def _vtree_attr(flat: FlatCircuit, group: str) -> int:
    v = flat.group_attrs.get(group, {}).get("vtree", 0)
    return int(v) if isinstance(v, int) else 0


__all__ = ["VTREE_ATTR", "Vtree", "read", "read_vtree", "write", "fmt_float"]
