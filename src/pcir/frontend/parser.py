"""Parsing `.pc` text into the syntax tree of :mod:`pcir.frontend.syntax`.

lark (LALR, positions kept) does the parsing; a small post-lexer makes newlines inside brackets
insignificant and reports unbalanced brackets itself; lark's exceptions are turned into
:class:`PcSyntaxError` diagnostics in the user's terms (no lark internals reach the user).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..ir.diagnostics import PcirError, PcSyntaxError, SourceSpan, suggest
from . import syntax as S

GRAMMAR_PATH = Path(__file__).with_name("pc.lark")

KEYWORDS = (
    "and", "attr", "def", "else", "false", "for", "if", "import", "in", "include", "not", "or",
    "param", "return", "root", "true", "var", "with",
)  # fmt: skip

_OPEN = {"_LPAR": "(", "LSQB": "[", "LBRACE": "{"}
_CLOSE = {"RPAR": "(", "RSQB": "[", "RBRACE": "{"}
_CLOSE_CHAR = {"(": ")", "[": "]", "{": "}"}


class _PostLexer:
    """Drops newlines inside (...) and [...], after '{' and before 'else'; checks brackets."""

    always_accept = ("_NL",)

    def __init__(self, source: S.Source):
        self.source = source

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        self.stack: list[Token] = []  # open brackets, innermost last (read by error messages)
        stack = self.stack
        depth = 0  # of ( and [ only: braces delimit blocks, whose newlines count
        pending: Token | None = None  # a newline held back until we see the next token
        at_line_start = True
        for tok in stream:
            kind = tok.type
            if kind == "_NL":
                if depth == 0 and not at_line_start:
                    pending = tok
                continue
            if pending is not None:
                if kind != "_ELSE":  # '}' newline 'else {' continues the if statement
                    yield pending
                pending = None
            if kind in _OPEN:
                stack.append(tok)
                if kind != "LBRACE":
                    depth += 1
            elif kind in _CLOSE:
                want = _CLOSE[kind]
                if not stack:
                    raise PcSyntaxError(f"unmatched '{tok.value}'", _tok_span(self.source, tok), "nothing is open here")
                opener = stack[-1]
                have = _OPEN[opener.type]
                if have != want:
                    raise PcSyntaxError(
                        f"'{tok.value}' does not close '{have}'",
                        _tok_span(self.source, tok),
                        f"'{have}' opened at line {opener.line}, column {opener.column} needs '{_CLOSE_CHAR[have]}'",
                    )
                stack.pop()
                if have != "{":
                    depth -= 1
            at_line_start = kind == "LBRACE"
            yield tok
        if stack:
            opener = stack[-1]
            ch = _OPEN[opener.type]
            raise PcSyntaxError(
                f"'{ch}' is never closed",
                _tok_span(self.source, opener),
                f"add '{_CLOSE_CHAR[ch]}' to close it",
            )
        if pending is not None:
            yield pending


@functools.lru_cache(maxsize=1)
def _grammar() -> str:
    return GRAMMAR_PATH.read_text()


class _Parser:
    """One lark parser (building it takes ~0.1 s, so it is cached and reused)."""

    def __init__(self):
        self._post: _PostLexer | None = None
        self.comments: list[Token] = []
        self.lark = Lark(
            _grammar(),
            parser="lalr",
            lexer="basic",
            propagate_positions=True,
            maybe_placeholders=False,
            postlex=self,  # type: ignore[arg-type]
            lexer_callbacks={"COMMENT": self.comments.append},
        )
        self.terminals = {t.name: t for t in self.lark.terminals}

    # lark calls these on the postlex object
    always_accept = ("_NL",)

    def process(self, stream):
        assert self._post is not None
        return self._post.process(stream)

    def parse(self, source: S.Source, text: str):
        self._post = _PostLexer(source)
        self.comments.clear()
        tree = self.lark.parse(text)
        return tree, list(self.comments)


@functools.lru_cache(maxsize=1)
def _parser() -> _Parser:
    return _Parser()


def parse_module(text: str, filename: str = "<string>") -> S.Module:
    """Parse `.pc` text into a :class:`~pcir.frontend.syntax.Module` (syntax only, no lowering)."""
    source = S.Source.of(text, filename)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise PcSyntaxError("file contains a NUL byte (is it a binary file?)", SourceSpan(filename, line, 1))
    if not text.endswith("\n"):
        text += "\n"
    p = _parser()
    try:
        tree, comments = p.parse(source, text)
        body = _ToAst(source).transform(tree)
    except PcirError:
        raise
    except VisitError as e:
        if isinstance(e.orig_exc, PcirError):
            raise e.orig_exc from None
        raise
    except UnexpectedInput as e:
        raise _syntax_error(e, source, p) from None
    except RecursionError:
        raise PcSyntaxError("the program is nested too deeply", SourceSpan(filename, 1, 1)) from None
    cs = tuple(S.Comment(t.line, t.column, str(t)) for t in comments)
    return S.Module(tuple(body), source, cs)


# ---- syntax errors in the user's terms ---------------------------------------------------------
_READABLE = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "_NL": "end of line",
    "$END": "end of file",
    "COMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/', '//' or '%'",
    "_LPAR": "'('",
    "LBRACE": "'{'",
    "_ELSE": "'else'",
}
_EXPR_START = {"NAME", "INT", "FLOAT", "STRING", "LSQB", "_LPAR", "ADD_OP", "NOT", "TRUE", "FALSE"}
_OPERATORS = {"ADD_OP", "MUL_OP", "POW", "COMP_OP", "DOTDOT", "IN", "AND", "OR", "IF"}
_STMT_START = {"VAR", "FOR", "IF", "DEF", "RETURN", "ROOT", "PARAM", "ATTR", "INCLUDE", "IMPORT"}


def _tok_span(source: S.Source, tok: Token) -> SourceSpan:
    line = tok.line or 1
    col = tok.column or 1
    end = col + max(1, len(str(tok.value).split("\n")[0])) if tok.value else None
    return SourceSpan(source.name, line, col, end, source.line(line))


def _describe_token(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    if tok.type == "NAME":
        return f"name '{tok.value}'"
    if tok.type in ("INT", "FLOAT"):
        return f"number {tok.value}"
    if tok.type == "STRING":
        return f"string {tok.value}"
    if tok.value in KEYWORDS:
        return f"keyword '{tok.value}'"
    return f"'{tok.value}'"


def _readable_expected(expected: set[str], p: _Parser) -> list[str]:
    exp = set(expected)
    out: list[str] = []
    if "_NL" in exp:
        exp.discard("$END")
    if _STMT_START <= exp:
        out.append("a statement")
        exp -= _STMT_START | {"NAME"}
    if {"NAME", "INT", "LSQB"} <= exp:
        out.append("an expression")
        exp -= _EXPR_START
    if {"ADD_OP", "MUL_OP"} <= exp:
        out.append("an operator")
        exp -= _OPERATORS | {"LSQB", "_LPAR"}
    names = []
    for t in sorted(exp):
        if t in _READABLE:
            names.append(_READABLE[t])
            continue
        term = p.terminals.get(t)
        if term is not None and term.pattern.type == "str":
            names.append(f"'{term.pattern.value}'")
        else:
            names.append(t.lower())
    # punctuation first, then words: the short list reads best that way
    out.extend(sorted(set(names), key=lambda s: (not s.startswith("'"), s)))
    return out


def _join_or(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    if len(items) > 6:
        items = items[:6] + ["..."]
    return ", ".join(items[:-1]) + " or " + items[-1]


def _syntax_error(e: UnexpectedInput, source: S.Source, p: _Parser) -> PcSyntaxError:
    if isinstance(e, UnexpectedCharacters):
        line, col = e.line, e.column
        text = source.line(line) or ""
        ch = text[col - 1] if 0 < col <= len(text) else "?"
        hint = None
        if ch == "'":
            hint = 'strings are written in double quotes: "like this"'
        elif ch == "!":
            hint = "write 'not x' for negation, '!=' for inequality"
        elif ch == "&" or ch == "|":
            hint = "use 'and' / 'or'"
        elif ch == '"':
            return PcSyntaxError(
                "unterminated string", SourceSpan(source.name, line, col, None, text), 'close it with "'
            )
        shown = ch if ch.isprintable() else repr(ch)
        return PcSyntaxError(f"unexpected character '{shown}'", SourceSpan(source.name, line, col, col + 1, text), hint)
    if isinstance(e, UnexpectedEOF):
        n = len(source.lines)
        last = source.line(n) or ""
        return PcSyntaxError("unexpected end of file", SourceSpan(source.name, max(n, 1), len(last) + 1, None, last))
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    exp_terms = set(e.expected)
    if e.interactive_parser is not None:
        # LALR merges states, so e.expected can list tokens that are not valid here; ask the parser
        try:
            exp_terms = set(e.interactive_parser.accepts()) or exp_terms
        except Exception:  # noqa: BLE001 - best effort: fall back to lark's list
            pass
    expected = _readable_expected(exp_terms, p)
    if tok.type == "$END" or tok.line is None:
        n = len(source.lines)
        last = source.line(n) or ""
        span = SourceSpan(source.name, max(n, 1), len(last) + 1, None, last)
    elif tok.type == "_NL":
        text = source.line(tok.line) or ""
        col = len(text.rstrip()) + 1
        # a comment at the end of the line is not where the statement stopped
        m = re.search(r"\s*#.*$", text)
        if m:
            col = len(text[: m.start()].rstrip()) + 1
        span = SourceSpan(source.name, tok.line, col, None, text)
    else:
        span = _tok_span(source, tok)
    what = _describe_token(tok)
    if tok.type == "_NL":
        msg = "statement is incomplete at the end of the line"
    else:
        msg = f"unexpected {what}"
    if expected:
        msg += f"; expected {_join_or(expected)}"
    hint = _syntax_hint(tok, exp_terms, span)
    post = p._post
    opened = [t for t in getattr(post, "stack", []) if t.type != "LBRACE"]
    if opened and tok.line is not None and opened[-1].line < tok.line:
        o = opened[-1]
        hint = f"'{o.value}' opened at line {o.line}, column {o.column} is still open"
    return PcSyntaxError(msg, span, hint)


def _syntax_hint(tok: Token, expected: set[str], span: SourceSpan) -> str | None:
    if tok.type == "_ELSE":
        return "'else' must follow the '}' of an 'if' block"
    if tok.value == "=" and "EQUAL" not in expected:
        return "use '==' to compare"
    if tok.type == "LBRACE" and "LBRACE" not in expected:
        return "a block '{' belongs after 'for ... in ...', 'if ...', 'else' or 'def ...(...)'"
    line = span.source_line or ""
    m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", line)
    if m and m.group(1) not in KEYWORDS and tok.column != m.start(1) + 1:
        kw = suggest(m.group(1), KEYWORDS)
        if kw:
            return kw
    if tok.type == "NAME" and tok.value in ("elif", "elseif"):
        return "write 'else if'"
    if tok.type == "NAME" and "EQUAL" in expected:
        return "a statement starts with a keyword ('var', 'for', 'root', ...) or 'NAME = ...'"
    return None


# ---- parse tree -> syntax tree --------------------------------------------------------------------
def _unquote(tok: Token) -> str:
    try:
        return json.loads(str(tok))
    except ValueError:
        # JSON is stricter than our lexer about escapes (e.g. "\q"); keep the text verbatim then
        return str(tok)[1:-1]


class _Block(list):
    start_line: int = 0
    end_line: int = 0


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, source: S.Source):
        super().__init__()
        self.source = source

    def _pos(self, meta) -> S.Pos | None:
        if getattr(meta, "empty", True):
            return None
        return S.Pos(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tpos(self, tok: Token) -> S.Pos:
        return S.Pos(self.source, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)

    @staticmethod
    def _plain(children):
        return [c for c in children if not (isinstance(c, Token) and c.type in ("LSQB", "RSQB", "RPAR", "COLON"))]

    # statements
    def start(self, meta, ch):
        return [c for c in ch if isinstance(c, S.Stmt)]

    def block(self, meta, ch):
        b = _Block(c for c in ch if isinstance(c, S.Stmt))
        if not getattr(meta, "empty", True):
            b.start_line, b.end_line = meta.line, meta.end_line
        return b

    def subs(self, meta, ch):
        return tuple(self._plain(ch))

    def var_stmt(self, meta, ch):
        name = ch[0]
        rest = ch[1:]
        dims: tuple = ()
        if rest and isinstance(rest[0], tuple):
            dims = rest[0]
            rest = rest[1:]
        dom = rest[0]
        arg = rest[1] if len(rest) > 1 else None
        return S.VarDecl(str(name), dims, str(dom), arg, self._pos(meta), self._tpos(dom))

    def assign(self, meta, ch):
        name = ch[0]
        idx = tuple(c for c in ch[1:] if isinstance(c, tuple))
        rest = [c for c in ch[1:] if not isinstance(c, tuple)]
        value = rest[0]
        attrs = tuple(rest[1]) if len(rest) > 1 else ()
        tpos = self._tpos(name)
        return S.Assign(str(name), idx, value, attrs, self._pos(meta), tpos)

    def with_clause(self, meta, ch):
        return list(ch)

    def for_stmt(self, meta, ch):
        var, it, body = ch
        return S.For(str(var), it, tuple(body), self._pos(meta), body.end_line, body.start_line)

    def if_stmt(self, meta, ch):
        test, body = ch[0], ch[1]
        orelse = None
        else_brace = 0
        if len(ch) > 2:
            o = ch[2]
            if isinstance(o, S.If):
                orelse = (o,)
            else:
                orelse = tuple(o)
                else_brace = o.start_line
        end = meta.end_line if not getattr(meta, "empty", True) else 0
        return S.If(test, tuple(body), orelse, self._pos(meta), body.end_line, end, body.start_line, else_brace)

    def params(self, meta, ch):
        return tuple(str(c) for c in ch)

    def def_stmt(self, meta, ch):
        name = ch[0]
        params = ch[1] if len(ch) == 3 else ()
        body = ch[-1]
        return S.Def(str(name), params, tuple(body), self._pos(meta), body.end_line, body.start_line)

    def return_stmt(self, meta, ch):
        return S.Return(ch[0], self._pos(meta))

    def root_stmt(self, meta, ch):
        return S.Root(tuple(ch), self._pos(meta))

    def param_stmt(self, meta, ch):
        return S.ParamDecl(str(ch[0]), ch[1] if len(ch) > 1 else None, self._pos(meta))

    def attr_stmt(self, meta, ch):
        key = _unquote(ch[0]) if ch[0].type == "STRING" else str(ch[0])
        return S.AttrStmt(key, ch[1], self._pos(meta))

    def include_stmt(self, meta, ch):
        return S.Include(_unquote(ch[0]), self._pos(meta))

    def import_stmt(self, meta, ch):
        return S.Import(_unquote(ch[0]), self._pos(meta))

    # expressions
    def cond(self, meta, ch):
        return S.Cond(ch[0], ch[1], ch[2], self._pos(meta))

    def or_(self, meta, ch):
        return S.BoolOp("or", ch[0], ch[1], self._pos(meta))

    def and_(self, meta, ch):
        return S.BoolOp("and", ch[0], ch[1], self._pos(meta))

    def not_(self, meta, ch):
        return S.Unary("not", ch[1], self._pos(meta))

    def compare(self, meta, ch):
        return S.Compare(str(ch[1]), ch[0], ch[2], self._pos(meta))

    def contains(self, meta, ch):
        return S.Compare("in", ch[0], ch[1], self._pos(meta))

    def range_lit(self, meta, ch):
        return S.Range(ch[0], ch[2], self._pos(meta))

    def binop(self, meta, ch):
        return S.BinOp(str(ch[1]), ch[0], ch[2], self._pos(meta), self._tpos(ch[1]))

    def unary(self, meta, ch):
        return S.Unary(str(ch[0]), ch[1], self._pos(meta))

    def index(self, meta, ch):
        ch = self._plain(ch)
        return S.Index(ch[0], tuple(ch[1:]), self._pos(meta))

    def slice(self, meta, ch):
        lo = hi = None
        seen_colon = False
        for c in ch:
            if isinstance(c, Token) and c.type == "COLON":
                seen_colon = True
            elif seen_colon:
                hi = c
            else:
                lo = c
        return S.Slice(lo, hi, self._pos(meta))

    def args(self, meta, ch):
        return list(ch)

    def call(self, meta, ch):
        ch = self._plain(ch)
        func = ch[0]
        items = ch[1] if len(ch) > 1 else []
        args = tuple(a for a in items if not isinstance(a, S.KwArg))
        kwargs = tuple(a for a in items if isinstance(a, S.KwArg))
        return S.Call(func, args, kwargs, self._pos(meta))

    def attr_item(self, meta, ch):
        key = _unquote(ch[0]) if ch[0].type == "STRING" else str(ch[0])
        return S.KwArg(key, ch[1], self._tpos(ch[0]))

    def kwarg(self, meta, ch):
        return S.KwArg(str(ch[0]), ch[1], self._tpos(ch[0]))

    def name(self, meta, ch):
        return S.Name(str(ch[0]), self._tpos(ch[0]))

    def int(self, meta, ch):
        return S.Int(int(ch[0]), self._tpos(ch[0]))

    def float(self, meta, ch):
        return S.Float(float(ch[0]), self._tpos(ch[0]))

    def string(self, meta, ch):
        return S.Str(_unquote(ch[0]), self._tpos(ch[0]))

    def true(self, meta, ch):
        return S.Bool(True, self._tpos(ch[0]))

    def false(self, meta, ch):
        return S.Bool(False, self._tpos(ch[0]))

    def list(self, meta, ch):
        return S.ListLit(tuple(self._plain(ch)), self._pos(meta))

    def listcomp(self, meta, ch):
        ch = self._plain(ch)
        elt, var, it = ch[0], ch[1], ch[2]
        cond = ch[3] if len(ch) > 3 else None
        return S.ListComp(elt, str(var), it, cond, self._pos(meta))
