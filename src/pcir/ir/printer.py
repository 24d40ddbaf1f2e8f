"""Canonical text form (``.pcir``) of a circuit. :func:`pcir.ir.parser.parse_ir` is its inverse.

Layout (one item a line, deterministic: groups in topological order, attributes sorted)::

    pcir 1
    attr block_hint = 32
    var x0 : binary
    var x1 : categorical(3)
    param in0.w : f64[2,3] = [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]
    param s0.w : f64[1,2] = init(random, seed=7)
    param big.w : f32[512,512] = b64z"eJzt..."
    %in0 = input x1 units=2 dist=categorical(k=3) params=in0.w
    %p0 = product(%in0, %in1) aligned units=2
    %p1 = product(%in0, %in1) explicit units=2 edges=[[0, 1], [1, 0]]
    %s0 = sum(%p0, %p1) units=1 dense params=s0.w {layer=3}
    %s1 = sum(%p0) units=2 block block=(1, 1) mask=[[true, false], [false, true]] params=s1.w
    %s2 = sum(%p0) units=2 explicit edges=[[0, 0], [1, 1]] params=s2.w
    root %s0

Arrays of at most ``INLINE_LIMIT`` elements are written as nested lists (floats with ``repr``,
exact); larger ones as ``b64z"..."``: base64 of the zlib-compressed little-endian bytes, also exact.
``summarize=True`` prints large arrays as ``<f64[512,512] sha1=...>`` for reading only (such a dump
does not parse back). Names (of variables, parameters, groups and attribute keys) that are not bare
identifiers are written as JSON strings. The full grammar is in docs/ir.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib

import numpy as np

from .circuit import Attrs, AttrValue, Circuit, InputGroup, Param, ProductGroup, SumGroup
from .distributions import Dist

INLINE_LIMIT = 64
FORMAT_VERSION = 1
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]\-]*$")
_DTYPE_OF = {
    np.dtype(np.float64): "f64",
    np.dtype(np.float32): "f32",
    np.dtype(np.int64): "i64",
    np.dtype(np.bool_): "bool",
}


def fmt_name(name: str) -> str:
    return name if _BARE.match(name) else json.dumps(name)


def fmt_scalar(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if np.isnan(f):
            return "nan"
        if np.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(fmt_scalar(x) for x in v) + ")"
    raise TypeError(f"cannot print attribute value {v!r}")


def fmt_array(a: np.ndarray, summarize: bool = False) -> str:
    a = np.asarray(a)
    if a.size <= INLINE_LIMIT:
        if a.ndim == 0:
            return fmt_scalar(a.item())
        return _nested(a)
    dt = _DTYPE_OF[a.dtype]
    if summarize:
        sha = hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]
        return f"<{dt}[{','.join(map(str, a.shape))}] sha1={sha}>"
    raw = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"))).tobytes()
    return 'b64z"' + base64.b64encode(zlib.compress(raw, 6)).decode("ascii") + '"'


def _nested(a: np.ndarray) -> str:
    if a.ndim == 1:
        return "[" + ", ".join(fmt_scalar(x) for x in a.tolist()) + "]"
    return "[" + ", ".join(_nested(row) for row in a) + "]"


def fmt_attrs(attrs: Attrs) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{fmt_name(k)}={fmt_scalar(v)}" for k, v in attrs) + "}"


def fmt_dist(d: Dist) -> str:
    if not d.args:
        return d.kind
    return d.kind + "(" + ", ".join(f"{k}={fmt_scalar(v)}" for k, v in d.args) + ")"


def fmt_param(name: str, p: Param, summarize: bool = False) -> str:
    head = f"param {fmt_name(name)} : {p.dtype}[{','.join(map(str, p.shape))}] = "
    if p.value is None:
        return head + f"init({p.init}, seed={p.seed})"
    return head + fmt_array(p.value, summarize)


def print_ir(circuit: Circuit, summarize: bool = False) -> str:
    """The canonical ``.pcir`` text of ``circuit`` (ends with a newline)."""
    out = [f"pcir {FORMAT_VERSION}"]
    for k, v in circuit.attrs:
        out.append(f"attr {fmt_name(k)} = {fmt_scalar(v)}")
    for var in circuit.variables:
        out.append(f"var {fmt_name(var.name)} : {var.domain}")
    for pname, p in circuit.params.items():
        out.append(fmt_param(pname, p, summarize))
    for g in circuit:
        out.append(fmt_group(circuit, g, summarize))
    for r in circuit.roots:
        out.append(f"root %{fmt_name(r)}")
    return "\n".join(out) + "\n"


def fmt_group(circuit: Circuit, g, summarize: bool = False) -> str:
    lhs = f"%{fmt_name(g.name)} = "
    if isinstance(g, InputGroup):
        var = circuit.variables[g.var].name if 0 <= g.var < circuit.num_vars else f"#{g.var}"
        body = f"input {fmt_name(var)} units={g.units} dist={fmt_dist(g.dist)} params={fmt_name(g.params)}"
    elif isinstance(g, ProductGroup):
        ch = ", ".join("%" + fmt_name(c) for c in g.children)
        body = f"product({ch}) {g.pattern} units={g.units}"
        if g.pattern == "explicit":
            assert g.edges is not None
            body += f" edges={fmt_array(g.edges, summarize)}"
    else:
        assert isinstance(g, SumGroup)
        ch = ", ".join("%" + fmt_name(c) for c in g.children)
        body = f"sum({ch}) units={g.units} {g.pattern}"
        if g.pattern == "block":
            assert g.block is not None and g.mask is not None
            body += f" block={fmt_scalar(tuple(g.block))} mask={fmt_array(g.mask, summarize)}"
        elif g.pattern == "explicit":
            assert g.edges is not None
            body += f" edges={fmt_array(g.edges, summarize)}"
        body += f" params={fmt_name(g.params)}"
    return lhs + body + fmt_attrs(g.attrs)


def attr_value_ok(v: AttrValue) -> bool:
    try:
        fmt_scalar(v)
        return True
    except TypeError:
        return False
