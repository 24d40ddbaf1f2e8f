"""Canonical formatting of `.pc` source (``pcir fmt``), also used by the IR -> `.pc` emitter.

Layout: two-space indentation, one statement a line, ``{`` at the end of the opening line, spaces
around binary operators (none around ``..`` between plain operands), ``name=value`` keyword
arguments, at most one blank line in a row. A statement longer than :data:`WIDTH` columns breaks
its outermost call or list one argument a line. Comments are kept: a comment at the end of a
statement's last line stays there; other comments inside a multi-line statement move above it.
"""

from __future__ import annotations

import json
import re

from . import syntax as S

WIDTH = 100
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INDENT = "  "

# precedence levels (higher binds tighter)
P_TEST, P_OR, P_AND, P_NOT, P_CMP, P_RANGE, P_ARITH, P_TERM, P_UNARY, P_POW, P_POSTFIX, P_ATOM = range(12)


def _prec(e: S.Expr) -> int:
    if isinstance(e, S.Cond):
        return P_TEST
    if isinstance(e, S.BoolOp):
        return P_OR if e.op == "or" else P_AND
    if isinstance(e, S.Unary):
        return P_NOT if e.op == "not" else P_UNARY
    if isinstance(e, S.Compare):
        return P_CMP
    if isinstance(e, S.Range):
        return P_RANGE
    if isinstance(e, S.BinOp):
        if e.op in ("+", "-"):
            return P_ARITH
        if e.op == "**":
            return P_POW
        return P_TERM
    if isinstance(e, (S.Index, S.Call)):
        return P_POSTFIX
    return P_ATOM


def fmt_float(v: float) -> str:
    r = repr(float(v))
    if "e" in r or "." in r:
        return r
    return r + ".0"  # pragma: no cover - repr of a finite float always has '.' or 'e'


def expr(e: S.Expr, need: int = P_TEST) -> str:
    """The flat (one-line) text of an expression, parenthesised if it binds looser than ``need``."""
    s = _expr(e)
    return f"({s})" if _prec(e) < need else s


def _expr(e: S.Expr) -> str:
    if isinstance(e, S.Name):
        return e.id
    if isinstance(e, S.Int):
        return str(e.value)
    if isinstance(e, S.Float):
        return fmt_float(e.value)
    if isinstance(e, S.Str):
        return json.dumps(e.value, ensure_ascii=False)
    if isinstance(e, S.Bool):
        return "true" if e.value else "false"
    if isinstance(e, S.ListLit):
        return "[" + ", ".join(expr(x) for x in e.items) + "]"
    if isinstance(e, S.ListComp):
        s = f"[{expr(e.elt)} for {e.var} in {expr(e.iter, P_OR)}"
        if e.cond is not None:
            s += f" if {expr(e.cond, P_OR)}"
        return s + "]"
    if isinstance(e, S.Cond):
        return f"{expr(e.body, P_OR)} if {expr(e.test, P_OR)} else {expr(e.orelse, P_TEST)}"
    if isinstance(e, S.BoolOp):
        lv = P_OR if e.op == "or" else P_AND
        return f"{expr(e.left, lv)} {e.op} {expr(e.right, lv + 1)}"
    if isinstance(e, S.Unary):
        if e.op == "not":
            return f"not {expr(e.operand, P_NOT)}"
        return f"{e.op}{expr(e.operand, P_UNARY)}"
    if isinstance(e, S.Compare):
        return f"{expr(e.left, P_RANGE)} {e.op} {expr(e.right, P_RANGE)}"
    if isinstance(e, S.Range):
        lo, hi = expr(e.lo, P_ARITH), expr(e.hi, P_ARITH)
        if _prec(e.lo) >= P_UNARY and _prec(e.hi) >= P_POSTFIX and not (isinstance(e.lo, S.Unary)):
            return f"{lo}..{hi}"
        return f"{lo} .. {hi}"
    if isinstance(e, S.BinOp):
        if e.op in ("+", "-"):
            lv, rv = P_ARITH, P_TERM
        elif e.op == "**":
            lv, rv = P_POSTFIX, P_UNARY
        else:
            lv, rv = P_TERM, P_UNARY
        return f"{expr(e.left, lv)} {e.op} {expr(e.right, rv)}"
    if isinstance(e, S.Index):
        return f"{expr(e.obj, P_POSTFIX)}[" + ", ".join(_sub(s) for s in e.subs) + "]"
    if isinstance(e, S.Call):
        return f"{expr(e.func, P_POSTFIX)}(" + ", ".join(_args(e)) + ")"
    if isinstance(e, S.Slice):
        return _sub(e)
    raise TypeError(f"cannot format {type(e).__name__}")  # pragma: no cover


def attr_key(key: str) -> str:
    """An attribute key as written: a bare name when it is one, else a quoted string."""
    from .parser import KEYWORDS

    if _IDENT.match(key) and key not in KEYWORDS:
        return key
    return json.dumps(key, ensure_ascii=False)


def _sub(s: S.Expr) -> str:
    if isinstance(s, S.Slice):
        lo = "" if s.lo is None else expr(s.lo)
        hi = "" if s.hi is None else expr(s.hi)
        return f"{lo}:{hi}"
    return expr(s)


def _args(e: S.Call) -> list[str]:
    return [expr(a) for a in e.args] + [f"{k.name}={expr(k.value)}" for k in e.kwargs]


def expr_lines(e: S.Expr, indent: str, used: int, suffix: str = "") -> str:
    """``e`` laid out for a line that already holds ``used`` columns (breaking it if too long)."""
    flat = expr(e)
    if used + len(flat) + len(suffix) <= WIDTH:
        return flat
    inner = indent + INDENT
    if isinstance(e, S.Call):
        parts = [_broken(a, inner) for a in e.args] + [_broken(k.value, inner, f"{k.name}=") for k in e.kwargs]
        head = expr(e.func, P_POSTFIX) + "("
        return head + "\n" + ",\n".join(inner + p for p in parts) + "\n" + indent + ")"
    if isinstance(e, S.ListLit) and e.items:
        parts = [_broken(a, inner) for a in e.items]
        return "[\n" + ",\n".join(inner + p for p in parts) + "\n" + indent + "]"
    return flat


def _broken(e: S.Expr, indent: str, prefix: str = "") -> str:
    return prefix + expr_lines(e, indent, len(indent) + len(prefix) + 1)


# ---- statements ---------------------------------------------------------------------------------
class _Printer:
    def __init__(self, comments: tuple[S.Comment, ...] = ()):
        self.out: list[str] = []
        self.comments = sorted(comments, key=lambda c: (c.line, c.col))
        self.done: set[int] = set()  # indices of comments already printed
        self.trailing: dict[int, str] = {}  # output line index -> its trailing comment

    # comments ---------------------------------------------------------------
    def _take(self, lo: int, hi: int) -> list[S.Comment]:
        """Comments on source lines lo..hi (inclusive) not printed yet, marked printed."""
        got = []
        for i, c in enumerate(self.comments):
            if i not in self.done and lo <= c.line <= hi:
                self.done.add(i)
                got.append(c)
        return got

    def _line(self, indent: str, text: str) -> None:
        self.out.append((indent + text).rstrip())

    def _blank(self) -> None:
        if self.out and self.out[-1] != "":
            self.out.append("")

    def block(self, stmts, indent: str, lo: int, hi: int) -> None:
        """Print statements with the comments on source lines lo..hi (exclusive ends)."""
        prev_end = lo
        first = True
        for st in stmts:
            start = st.pos.line if st.pos is not None else prev_end
            lead = self._take(prev_end + 1, start - 1) if st.pos is not None else []
            cur = prev_end
            for c in lead:
                if not first and c.line > cur + 1:
                    self._blank()
                self._line(indent, c.text)
                cur = c.line
                first = False
            if not first and st.pos is not None and start > cur + 1:
                self._blank()
            self.stmt(st, indent)
            first = False
            prev_end = _end_line(st, start)
        tail = self._take(prev_end + 1, hi - 1)
        cur = prev_end
        for c in tail:
            if not first and c.line > cur + 1:
                self._blank()
            self._line(indent, c.text)
            cur = c.line
            first = False

    def _trail(self, line: int) -> str:
        cs = self._take(line, line)
        return ("  " + "  ".join(c.text for c in cs)) if cs else ""

    def aligned(self) -> list[str]:
        """The output with trailing comments of consecutive statements aligned (as gofmt does)."""
        out = list(self.out)
        idx = sorted(self.trailing)
        run: list[int] = []
        for i in idx + [-2]:
            if (
                run
                and i == run[-1] + 1
                and len(out[i]) - len(out[i].lstrip()) == len(out[run[0]]) - len(out[run[0]].lstrip())
            ):
                run.append(i)
                continue
            if run:
                col = max(len(out[j]) for j in run) + 2
                for j in run:
                    out[j] = out[j].ljust(col) + self.trailing[j]
            run = [i]
        return out

    def stmt(self, st: S.Stmt, indent: str) -> None:
        if isinstance(st, (S.For, S.If, S.Def)):
            self._block_stmt(st, indent)
            return
        lines = self.simple(st, indent).split("\n")
        lines[0] = indent + lines[0]
        p = st.pos  # type: ignore[attr-defined]
        if p is not None:
            # comments inside a multi-line statement go above it; one on its last line stays
            for c in self._take(p.line, p.end_line - 1):
                self._line(indent, c.text)
            trail = self._trail(p.end_line)
        else:
            trail = ""
        self.out.extend(ln.rstrip() for ln in lines)
        if trail:
            self.trailing[len(self.out) - 1] = trail.strip()

    def simple(self, st: S.Stmt, indent: str) -> str:
        used = len(indent)
        if isinstance(st, S.VarDecl):
            dims = "[" + ", ".join(expr(d) for d in st.dims) + "]" if st.dims else ""
            dom = st.domain + (f"({expr(st.domain_arg)})" if st.domain_arg is not None else "")
            return f"var {st.name}{dims}: {dom}"
        if isinstance(st, S.Assign):
            target = st.name + "".join("[" + ", ".join(expr(i) for i in sub) + "]" for sub in st.indices)
            suffix = (" with " + ", ".join(f"{attr_key(k.name)}={expr(k.value)}" for k in st.attrs)) if st.attrs else ""
            head = f"{target} = "
            return head + expr_lines(st.value, indent, used + len(head), suffix) + suffix
        if isinstance(st, S.Return):
            return "return " + expr_lines(st.value, indent, used + 7)
        if isinstance(st, S.Root):
            return "root " + ", ".join(expr(v) for v in st.values)
        if isinstance(st, S.ParamDecl):
            if st.value is None:
                return f"param {st.name}"
            head = f"param {st.name} = "
            return head + expr_lines(st.value, indent, used + len(head))
        if isinstance(st, S.AttrStmt):
            return f"attr {attr_key(st.name)} = {expr(st.value)}"
        if isinstance(st, S.Include):
            return "include " + json.dumps(st.path, ensure_ascii=False)
        if isinstance(st, S.Import):
            return "import " + json.dumps(st.path, ensure_ascii=False)
        raise TypeError(f"cannot format {type(st).__name__}")  # pragma: no cover

    def _block_stmt(self, st, indent: str) -> None:
        p = st.pos
        if isinstance(st, S.For):
            head = f"for {st.var} in {expr(st.iter)} {{"
        elif isinstance(st, S.Def):
            head = f"def {st.name}({', '.join(st.params)}) {{"
        else:
            head = f"if {expr(st.test)} {{"
        brace = st.brace_line or (p.line if p is not None else 0)
        if p is not None:
            # comments inside a header that spans lines (rare) go above it
            for c in self._take(p.line, brace - 1):
                self._line(indent, c.text)
            head += self._trail(brace)
        self._line(indent, head)
        inner = indent + INDENT
        if isinstance(st, S.If):
            self.block(st.body, inner, brace, st.body_end_line)
            node = st
            while node.orelse is not None:
                els = node.orelse
                if len(els) == 1 and isinstance(els[0], S.If):
                    nxt = els[0]
                    nb = nxt.brace_line
                    if nxt.pos is not None:
                        for c in self._take(node.body_end_line + 1, nb - 1):
                            self._line(indent, c.text)
                    self._line(indent, f"}} else if {expr(nxt.test)} {{" + (self._trail(nb) if nb else ""))
                    self.block(nxt.body, inner, nb, nxt.body_end_line)
                    node = nxt
                    continue
                eb = node.else_brace_line
                if eb:
                    for c in self._take(node.body_end_line + 1, eb - 1):
                        self._line(indent, c.text)
                self._line(indent, "} else {" + (self._trail(eb) if eb else ""))
                self.block(els, inner, eb, node.end_line)
                break
        else:
            self.block(st.body, inner, brace, st.end_line)
        self._line(indent, "}" + (self._trail(st.end_line) if st.end_line else ""))


def _end_line(st, default: int) -> int:
    if isinstance(st, (S.For, S.If, S.Def)) and st.end_line:
        return st.end_line
    p = getattr(st, "pos", None)
    return p.end_line if p is not None else default


def format_stmts(stmts, comments: tuple[S.Comment, ...] = ()) -> str:
    """Canonical text of a statement list (no trailing blank lines; ends with a newline)."""
    pr = _Printer(comments)
    pr.block(stmts, "", 0, 10**9)
    lines = pr.aligned()
    # any comment we failed to place (should not happen) is kept at the end rather than lost
    for i, c in enumerate(pr.comments):
        if i not in pr.done:
            lines.append(c.text)
    while lines and lines[-1] == "":
        lines.pop()
    while lines and lines[0] == "":
        lines.pop(0)
    return "\n".join(lines) + "\n" if lines else ""


def format_module(module: S.Module) -> str:
    """Canonical text of a parsed module, its comments included."""
    return format_stmts(module.body, module.comments)
