"""SPFlow's text ("equation") format, as written by ``spn_to_str_equation`` and read by
``str_to_spn``: one nested expression (line breaks and blanks are free).

Grammar (as supported)::

    node     := leaf | "(" sum ")" | "(" product ")"
    sum      := NUMBER "*" node ("+" NUMBER "*" node)*      weights (not logs)
    product  := node ("*" node)*                            one node in parentheses is just it
    leaf     := "Categorical(" FEATURE "|" "p" "=" "[" NUMBER ("," NUMBER)* "]" ")"
              | "Bernoulli(" FEATURE "|" "p" "=" NUMBER ")"
              | "Gaussian(" FEATURE "|" "mean" "=" NUMBER ";" "stdev" "=" NUMBER ")"
    FEATURE  := "V" INDEX | a name

Features named ``V<i>`` are column ``i`` (named ``x<i>``); other names get columns in order of first
appearance and keep their names. ``np.float64(x)`` is read as ``x`` (numpy 2 prints lists so).

The format is a tree: exporting a DAG writes each shared sub-circuit once per use (refused when
the text would exceed ``MAX_EXPORT_NODES`` nodes); importing gives a tree.
"""

from __future__ import annotations

import bisect
import math
import re

from ...ir.circuit import Circuit
from ._common import FormatError, span_at
from .nodes import INPUT, PRODUCT, FlatCircuit, NodeGraph, categorical_row, fmt_float, to_circuit

MAX_EXPORT_NODES = 1_000_000

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      |(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.]))
      |(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      |(?P<punct>[()*+|;=\[\],])
      |(?P<bad>[^\s()*+|;=\[\],]+|.)""",
    re.VERBOSE | re.DOTALL,
)
_VNAME = re.compile(r"V(\d+)$")
LEAVES = ("Categorical", "Bernoulli", "Gaussian")


class _Tokens:
    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.kinds: list[str] = []
        self.vals: list[str] = []
        self.offs: list[int] = []
        for m in _TOKEN.finditer(text):
            k = m.lastgroup
            if k == "ws":
                continue
            self.kinds.append(k)  # type: ignore[arg-type]
            self.vals.append(m.group())
            self.offs.append(m.start())
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.i = 0

    def error(self, i: int, message: str, hint: str | None = None) -> FormatError:
        off = self.offs[i] if i < len(self.offs) else len(self.text.rstrip())
        width = len(self.vals[i]) if i < len(self.vals) else 1
        ln = bisect.bisect_right(self.line_starts, off) - 1
        start = self.line_starts[ln]
        end = self.text.find("\n", start)
        line = self.text[start : end if end >= 0 else len(self.text)]
        col = off - start + 1
        if len(line) > 100 and hint is None:
            hint = f"at character {col} of line {ln + 1}"
        return FormatError(message, span_at(self.filename, ln + 1, line, col, col + width), hint)

    def line_of(self, i: int) -> int:
        return bisect.bisect_right(self.line_starts, self.offs[i]) if i < len(self.offs) else len(self.line_starts)

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        j = self.i + ahead
        if j < len(self.kinds):
            return self.kinds[j], self.vals[j]
        return "eof", ""

    def take(self) -> tuple[str, str]:
        t = self.peek()
        self.i += 1
        return t

    def expect(self, val: str, what: str | None = None) -> None:
        k, v = self.take()
        if v != val or k == "eof":
            got = "the end of the text" if k == "eof" else f"'{v}'"
            raise self.error(self.i - 1, f"expected '{val}'{' ' + what if what else ''}, got {got}")

    def number(self, what: str) -> float:
        k, v = self.take()
        if k == "name" and v in ("np.float64", "numpy.float64", "float"):
            self.expect("(")
            x = self.number(what)
            self.expect(")")
            return x
        if k != "num":
            if k == "bad" and v[0] in "0123456789+-.":
                raise self.error(self.i - 1, f"{what} '{v}' is not a number")
            got = "the end of the text" if k == "eof" else f"'{v}'"
            raise self.error(self.i - 1, f"expected {what} (a number), got {got}")
        return float(v)


class _Frame:
    __slots__ = ("kind", "children", "weights")

    def __init__(self, kind: str):
        self.kind = kind
        self.children: list[int] = []
        self.weights: list[float] = []


def read(text: str, filename: str) -> Circuit:
    tk = _Tokens(text, filename)
    g = NodeGraph(filename, text.splitlines())
    features: dict[str, int] = {}
    if not tk.kinds:
        raise FormatError("empty file: expected an SPFlow expression", span_at(filename, 1, "", 1))
    stack: list[_Frame] = []
    value = -1
    expect_node = True
    while True:
        if expect_node:
            k, v = tk.peek()
            if v == "(" and k == "punct":
                tk.take()
                k2, v2 = tk.peek()
                if (
                    k2 == "num"
                    or (k2 == "name" and v2 in ("np.float64", "numpy.float64"))
                    or (k2 == "bad" and v2[0] in "0123456789+-.")
                ):
                    f = _Frame("sum")
                    f.weights.append(tk.number("a sum weight"))
                    tk.expect("*", "between a weight and its child")
                elif v2 == ")":
                    raise tk.error(tk.i, "empty parentheses: a node needs children")
                else:
                    f = _Frame("product")
                stack.append(f)
                continue
            if k == "name":
                value = _leaf(tk, g, features)
                expect_node = False
                continue
            if k == "bad" and v[0] in "0123456789+-.":
                raise tk.error(tk.i, f"'{v}' is not a number")
            got = "the end of the text" if k == "eof" else f"'{v}'"
            raise tk.error(tk.i, f"expected a node (a leaf or '('), got {got}")
        if not stack:
            k, v = tk.peek()
            if k != "eof":
                raise tk.error(tk.i, f"unexpected '{v}' after the end of the expression")
            break
        top = stack[-1]
        top.children.append(value)
        k, v = tk.take()
        if top.kind == "product" and v == "*":
            expect_node = True
        elif top.kind == "sum" and v == "+":
            top.weights.append(tk.number("a sum weight"))
            tk.expect("*", "between a weight and its child")
            expect_node = True
        elif v == ")" and k == "punct":
            stack.pop()
            if top.kind == "product":
                value = top.children[0] if len(top.children) == 1 else g.product(top.children)
            else:
                for w in top.weights:
                    if not (math.isfinite(w) and w >= 0):
                        raise tk.error(tk.i - 1, f"sum weight {w!r} must be finite and non-negative")
                value = g.sum(top.children, top.weights)
        else:
            want = "'*' or ')'" if top.kind == "product" else "'+' or ')'"
            got = "the end of the text (unbalanced parentheses?)" if k == "eof" else f"'{v}'"
            raise tk.error(tk.i - 1, f"expected {want}, got {got}")
    names = None
    if features and not all(_VNAME.match(f) for f in features):
        names = list(features)
    variables = g.infer_variables(names=names) if names else g.infer_variables()
    return to_circuit(g, value, variables)


def _leaf(tk: _Tokens, g: NodeGraph, features: dict[str, int]) -> int:
    start = tk.i
    _, fam = tk.take()
    if fam not in LEAVES:
        raise tk.error(start, f"unsupported SPFlow leaf '{fam}'", f"supported leaves: {', '.join(LEAVES)}")
    tk.expect("(", f"after {fam}")
    k, feat = tk.take()
    if k not in ("name", "num"):
        raise tk.error(tk.i - 1, f"expected a feature name, got '{feat}'")
    var = _feature(tk, features, feat)
    tk.expect("|", "after the feature name")
    params: dict[str, object] = {}
    while tk.peek()[1] != ")":
        if params:
            tk.expect(";", "between parameters")
        k, pname = tk.take()
        if k != "name":
            raise tk.error(tk.i - 1, f"expected a parameter name, got '{pname}'")
        if pname in params:
            raise tk.error(tk.i - 1, f"parameter '{pname}' given twice")
        tk.expect("=", f"after '{pname}'")
        if tk.peek()[1] == "[":
            tk.take()
            vals = [tk.number("a probability")]
            while tk.peek()[1] == ",":
                tk.take()
                vals.append(tk.number("a probability"))
            tk.expect("]", "closing the list")
            params[pname] = vals
        else:
            params[pname] = tk.number(f"the value of '{pname}'")
        if tk.peek()[0] == "eof":
            break
    tk.expect(")", f"closing {fam}")
    want = {"Categorical": ("p",), "Bernoulli": ("p",), "Gaussian": ("mean", "stdev")}[fam]
    if set(params) != set(want):
        extra = sorted(set(params) - set(want))
        missing = [p for p in want if p not in params]
        msg = f"{fam} takes parameters {', '.join(want)}"
        msg += f"; unknown {', '.join(extra)}" if extra else ""
        msg += f"; missing {', '.join(missing)}" if missing else ""
        raise tk.error(start, msg)
    line = tk.line_of(start)
    if fam == "Categorical":
        p = params["p"]
        if not isinstance(p, list):
            raise tk.error(start, "Categorical p must be a list of probabilities")
        if any(not (math.isfinite(x) and x >= 0) for x in p) or abs(sum(p) - 1.0) > 1e-4:
            raise tk.error(start, f"Categorical p must be non-negative and sum to 1 (sums to {sum(p):.6g})")
        return g.categorical(var, p, line)
    if fam == "Bernoulli":
        p = params["p"]
        if not isinstance(p, float) or not 0.0 <= p <= 1.0:
            raise tk.error(start, "Bernoulli p must be a number in [0, 1]")
        return g.bernoulli(var, p, line)
    mean, sd = params["mean"], params["stdev"]
    if (
        not isinstance(mean, float)
        or not isinstance(sd, float)
        or not (math.isfinite(mean) and math.isfinite(sd) and sd > 0)
    ):
        raise tk.error(start, "Gaussian needs a finite mean and a finite stdev > 0")
    return g.gaussian(var, mean, sd, line)


def _feature(tk: _Tokens, features: dict[str, int], name: str) -> int:
    if name in features:
        return features[name]
    m = _VNAME.match(name)
    if features and (m is None) != (_VNAME.match(next(iter(features))) is None):
        raise tk.error(
            tk.i - 1,
            f"feature '{name}' mixes with {'V<i>' if m is None else 'named'} features",
            "use either V0, V1, ... or names throughout",
        )
    idx = int(m.group(1)) if m else len(features)
    features[name] = idx
    return idx


# ------------------------------------------------------------------------------------------------
# Writing


def write(flat: FlatCircuit) -> str:
    nodes = flat.nodes
    # the tree the text spells out can be exponentially larger than the DAG: count first
    size = [0] * len(nodes)
    for i, nd in enumerate(nodes):
        size[i] = 1 + sum(size[c] for c in nd.children)
    if size[-1] > MAX_EXPORT_NODES:
        raise FormatError(
            f"spflow text is a tree: this circuit's shared sub-circuits would expand to {size[-1]} nodes"
            f" (more than {MAX_EXPORT_NODES})",
            hint="export it as jpc, which keeps sharing",
        )
    text: list[str] = [""] * len(nodes)
    for i, nd in enumerate(nodes):
        if nd.kind == INPUT:
            text[i] = _leaf_text(flat, nd)
        elif nd.kind == PRODUCT:
            text[i] = "(" + " * ".join(text[c] for c in nd.children) + ")"
        else:
            text[i] = (
                "("
                + " + ".join(f"{fmt_float(w)}*({text[c]})" for c, w in zip(nd.children, nd.weights, strict=True))
                + ")"
            )  # type: ignore[arg-type]
    return text[-1] + "\n"


def _leaf_text(flat: FlatCircuit, nd) -> str:
    fam, var, val = nd.leaf
    feat = f"V{var}"
    if fam == "categorical":
        return f"Categorical({feat}|p=[{', '.join(fmt_float(p) for p in val)}])"
    if fam == "bernoulli":
        return f"Bernoulli({feat}|p={fmt_float(val)})"
    if fam == "gaussian":
        return f"Gaussian({feat}|mean={fmt_float(val[0])};stdev={fmt_float(val[1])})"
    if fam == "binomial":  # exactly a categorical over the variable's values
        row = categorical_row(nd.leaf, flat.variables[var].domain.k)
        return f"Categorical({feat}|p=[{', '.join(fmt_float(p) for p in row)}])"
    dom = flat.variables[var].domain
    # an indicator is a one-hot categorical (the same for observed and for missing values)
    p = ["0.0"] * dom.k
    p[val] = "1.0"
    return f"Categorical({feat}|p=[{', '.join(p)}])"
