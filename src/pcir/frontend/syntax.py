"""The syntax tree of a `.pc` file: small frozen dataclasses with source positions.

Positions are not compared, so two trees are equal when the programs are the same whatever their
layout (the formatter's tests rely on that).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """A source file: its name (as shown in diagnostics) and its lines."""

    name: str
    lines: tuple[str, ...]

    @staticmethod
    def of(text: str, name: str) -> Source:
        return Source(name, tuple(text.splitlines()))

    def line(self, n: int) -> str | None:
        return self.lines[n - 1] if 1 <= n <= len(self.lines) else None


@dataclass(frozen=True)
class Pos:
    """A span of source text: 1-based line/column of its start and end (end exclusive)."""

    source: Source
    line: int
    col: int
    end_line: int
    end_col: int


def _pos() -> Pos | None:
    return field(default=None, compare=False, repr=False)  # type: ignore[return-value]


# ---- expressions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    pass


@dataclass(frozen=True)
class Name(Expr):
    id: str
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Int(Expr):
    value: int
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Float(Expr):
    value: float
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Str(Expr):
    value: str
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Bool(Expr):
    value: bool
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class ListLit(Expr):
    items: tuple[Expr, ...]
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class ListComp(Expr):
    elt: Expr
    var: str
    iter: Expr
    cond: Expr | None
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Slice(Expr):
    lo: Expr | None
    hi: Expr | None
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Index(Expr):
    obj: Expr
    subs: tuple[Expr, ...]
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class KwArg:
    name: str
    value: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Call(Expr):
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[KwArg, ...]
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class BinOp(Expr):
    """Arithmetic ``+ - * / // % **``; ``*`` of groups is the elementwise product."""

    op: str
    left: Expr
    right: Expr
    pos: Pos | None = _pos()
    op_pos: Pos | None = _pos()


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-" | "+" | "not"
    operand: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Compare(Expr):
    op: str  # == != < <= > >= in
    left: Expr
    right: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class BoolOp(Expr):
    op: str  # "and" | "or"
    left: Expr
    right: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Cond(Expr):
    body: Expr
    test: Expr
    orelse: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Range(Expr):
    """``lo..hi``: the integers lo, lo+1, ..., hi-1."""

    lo: Expr
    hi: Expr
    pos: Pos | None = _pos()


# ---- statements ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stmt:
    pass


@dataclass(frozen=True)
class VarDecl(Stmt):
    name: str
    dims: tuple[Expr, ...]
    domain: str
    domain_arg: Expr | None
    pos: Pos | None = _pos()
    domain_pos: Pos | None = _pos()


@dataclass(frozen=True)
class Assign(Stmt):
    name: str
    indices: tuple[tuple[Expr, ...], ...]
    value: Expr
    attrs: tuple[KwArg, ...]
    pos: Pos | None = _pos()
    target_pos: Pos | None = _pos()


@dataclass(frozen=True)
class For(Stmt):
    var: str
    iter: Expr
    body: tuple[Stmt, ...]
    pos: Pos | None = _pos()
    end_line: int = field(default=0, compare=False, repr=False)
    brace_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class If(Stmt):
    test: Expr
    body: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] | None
    pos: Pos | None = _pos()
    body_end_line: int = field(default=0, compare=False, repr=False)
    end_line: int = field(default=0, compare=False, repr=False)
    brace_line: int = field(default=0, compare=False, repr=False)
    else_brace_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Def(Stmt):
    name: str
    params: tuple[str, ...]
    body: tuple[Stmt, ...]
    pos: Pos | None = _pos()
    end_line: int = field(default=0, compare=False, repr=False)
    brace_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Return(Stmt):
    value: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Root(Stmt):
    values: tuple[Expr, ...]
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class ParamDecl(Stmt):
    name: str
    value: Expr | None
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class AttrStmt(Stmt):
    name: str
    value: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Include(Stmt):
    path: str
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Import(Stmt):
    path: str
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Comment:
    line: int
    col: int
    text: str


@dataclass(frozen=True)
class Module:
    """A parsed file: its statements and (for the formatter) its comments."""

    body: tuple[Stmt, ...]
    source: Source = field(compare=False, repr=False)
    comments: tuple[Comment, ...] = field(default=(), compare=False, repr=False)


BLOCK_STMTS = (For, If, Def)
