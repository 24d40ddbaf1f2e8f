"""Lowering: run a `.pc` program and build its circuit through :class:`pcir.ir.CircuitBuilder`.

The program is interpreted (loops, templates, arrays are evaluated); every call that makes a
group (``sum``, ``prod``, ``outer``, ``*`` of groups, a distribution) adds ONE node group to the
builder, whatever its number of units, so a loop-generated circuit with a million PC nodes is a
few thousand builder calls. Every mistake raises :class:`PcSyntaxError` at the place in the source.

Naming of IR groups: ``X = ...`` names the group ``X``; ``S[i, j] = ...`` names it ``S[i][j]``;
groups made inside an expression without a name of their own get ``X.s0``, ``X.p1``, ``X.in2``
(``X`` being the statement's target); groups made in a template instance ``M = tpl(...)`` are
``M.local``; a plain name assigned inside a loop gets the loop values appended: ``P.3``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import distributions as dists
from ..ir.builder import CircuitBuilder
from ..ir.circuit import Circuit, Param
from ..ir.diagnostics import PcirError, PcSyntaxError, SourceSpan, suggest
from ..ir.distributions import Dist, Domain
from . import syntax as S
from .parser import KEYWORDS, parse_module
from .values import (
    ArrayVal,
    ArrayView,
    GroupArray,
    GroupVal,
    ParamVal,
    Template,
    VarArray,
    VarVal,
    type_name,
)

MAX_INT = 2**62
MAX_LIST = 10_000_000
MAX_TEMPLATE_DEPTH = 48
DEFAULT_MAX_STEPS = 50_000_000
DOMAINS = ("binary", "categorical", "real")
GROUP_ATTRS_CHECKED = {"bs", "waive"}
INPUT_KEYWORDS = ("units", "params", "tie", "init", "seed")


# ---- scopes and frames ----------------------------------------------------------------------
class Scope:
    """Names bound in a file, a template call or one loop iteration."""

    def __init__(self, parent: Scope | None, function: bool):
        self.parent = parent
        self.function = function  # a file or template scope: arrays are created here
        self.names: dict[str, tuple[Any, S.Pos | None]] = {}

    def lookup(self, name: str) -> tuple[Any, S.Pos | None] | None:
        s: Scope | None = self
        while s is not None:
            if name in s.names:
                return s.names[name]
            s = s.parent
        return None

    def lookup_local(self, name: str) -> tuple[Any, S.Pos | None, Scope] | None:
        """Look up ``name`` up to (and including) the enclosing function scope."""
        s: Scope | None = self
        while s is not None:
            if name in s.names:
                v, p = s.names[name]
                return v, p, s
            if s.function:
                return None
            s = s.parent
        return None

    def function_scope(self) -> Scope:
        s = self
        while not s.function:
            assert s.parent is not None
            s = s.parent
        return s

    def visible_names(self) -> set[str]:
        out: set[str] = set()
        s: Scope | None = self
        while s is not None:
            out |= set(s.names)
            s = s.parent
        return out


@dataclass
class Frame:
    """Where statements run: scope, IR name prefix, enclosing loops, template call chain."""

    scope: Scope
    prefix: str = ""
    loops: list[tuple[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, S.Pos | None]] = field(default_factory=list)
    source: S.Source | None = None
    top_level: bool = True  # directly in a file (not in a loop, if-block... is still top level)
    in_template: bool = False
    library: bool = False  # an imported file: no groups, variables or roots


class _Return(Exception):
    def __init__(self, value: Any):
        self.value = value


@dataclass
class Namer:
    """Hands out IR names for the groups one statement makes."""

    base: str
    attrs: dict[str, Any] = field(default_factory=dict)
    used_top: bool = False
    counters: dict[str, int] = field(default_factory=dict)


# ---- the interpreter ------------------------------------------------------------------------
class Lowerer:
    """Runs a `.pc` program and builds its :class:`Circuit`."""

    def __init__(self, base_dir: Path | None, max_steps: int = DEFAULT_MAX_STEPS):
        self.b = CircuitBuilder()
        self.base_dir = base_dir
        self.max_steps = max_steps
        self.steps = 0
        self.var_names: dict[str, S.Pos | None] = {}
        self.group_names: set[str] = set()
        self.group_pos: dict[str, S.Pos | None] = {}
        self.has_parent: set[str] = set()
        self.roots: list[str] = []
        self.root_seen: set[str] = set()
        self.attr_pos: dict[str, S.Pos | None] = {}
        self.seed_overrides: dict[str, int] = {}
        self.declared: list[ParamVal] = []
        self.file_stack: list[str] = []
        self.imported: dict[str, Scope] = {}
        self.file_cache: dict[str, dict[str, np.ndarray]] = {}
        self.template_depth = 0
        self.frame: Frame | None = None
        self.source_dirs: dict[str, Path] = {}
        self.builtins: dict[str, Callable[..., Any]] = {
            "sum": self._b_sum,
            "prod": self._b_prod,
            "outer": self._b_outer,
            "load": self._b_load,
            "len": self._b_len,
            "range": self._b_range,
            "reversed": self._b_reversed,
            "min": self._b_min,
            "max": self._b_max,
            "abs": self._b_abs,
            "int": self._b_int,
            "permutation": self._b_permutation,
            "children": self._b_children,
        }

    # ---- diagnostics ---------------------------------------------------------------------
    def span(self, pos: S.Pos | None) -> SourceSpan | None:
        if pos is None:
            return None
        end = pos.end_col if pos.end_line == pos.line else None
        return SourceSpan(pos.source.name, pos.line, pos.col, end, pos.source.line(pos.line))

    def error(self, msg: str, pos: S.Pos | None, hint: str | None = None) -> PcSyntaxError:
        f = self.frame
        if f is not None and f.loops:
            note = "in the loop iteration where " + ", ".join(f"{k} = {_show(v)}" for k, v in f.loops)
            hint = f"{hint}; {note}" if hint else note
        if f is not None and f.calls:
            name, cpos = f.calls[-1]
            where = f" called at {cpos.source.name}:{cpos.line}" if cpos is not None else ""
            note = f"in template '{name}'{where}"
            hint = f"{hint}; {note}" if hint else note
        return PcSyntaxError(msg, self.span(pos), hint)

    def tick(self, pos: S.Pos | None) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise self.error(f"the program runs too long (more than {self.max_steps} steps); is a loop too big?", pos)

    # ---- entry points --------------------------------------------------------------------
    def run_module(self, module: S.Module, path: str | None) -> Circuit:
        scope = Scope(None, function=True)
        self.frame = Frame(scope, source=module.source)
        if path is not None:
            self.file_stack.append(path)
        self.exec_block(module.body)
        return self.finish(module)

    def finish(self, module: S.Module) -> Circuit:
        self.frame = None
        if not self.group_names:
            raise PcSyntaxError(
                "the file defines no groups, so there is no circuit",
                SourceSpan(module.source.name, 1, 1, None, module.source.line(1)),
            )
        roots = self.roots
        if not roots:
            free = [n for n in self.b._groups if n not in self.has_parent]
            if len(free) != 1:
                last = free[-1]
                raise PcSyntaxError(
                    f"no 'root' statement, and {len(free)} groups have no parent: "
                    + ", ".join(f"'{n}'" for n in free[:4])
                    + (", ..." if len(free) > 4 else ""),
                    self.span(self.group_pos.get(last)),
                    f"add 'root {last}' (or whichever is the circuit's output)",
                )
            roots = free
        self.b.root(*roots)
        c = self.b.build()
        return self._rename_params(c)

    def _rename_params(self, c: Circuit) -> Circuit:
        renames = {p.ir_name: p.name for p in self.declared if p.ir_name is not None}
        if not renames and not self.seed_overrides:
            return c
        params: dict[str, Param] = {}
        for k, p in c.params.items():
            if k in self.seed_overrides and p.value is None:
                p = Param(p.shape, p.dtype, None, p.init, self.seed_overrides[k])
            params[renames.get(k, k)] = p
        groups = []
        for g in c:
            pn = getattr(g, "params", None)
            if pn in renames:
                g = replace(g, params=renames[pn])
            groups.append(g)
        return c.replace(groups=groups, params=params)

    # ---- statements ----------------------------------------------------------------------
    def exec_block(self, stmts) -> None:
        for st in stmts:
            self.tick(st.pos)
            self.exec_stmt(st)

    def exec_stmt(self, st: S.Stmt) -> None:
        f = self.frame
        assert f is not None
        if isinstance(st, S.Assign):
            self.exec_assign(st)
        elif isinstance(st, S.For):
            self.exec_for(st)
        elif isinstance(st, S.If):
            test = self.eval_bool(st.test)
            if test:
                self.exec_block(st.body)
            elif st.orelse is not None:
                self.exec_block(st.orelse)
        elif isinstance(st, S.VarDecl):
            self.exec_var(st)
        elif isinstance(st, S.Def):
            if not f.top_level or f.in_template:
                raise self.error("templates ('def') may only be defined at the top level of a file", st.pos)
            self.define(st.name, Template(st, f.scope), st.pos)
        elif isinstance(st, S.Return):
            if not f.in_template:
                raise self.error("'return' outside a template", st.pos, "'return' ends a 'def' body")
            raise _Return(st.value)
        elif isinstance(st, S.Root):
            self.exec_root(st)
        elif isinstance(st, S.ParamDecl):
            self.exec_param(st)
        elif isinstance(st, S.AttrStmt):
            self.exec_attr(st)
        elif isinstance(st, S.Include):
            self.exec_include(st)
        elif isinstance(st, S.Import):
            self.exec_import(st)
        else:  # pragma: no cover - the parser makes no other statements
            raise self.error(f"unsupported statement {type(st).__name__}", getattr(st, "pos", None))

    def define(self, name: str, value: Any, pos: S.Pos | None) -> None:
        f = self.frame
        assert f is not None
        if name in KEYWORDS:  # pragma: no cover - the grammar prevents it
            raise self.error(f"'{name}' is a keyword", pos)
        found = f.scope.lookup_local(name)
        if found is not None:
            _, p, _ = found
            where = (
                f" (first defined at line {p.line})"
                if p is not None and p.source is (pos.source if pos else None)
                else (f" (first defined at {p.source.name}:{p.line})" if p is not None else "")
            )
            raise self.error(
                f"'{name}' is already defined{where}",
                pos,
                "names are single-assignment; pick a new name or index it, e.g. X[i]",
            )
        f.scope.names[name] = (value, pos)

    def exec_assign(self, st: S.Assign) -> None:
        f = self.frame
        assert f is not None
        attrs = {kw.name: (self.eval(kw.value), kw) for kw in st.attrs}
        if st.indices:
            key = tuple(self.eval_int(e, "an index") for sub in st.indices for e in sub)
            base = f.prefix + st.name + "".join(f"[{k}]" for k in key)
        else:
            key = None
            base = f.prefix + st.name
            if f.loops:
                base += "".join(f".{_show(v)}" for _, v in f.loops)
        namer = Namer(self._unique(base), {k: v for k, (v, _) in attrs.items()})
        self._check_attrs(attrs)
        value = self.eval(st.value, namer, top=True)
        if attrs and not namer.used_top:
            raise self.error(
                f"'with' sets attributes of a new group, but this statement makes none ({type_name(value)})",
                st.attrs[0].pos,
            )
        if key is None:
            self.define(st.name, value, st.target_pos)
            return
        found = f.scope.lookup_local(st.name)
        if found is None:
            arr = GroupArray(f.prefix + st.name, display=st.name)
            f.scope.function_scope().names[st.name] = (arr, st.target_pos)
        else:
            arr, p, _ = found
            if not isinstance(arr, GroupArray):
                raise self.error(
                    f"'{st.name}' is {type_name(arr)}, not an array, so it cannot be indexed", st.target_pos
                )
        if key in arr.items:
            p = arr.positions.get(key)
            shown = f"{st.name}[{', '.join(map(str, key))}]"
            if (
                p is not None
                and st.target_pos is not None
                and p.line == st.target_pos.line
                and p.source is st.target_pos.source
            ):
                raise self.error(
                    f"'{shown}' is already defined by an earlier loop iteration",
                    st.target_pos,
                    f"index it with the loop variable, e.g. {st.name}[{f.loops[-1][0] if f.loops else 'i'}]",
                )
            where = f" (first defined at line {p.line})" if p is not None else ""
            raise self.error(f"'{shown}' is already defined{where}", st.target_pos)
        if arr.items:
            n0 = len(next(iter(arr.items)))
            if n0 != len(key):
                raise self.error(
                    f"'{st.name}' is indexed with {n0} indices elsewhere, here with {len(key)}", st.target_pos
                )
        arr.items[key] = value
        arr.positions[key] = st.target_pos

    def _unique(self, base: str) -> str:
        if base not in self.group_names:
            return base
        k = 2
        while f"{base}~{k}" in self.group_names:
            k += 1
        return f"{base}~{k}"

    def _check_attrs(self, attrs: dict[str, tuple[Any, S.KwArg]]) -> None:
        for k, (v, kw) in attrs.items():
            if k == "bs" and (not _is_int(v) or v < 0):
                raise self.error(
                    f"bs (block size) must be a non-negative integer, got {_show(v)}", kw.value.pos or kw.pos
                )
            if k == "waive" and v not in ("smooth", "decomposable"):
                raise self.error(f'waive must be "smooth" or "decomposable", got {_show(v)}', kw.value.pos or kw.pos)
            if not isinstance(v, (bool, int, float, str, list, range)) or (
                isinstance(v, (list, range)) and not all(isinstance(x, (bool, int, float, str)) for x in v)
            ):
                raise self.error(
                    f"attribute '{k}' must be a number, string, boolean or a list of them, not {type_name(v)}",
                    kw.value.pos or kw.pos,
                )

    def exec_for(self, st: S.For) -> None:
        f = self.frame
        assert f is not None
        it = self.eval(st.iter)
        items = self.iterable(it, st.iter.pos, "a 'for' loop")
        if f.scope.lookup_local(st.var) is not None:
            raise self.error(
                f"loop variable '{st.var}' is already defined", st.pos, "use another name for the loop variable"
            )
        outer_scope, outer_top = f.scope, f.top_level
        f.top_level = False
        try:
            for v in items:
                self.tick(st.pos)
                f.scope = Scope(outer_scope, function=False)
                f.scope.names[st.var] = (v, st.pos)
                f.loops.append((st.var, v))
                try:
                    self.exec_block(st.body)
                finally:
                    f.loops.pop()
        finally:
            f.scope, f.top_level = outer_scope, outer_top

    def exec_var(self, st: S.VarDecl) -> None:
        f = self.frame
        assert f is not None
        if not f.top_level or f.in_template:
            raise self.error("'var' is only allowed at the top level of a file", st.pos)
        if f.library:
            raise self.error(
                "an imported file may not declare variables", st.pos, "use 'include' to paste a whole file"
            )
        dom = self.eval_domain(st)
        dims = tuple(self.eval_int(d, "an array size") for d in st.dims)
        for d, e in zip(dims, st.dims, strict=True):
            if d < 1:
                raise self.error(f"array size must be at least 1, got {d}", e.pos)
        if st.dims:
            size = int(np.prod(dims))
            if size > MAX_LIST:
                raise self.error(f"too many variables ({size})", st.pos)
            self.check_len(range(size), st.pos)
            names = tuple(f"{st.name}{i}" for i in range(size))
        else:
            names = (st.name,)
        for n in names:
            if n in self.var_names:
                p = self.var_names[n]
                where = f" at line {p.line}" if p is not None else ""
                raise self.error(f"variable name '{n}' is already used (declared{where})", st.pos)
        base = len(self.b._vars)
        for n in names:
            self.b.variable(dom, n)
            self.var_names[n] = st.pos
        value: Any = VarArray(st.name, dims, base, names) if st.dims else VarVal(base, st.name)
        self.define(st.name, value, st.pos)

    def eval_domain(self, st: S.VarDecl) -> Domain:
        d = st.domain
        if d == "binary":
            if st.domain_arg is not None:
                raise self.error("binary takes no argument", st.domain_arg.pos)
            return Domain.binary()
        if d == "real":
            if st.domain_arg is not None:
                raise self.error("real takes no argument", st.domain_arg.pos)
            return Domain.real()
        if d == "categorical":
            if st.domain_arg is None:
                raise self.error("categorical needs the number of values, e.g. categorical(4)", st.domain_pos)
            k = self.eval_int(st.domain_arg, "the number of categories")
            if k < 1:
                raise self.error(f"categorical needs at least 1 value, got {k}", st.domain_arg.pos)
            return Domain.categorical(k)
        raise self.error(
            f"unknown domain '{d}'", st.domain_pos, suggest(d, DOMAINS) or "domains: binary, categorical(k), real"
        )

    def exec_root(self, st: S.Root) -> None:
        f = self.frame
        assert f is not None
        if f.in_template or f.library:
            raise self.error(
                "'root' is only allowed in the main file or an included one, not in a template or an imported file",
                st.pos,
            )
        for e in st.values:
            namer = Namer(self._unique("root"))
            v = self.eval(e, namer, top=True)
            for g in self.flatten_groups(v, e.pos, "root"):
                if g.name in self.root_seen:
                    raise self.error(f"'{g.name}' is already a root", e.pos)
                self.root_seen.add(g.name)
                self.roots.append(g.name)

    def exec_param(self, st: S.ParamDecl) -> None:
        f = self.frame
        assert f is not None
        value = None
        if st.value is not None:
            v = self.eval(st.value)
            value = self.to_array(v, st.value.pos, "a parameter value", np.float64)
        pv = ParamVal(st.name, value, st.pos)
        self.declared.append(pv)
        self.define(st.name, pv, st.pos)

    def exec_attr(self, st: S.AttrStmt) -> None:
        f = self.frame
        assert f is not None
        if f.in_template or f.library or not f.top_level:
            raise self.error("'attr' is only allowed at the top level of a file", st.pos)
        v = self.eval(st.value)
        if st.name in self.attr_pos:
            p = self.attr_pos[st.name]
            raise self.error(f"attribute '{st.name}' is already set" + (f" (line {p.line})" if p else ""), st.pos)
        if st.name == "block_hint" and (not _is_int(v) or v < 1):
            raise self.error(f"block_hint must be a positive integer, got {_show(v)}", st.value.pos)
        self.b.attrs[st.name] = self.attr_value(v, st.value.pos, st.name)
        self.attr_pos[st.name] = st.pos

    def attr_value(self, v: Any, pos: S.Pos | None, key: str):
        if isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, range)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            return tuple(v)
        raise self.error(
            f"attribute '{key}' must be a number, string, boolean or a list of them, not {type_name(v)}", pos
        )

    def resolve_path(self, rel: str, pos: S.Pos | None) -> Path:
        """Paths are relative to the file that names them (``base_dir`` for the main text)."""
        p = Path(rel)
        if p.is_absolute():
            return p
        name = pos.source.name if pos is not None else self._root_name
        here = self.source_dirs.get(name)
        if here is None:
            here = self.base_dir if self.base_dir is not None else Path.cwd()
        return here / p

    def _display(self, rel: str, pos: S.Pos | None, path: Path) -> str:
        """How diagnostics name an included file: relative to the name of the file including it."""
        import os

        name = pos.source.name if pos is not None else self._root_name
        if Path(rel).is_absolute() or (name.startswith("<") and name.endswith(">")):
            shown = rel
        else:
            shown = os.path.normpath(str(Path(name).parent / rel))
        self.source_dirs[shown] = path.parent
        return shown

    _root_name: str = "<string>"

    def _missing_file(self, what: str, path: Path, rel: str, pos: S.Pos | None) -> PcSyntaxError:
        name = pos.source.name if pos is not None else self._root_name
        if Path(rel).is_absolute():
            where = ""
        elif name.startswith("<") and name.endswith(">"):
            where = f" (relative to {self.base_dir or 'the current directory'})"
        else:
            where = f" (relative to the directory of '{name}')"
        hint = None
        if path.parent.is_dir():
            try:
                cands = [c.name for c in path.parent.iterdir() if c.is_file() and c.suffix == path.suffix][:2000]
            except OSError:
                cands = []
            close = difflib.get_close_matches(path.name, cands, n=1, cutoff=0.75)
            hint = f"did you mean '{close[0]}'?" if close else None
        elif not path.parent.exists():
            hint = f"there is no directory '{Path(rel).parent}'"
        return self.error(f"{what} '{rel}' not found{where}", pos, hint)

    def _read_source(self, st, what: str) -> tuple[Path, str]:
        path = self.resolve_path(st.path, st.pos)
        if not path.is_file():
            raise self._missing_file(what, path, st.path, st.pos)
        try:
            return path, path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise self.error(f"cannot read {what} '{st.path}': {e}", st.pos) from None

    def exec_include(self, st: S.Include) -> None:
        f = self.frame
        assert f is not None
        if not f.top_level or f.in_template:
            raise self.error("'include' is only allowed at the top level of a file", st.pos)
        path, text = self._read_source(st, "included file")
        key = str(path.resolve())
        if key in self.file_stack:
            chain = " -> ".join(Path(p).name for p in self.file_stack[self.file_stack.index(key) :] + [key])
            raise self.error(f"include cycle: {chain}", st.pos)
        module = parse_module(text, self._display(st.path, st.pos, path))
        self.file_stack.append(key)
        old_source = f.source
        f.source = module.source
        try:
            self.exec_block(module.body)
        finally:
            f.source = old_source
            self.file_stack.pop()

    def exec_import(self, st: S.Import) -> None:
        f = self.frame
        assert f is not None
        if not f.top_level or f.in_template:
            raise self.error("'import' is only allowed at the top level of a file", st.pos)
        path, text = self._read_source(st, "imported file")
        key = str(path.resolve())
        if key in self.file_stack:
            chain = " -> ".join(Path(p).name for p in self.file_stack[self.file_stack.index(key) :] + [key])
            raise self.error(f"import cycle: {chain}", st.pos)
        lib = self.imported.get(key)
        if lib is None:
            module = parse_module(text, self._display(st.path, st.pos, path))
            lib = Scope(None, function=True)
            saved = self.frame
            self.frame = Frame(lib, source=module.source, library=True)
            self.file_stack.append(key)
            try:
                self.exec_block(module.body)
            finally:
                self.frame = saved
                self.file_stack.pop()
            self.imported[key] = lib
        for name, (v, p) in lib.names.items():
            existing = f.scope.lookup_local(name)
            if existing is not None and existing[0] is v:
                continue
            if isinstance(v, (GroupVal, GroupArray, VarVal, VarArray)):
                continue
            self.define(name, v, p)

    # ---- expressions ---------------------------------------------------------------------
    def eval(self, e: S.Expr, namer: Namer | None = None, top: bool = False) -> Any:
        self.tick(getattr(e, "pos", None))
        m = getattr(self, "_e_" + type(e).__name__)
        return m(e, namer, top)

    def _e_Int(self, e, namer, top):
        return e.value

    def _e_Float(self, e, namer, top):
        return e.value

    def _e_Str(self, e, namer, top):
        return e.value

    def _e_Bool(self, e, namer, top):
        return e.value

    def _e_Name(self, e, namer, top):
        f = self.frame
        assert f is not None
        found = f.scope.lookup(e.id)
        if found is not None:
            return found[0]
        if e.id in self.builtins or _is_dist(e.id):
            raise self.error(f"'{e.id}' must be called, e.g. {e.id}(...)", e.pos)
        raise self.error(f"unknown name '{e.id}'", e.pos, did_you_mean(e.id, f.scope.visible_names()))

    def _e_ListLit(self, e, namer, top):
        return [self.eval(x, namer) for x in e.items]

    def _e_ListComp(self, e, namer, top):
        f = self.frame
        assert f is not None
        it = self.iterable(self.eval(e.iter, namer), e.iter.pos, "a list comprehension")
        out = []
        outer = f.scope
        try:
            for v in it:
                f.scope = Scope(outer, function=False)
                if outer.lookup_local(e.var) is not None:
                    raise self.error(f"comprehension variable '{e.var}' is already defined", e.pos)
                f.scope.names[e.var] = (v, e.pos)
                if e.cond is not None and not self.eval_bool(e.cond, namer):
                    continue
                out.append(self.eval(e.elt, namer))
        finally:
            f.scope = outer
        return out

    def _e_Range(self, e, namer, top):
        lo = self.eval_int(e.lo, "a range bound", namer)
        hi = self.eval_int(e.hi, "a range bound", namer)
        return range(lo, hi)

    def _e_Cond(self, e, namer, top):
        if self.eval_bool(e.test, namer):
            return self.eval(e.body, namer, top)
        return self.eval(e.orelse, namer, top)

    def _e_BoolOp(self, e, namer, top):
        left = self.eval_bool(e.left, namer)
        if e.op == "and":
            return left and self.eval_bool(e.right, namer)
        return left or self.eval_bool(e.right, namer)

    def _e_Unary(self, e, namer, top):
        if e.op == "not":
            return not self.eval_bool(e.operand, namer)
        v = self.eval(e.operand, namer)
        if not _is_num(v):
            raise self.error(f"unary '{e.op}' needs a number, not {type_name(v)}", e.pos)
        return -v if e.op == "-" else v

    def _e_Compare(self, e, namer, top):
        a = self.eval(e.left, namer)
        b = self.eval(e.right, namer)
        op = e.op
        if op == "in":
            if isinstance(b, (list, range)):
                return any(_same(a, x) for x in b)
            raise self.error(f"'in' needs a list or range on the right, not {type_name(b)}", e.right.pos)
        if op in ("==", "!="):
            eq = _same(a, b)
            return eq if op == "==" else not eq
        if not (_is_num(a) and _is_num(b)):
            raise self.error(f"'{op}' compares numbers, not {type_name(a)} and {type_name(b)}", e.pos)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    def _e_BinOp(self, e, namer, top):
        if e.op == "*":
            operands = _flatten_mul(e)
            vals = [self.eval(x, namer) for x in operands]
            if all(isinstance(v, GroupVal) for v in vals):
                return self.make_product(vals, "aligned", None, e.pos, namer, top, operands)
            if all(_is_num(v) for v in vals):
                out = vals[0]
                for v in vals[1:]:
                    out = out * v
                    self._check_big(out, e.pos)
                return out
            bad = (
                next(v for v in vals if not isinstance(v, GroupVal) and not _is_num(v))
                if any(not isinstance(v, GroupVal) and not _is_num(v) for v in vals)
                else None
            )
            if bad is not None:
                raise self.error(f"'*' multiplies numbers or groups, not {type_name(bad)}", e.op_pos)
            raise self.error(
                "'*' cannot multiply a group by a number",
                e.op_pos,
                "a product of groups is written A * B; scale weights inside sum(...)",
            )
        a = self.eval(e.left, namer)
        b = self.eval(e.right, namer)
        op = e.op
        if op == "+" and isinstance(a, (list, range)) and isinstance(b, (list, range)):
            self.check_len(range(len(a) + len(b)), e.pos)
            return list(a) + list(b)
        if isinstance(a, GroupVal) or isinstance(b, GroupVal):
            hint = "a mixture of groups is written sum(A, B, units=...)" if op == "+" else None
            raise self.error(f"'{op}' is not defined for groups", e.op_pos, hint)
        if not (_is_num(a) and _is_num(b)):
            raise self.error(f"'{op}' needs numbers, not {type_name(a)} and {type_name(b)}", e.op_pos)
        try:
            if op == "+":
                r = a + b
            elif op == "-":
                r = a - b
            elif op == "/":
                r = a / b
            elif op == "//":
                r = a // b
            elif op == "%":
                r = a % b
            elif op == "**":
                if _is_int(a) and _is_int(b) and b < 0:
                    r = float(a) ** b
                elif _is_int(a) and _is_int(b) and abs(a) > 1 and b * math.log2(abs(a)) > 62:
                    raise self.error("integer too large", e.pos)
                else:
                    r = a**b
                    if isinstance(r, complex):
                        raise self.error("result is not a real number", e.pos)
            else:  # pragma: no cover
                raise self.error(f"unknown operator '{op}'", e.op_pos)
        except ZeroDivisionError:
            raise self.error("division by zero", e.op_pos) from None
        except OverflowError:
            raise self.error("number too large", e.pos) from None
        self._check_big(r, e.pos)
        return r

    def _check_big(self, v: Any, pos: S.Pos | None) -> None:
        if _is_int(v) and abs(v) > MAX_INT:
            raise self.error("integer too large", pos)
        if isinstance(v, float) and not math.isfinite(v):
            raise self.error("number is not finite", pos)

    def _e_Slice(self, e, namer, top):
        raise self.error("a slice 'a:b' is only allowed inside [...]", e.pos)

    def _e_Index(self, e, namer, top):
        obj = self.eval(e.obj, namer)
        slices = [s for s in e.subs if isinstance(s, S.Slice)]
        if slices:
            if len(e.subs) != 1:
                raise self.error("a slice takes one index range, like x[a:b]", e.pos)
            s = slices[0]
            seq = self.sequence(obj, e.obj.pos)
            lo = None if s.lo is None else self.eval_int(s.lo, "a slice bound", namer)
            hi = None if s.hi is None else self.eval_int(s.hi, "a slice bound", namer)
            part = seq[lo:hi]
            self.check_len(part, e.pos)
            return list(part)
        idx = tuple(self.eval_int(x, "an index", namer) for x in e.subs)
        return self.index(obj, idx, e)

    def sequence(self, obj: Any, pos: S.Pos | None) -> list | range:
        if isinstance(obj, (list, range)):
            return obj
        if isinstance(obj, VarArray):
            return [obj.item(i) for i in range(obj.size)]
        if isinstance(obj, ArrayVal) and obj.value.ndim >= 1:
            return _array_to_list(obj.value)
        raise self.error(f"{type_name(obj)} cannot be sliced or iterated", pos)

    def index(self, obj: Any, idx: tuple[int, ...], e: S.Index) -> Any:
        shown = _src_name(e.obj)
        if isinstance(obj, (list, range)):
            if len(idx) != 1:
                if isinstance(obj, list) and len(idx) > 1:
                    out: Any = obj
                    for i in idx:
                        out = self.index(out, (i,), e)
                    return out
                raise self.error(f"{type_name(obj)} takes one index", e.pos)
            i = idx[0]
            if not -len(obj) <= i < len(obj):
                raise self.error(f"index {i} is out of range for {shown} ({len(obj)} items)", e.pos)
            return obj[i]
        if isinstance(obj, VarArray):
            if len(idx) == 1:
                flat = idx[0]
                if not 0 <= flat < obj.size:
                    raise self.error(
                        f"index {flat} is out of range for variables '{obj.name}' ({obj.size} variables)", e.pos
                    )
                return obj.item(flat)
            if len(idx) != len(obj.dims):
                raise self.error(f"'{obj.name}' has {len(obj.dims)} dimensions, got {len(idx)} indices", e.pos)
            flat = 0
            for i, d in zip(idx, obj.dims, strict=True):
                if not 0 <= i < d:
                    raise self.error(
                        f"index {list(idx)} is out of range for variables '{obj.name}' (shape {list(obj.dims)})", e.pos
                    )
                flat = flat * d + i
            return obj.item(flat)
        if isinstance(obj, (GroupArray, ArrayView)):
            arr = obj if isinstance(obj, GroupArray) else obj.array
            key = idx if isinstance(obj, GroupArray) else obj.prefix + idx
            if key in arr.items:
                return arr.items[key]
            if arr.keys_with_prefix(key):
                return ArrayView(arr, key)
            raise self.error(
                f"{arr.display or arr.name}[{', '.join(map(str, key))}] is not defined", e.pos, _index_hint(arr)
            )
        if isinstance(obj, ArrayVal):
            a = obj.value
            if len(idx) > a.ndim:
                raise self.error(f"too many indices for an array of shape {list(a.shape)}", e.pos)
            for i, d in zip(idx, a.shape, strict=False):
                if not -d <= i < d:
                    raise self.error(f"index {list(idx)} is out of range for an array of shape {list(a.shape)}", e.pos)
            sub = a[idx]
            if np.ndim(sub) == 0:
                return sub.item()
            return ArrayVal(np.asarray(sub), obj.desc)
        raise self.error(f"{type_name(obj)} cannot be indexed", e.pos)

    def _e_Call(self, e: S.Call, namer, top):
        f = self.frame
        assert f is not None
        if not isinstance(e.func, S.Name):
            raise self.error("only templates, builtins and distributions can be called", e.func.pos)
        fname = e.func.id
        found = f.scope.lookup(fname)
        if found is not None:
            fn = found[0]
            if not isinstance(fn, Template):
                raise self.error(f"'{fname}' is {type_name(fn)}, not a template, so it cannot be called", e.func.pos)
            return self.call_template(fn, e, namer, top)
        if fname in self.builtins:
            return self.builtins[fname](e, namer, top)
        if _is_dist(fname):
            return self.make_input(fname, e, namer, top)
        cands = (
            set(self.builtins)
            | set(dists.names())
            | {n for n in f.scope.visible_names() if isinstance((f.scope.lookup(n) or (None,))[0], Template)}
        )
        raise self.error(f"unknown template or function '{fname}'", e.func.pos, did_you_mean(fname, cands))

    # ---- helpers for values --------------------------------------------------------------
    def eval_int(self, e: S.Expr, what: str, namer: Namer | None = None) -> int:
        v = self.eval(e, namer)
        if isinstance(v, float) and v.is_integer() and abs(v) < MAX_INT:
            raise self.error(f"{what} must be an integer, got {v!r}", e.pos, "use '//' for integer division")
        if not _is_int(v):
            raise self.error(f"{what} must be an integer, not {type_name(v)}", e.pos)
        return v

    def eval_bool(self, e: S.Expr, namer: Namer | None = None) -> bool:
        v = self.eval(e, namer)
        if not isinstance(v, bool):
            hint = (
                "compare it, e.g. 'n != 0'"
                if _is_num(v)
                else ("compare it, e.g. 'len(L) > 0'" if isinstance(v, (list, range)) else None)
            )
            raise self.error(f"a condition must be true or false, not {type_name(v)}", e.pos, hint)
        return v

    def iterable(self, v: Any, pos: S.Pos | None, what: str) -> list | range:
        if isinstance(v, (list, range)):
            return v
        if isinstance(v, VarArray):
            return [v.item(i) for i in range(v.size)]
        if isinstance(v, ArrayVal) and v.value.ndim >= 1:
            return _array_to_list(v.value)
        hint = "loop over a range, e.g. 'for i in 0..n'" if _is_int(v) else None
        raise self.error(f"{what} needs a list or range, not {type_name(v)}", pos, hint)

    def flatten_groups(self, v: Any, pos: S.Pos | None, what: str) -> list[GroupVal]:
        out: list[GroupVal] = []

        def walk(x: Any) -> None:
            if isinstance(x, GroupVal):
                out.append(x)
            elif isinstance(x, (list, tuple)):
                for y in x:
                    walk(y)
            elif isinstance(x, (GroupArray, ArrayView)):
                arr = x if isinstance(x, GroupArray) else x.array
                keys = sorted(arr.items) if isinstance(x, GroupArray) else sorted(arr.keys_with_prefix(x.prefix))
                for k in keys:
                    walk(arr.items[k])
            else:
                hint = None
                if _is_int(x) and what in ("sum", "prod", "outer"):
                    hint = f"did you mean units={x}?" if what == "sum" else None
                raise self.error(f"{what} expects groups, not {type_name(x)}", pos, hint)

        walk(v)
        return out

    def to_array(self, v: Any, pos: S.Pos | None, what: str, dtype) -> np.ndarray:
        if isinstance(v, ArrayVal):
            a = v.value
        elif isinstance(v, (list, range)) or _is_num(v):
            if isinstance(v, range):
                self.check_len(v, pos)
            try:
                a = np.array(_plain_numbers(v), dtype=np.float64)
            except (TypeError, ValueError):
                raise self.error(f"{what} must be a rectangular array of numbers", pos) from None
        else:
            raise self.error(f"{what} must be an array (a list of numbers or load(...)), not {type_name(v)}", pos)
        if a.dtype == np.bool_:
            a = a.astype(np.int64)
        if not (np.issubdtype(a.dtype, np.number)):
            raise self.error(f"{what} must hold numbers, not {a.dtype}", pos)
        if dtype is np.int64:
            if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a) & (a == np.round(a))):
                raise self.error(f"{what} must hold integers", pos)
            return a.astype(np.int64)
        return a.astype(np.float64)

    # ---- groups --------------------------------------------------------------------------
    def _new_name(self, namer: Namer | None, top: bool, tag: str, pos: S.Pos | None) -> tuple[str, dict[str, Any]]:
        f = self.frame
        assert f is not None
        if f.library:
            raise self.error(
                "an imported file may only define templates and constants, not groups",
                pos,
                "use 'include' to paste a whole file",
            )
        if namer is None:
            namer = Namer(self._unique(f.prefix + "anon"))
        if top and not namer.used_top:
            namer.used_top = True
            name = namer.base
            attrs = dict(namer.attrs)
        else:
            n = namer.counters.get(tag, 0)
            while f"{namer.base}.{tag}{n}" in self.group_names:
                n += 1
            namer.counters[tag] = n + 1
            name = f"{namer.base}.{tag}{n}"
            attrs = {}
        name = self._unique(name)
        self.group_names.add(name)
        self.group_pos[name] = pos
        return name, {k: self.attr_value(v, pos, k) for k, v in attrs.items()}

    def _kwargs(
        self, e: S.Call, allowed: tuple[str, ...], fname: str, namer: Namer | None
    ) -> dict[str, tuple[Any, S.KwArg]]:
        out: dict[str, tuple[Any, S.KwArg]] = {}
        for kw in e.kwargs:
            if kw.name not in allowed:
                raise self.error(
                    f"{fname}() has no argument '{kw.name}'",
                    kw.pos,
                    suggest(kw.name, allowed)
                    or (
                        "it takes " + ", ".join(f"{a}=" for a in allowed)
                        if allowed
                        else f"{fname}() takes no keyword arguments"
                    ),
                )
            if kw.name in out:
                raise self.error(f"argument '{kw.name}' is given twice", kw.pos)
            out[kw.name] = (self.eval(kw.value, namer), kw)
        return out

    def _kpos(self, kw: S.KwArg) -> S.Pos | None:
        return kw.value.pos or kw.pos

    def _children(self, e: S.Call, namer: Namer | None, what: str) -> list[GroupVal]:
        kids: list[GroupVal] = []
        for a in e.args:
            kids.extend(self.flatten_groups(self.eval(a, namer), a.pos, what))
        if not kids:
            raise self.error(f"{what}() needs at least one child group", e.pos)
        return kids

    def _mark_children(self, kids: list[GroupVal]) -> None:
        for k in kids:
            self.has_parent.add(k.name)

    def make_product(self, kids: list[GroupVal], pattern: str, edges, pos, namer, top, operand_exprs=None) -> GroupVal:
        if pattern == "aligned":
            u0 = kids[0].units
            for j, k in enumerate(kids[1:], 1):
                if k.units != u0:
                    p = operand_exprs[j].pos if operand_exprs else pos
                    raise self.error(
                        f"elementwise product of groups with different sizes: '{kids[0].name}' has {u0} units, '{k.name}' has {k.units}",
                        p,
                        "use outer(...) for all combinations, or prod(..., edges=...) to pick pairs",
                    )
            units = u0
        elif pattern == "outer":
            units = 1
            for k in kids:
                units *= k.units
                if units > MAX_INT:
                    raise self.error("outer product is too large", pos)
        else:
            units = int(edges.shape[0])
        name, attrs = self._new_name(namer, top, "p", pos)
        self.b.product([k.name for k in kids], pattern, edges, name=name, attrs=attrs or None, span=self.span(pos))
        self._mark_children(kids)
        return GroupVal(name, units, "product")

    def _b_prod(self, e: S.Call, namer, top):
        kids = self._children(e, namer, "prod")
        kws = self._kwargs(e, ("edges",), "prod", namer)
        if "edges" in kws:
            v, kw = kws["edges"]
            edges = self.to_array(v, self._kpos(kw), "edges", np.int64)
            if edges.ndim == 1 and len(kids) == 1:
                edges = edges[:, None]
            if edges.ndim != 2 or edges.shape[1] != len(kids) or edges.shape[0] < 1:
                raise self.error(
                    f"product edges must be a list of rows with one unit index per child ({len(kids)} per row), got shape {list(edges.shape)}",
                    self._kpos(kw),
                )
            for j, k in enumerate(kids):
                col = edges[:, j]
                if col.min() < 0 or col.max() >= k.units:
                    raise self.error(
                        f"edge index {int(col.max() if col.max() >= k.units else col.min())} is out of range for '{k.name}' ({k.units} units)",
                        self._kpos(kw),
                    )
            return self.make_product(kids, "explicit", edges, e.pos, namer, top)
        return self.make_product(
            kids, "aligned", None, e.pos, namer, top, list(e.args) if len(e.args) == len(kids) else None
        )

    def _b_outer(self, e: S.Call, namer, top):
        kids = self._children(e, namer, "outer")
        self._kwargs(e, (), "outer", namer)
        return self.make_product(kids, "outer", None, e.pos, namer, top)

    def _param_source(self, v: Any, kw: S.KwArg, what: str, dtype) -> tuple[np.ndarray | None, ParamVal | None]:
        if isinstance(v, ParamVal):
            return None, v
        return self.to_array(v, self._kpos(kw), what, dtype), None

    def _use_declared(
        self, pv: ParamVal, shape: tuple[int, ...], dtype: str, kw: S.KwArg
    ) -> tuple[np.ndarray | None, str | None]:
        """(value for a first use, owner group to tie to for a later use)."""
        if pv.owner is None:
            if pv.value is not None and tuple(pv.value.shape) != tuple(shape):
                raise self.error(
                    f"parameter '{pv.name}' has shape {list(pv.value.shape)}, but here it needs {list(shape)}",
                    self._kpos(kw),
                )
            return pv.value, None
        if pv.shape != tuple(shape) or pv.dtype != dtype:
            raise self.error(
                f"parameter '{pv.name}' is used with shape {list(pv.shape or ())} by '{pv.owner}', but here it needs {list(shape)}",
                self._kpos(kw),
            )
        return None, pv.owner

    def _tie_target(self, v: Any, kw: S.KwArg, shape: tuple[int, ...], dtype: str) -> str:
        if not isinstance(v, GroupVal):
            raise self.error(f"tie= needs a group, not {type_name(v)}", self._kpos(kw))
        g = self.b.group(v.name)
        pname = getattr(g, "params", None)
        if not pname:
            raise self.error(f"'{v.name}' is a product group and has no parameters to tie to", self._kpos(kw))
        p = self.b._params[pname]
        if p.shape != tuple(shape) or (p.dtype == "i64") != (dtype == "i64"):
            raise self.error(
                f"cannot tie to '{v.name}': its parameters have shape {list(p.shape)}, here {list(shape)} are needed",
                self._kpos(kw),
            )
        return v.name

    def _init_kw(self, kws, has_value: bool) -> tuple[str, int | None]:
        init = "random"
        seed = None
        if "init" in kws:
            v, kw = kws["init"]
            if v not in ("random", "uniform"):
                raise self.error(f'init must be "random" or "uniform", got {_show(v)}', self._kpos(kw))
            if has_value:
                raise self.error("init= only applies to parameters without values", self._kpos(kw))
            init = v
        if "seed" in kws:
            v, kw = kws["seed"]
            if not _is_int(v) or v < 0:
                raise self.error(f"seed must be a non-negative integer, got {_show(v)}", self._kpos(kw))
            if has_value:
                raise self.error("seed= only applies to parameters without values", self._kpos(kw))
            seed = v
        return init, seed

    def _b_sum(self, e: S.Call, namer, top):
        kids = self._children(e, namer, "sum")
        kws = self._kwargs(e, ("units", "weights", "mask", "block", "edges", "tie", "init", "seed"), "sum", namer)
        k = sum(c.units for c in kids)
        units = None
        if "units" in kws:
            v, kw = kws["units"]
            if not _is_int(v) or v < 1:
                raise self.error(f"units must be a positive integer, got {_show(v)}", self._kpos(kw))
            units = v
        wval = None
        wdecl = None
        if "weights" in kws:
            v, kw = kws["weights"]
            wval, wdecl = self._param_source(v, kw, "weights", np.float64)
            if wval is None and wdecl is not None:
                wval = wdecl.value
        exclusive = [n for n in ("mask", "edges") if n in kws]
        if len(exclusive) > 1:
            raise self.error(
                "give either mask= (block-sparse) or edges= (explicit), not both", self._kpos(kws["edges"][1])
            )
        mask = block = edges = None
        if "edges" in kws:
            v, kw = kws["edges"]
            edges = self.to_array(v, self._kpos(kw), "edges", np.int64)
            if edges.ndim != 2 or edges.shape[1] != 2 or edges.shape[0] < 1:
                raise self.error(
                    f"sum edges must be a list of [node, column] pairs, got shape {list(edges.shape)}", self._kpos(kw)
                )
            if units is None:
                units = int(edges[:, 0].max()) + 1
            if edges[:, 0].min() < 0 or edges[:, 0].max() >= units:
                raise self.error(f"edge node index out of range (the sum has {units} units)", self._kpos(kw))
            if edges[:, 1].min() < 0 or edges[:, 1].max() >= k:
                raise self.error(f"edge column index out of range (the children have {k} units in all)", self._kpos(kw))
            shape: tuple[int, ...] = (int(edges.shape[0]),)
            if "block" in kws:
                raise self.error("block= goes with mask=, not edges=", self._kpos(kws["block"][1]))
        else:
            if units is None:
                units = int(wval.shape[0]) if wval is not None and wval.ndim == 2 else 1
            shape = (units, k)
            if "mask" in kws:
                v, kw = kws["mask"]
                mask = self.to_array(v, self._kpos(kw), "mask", np.int64)
                if mask.ndim != 2 or mask.size == 0:
                    raise self.error(f"mask must be a 2-D array of 0/1, got shape {list(mask.shape)}", self._kpos(kw))
                if not np.all((mask == 0) | (mask == 1)):
                    raise self.error("mask entries must be 0 or 1 (or true/false)", self._kpos(kw))
                mask = mask.astype(bool)
                rows, cols = mask.shape
                if "block" in kws:
                    bv, bkw = kws["block"]
                    if not (isinstance(bv, (list, range)) and len(bv) == 2 and all(_is_int(x) and x >= 1 for x in bv)):
                        raise self.error(
                            f"block must be [rows, columns] of positive integers, got {_show(bv)}", self._kpos(bkw)
                        )
                    block = (int(bv[0]), int(bv[1]))
                    if block[0] * rows != units or block[1] * cols != k:
                        raise self.error(
                            f"mask {list(mask.shape)} with block {list(block)} covers [{block[0] * rows}, {block[1] * cols}], but the sum is [{units}, {k}] (units x child units)",
                            self._kpos(kw),
                        )
                else:
                    if units % rows or k % cols:
                        raise self.error(
                            f"mask shape {list(mask.shape)} does not tile the [{units}, {k}] weight matrix (units x child units)",
                            self._kpos(kw),
                            "each mask entry stands for a block; its rows must divide units and its columns the child units",
                        )
                    block = (units // rows, k // cols)
                if not mask.any(axis=1).all():
                    raise self.error(
                        "a row of the mask is all zero: those sum units would have no children", self._kpos(kw)
                    )
            elif "block" in kws:
                raise self.error("block= needs mask=", self._kpos(kws["block"][1]))
        tie = None
        if wdecl is not None:
            wval, tie = self._use_declared(wdecl, shape, "f64", kws["weights"][1])
        elif wval is not None:
            if tuple(wval.shape) != shape:
                what = "one weight per edge" if edges is not None else "units x child units"
                raise self.error(
                    f"weights have shape {list(wval.shape)}, expected {list(shape)} ({what})",
                    self._kpos(kws["weights"][1]),
                )
        if wval is not None and (not np.all(np.isfinite(wval)) or np.any(wval < 0)):
            raise self.error("weights must be finite and non-negative", self._kpos(kws["weights"][1]))
        if "tie" in kws:
            if "weights" in kws:
                raise self.error("give either weights= or tie=, not both", self._kpos(kws["tie"][1]))
            tie = self._tie_target(kws["tie"][0], kws["tie"][1], shape, "f64")
        init, seed = self._init_kw(kws, wval is not None or tie is not None)
        name, attrs = self._new_name(namer, top, "s", e.pos)
        self.b.sum(
            [c.name for c in kids],
            units,
            wval,
            mask=mask,
            block=block,
            edges=edges,
            name=name,
            tie=tie,
            init=init,
            attrs=attrs or None,
            span=self.span(e.pos),
        )
        self._after_param(name, wdecl, seed, shape, "f64")
        self._mark_children(kids)
        return GroupVal(name, units, "sum")

    def _after_param(self, gname: str, decl: ParamVal | None, seed: int | None, shape, dtype) -> None:
        pname = self.b.group(gname).params  # type: ignore[union-attr]
        if decl is not None and decl.owner is None:
            decl.owner = gname
            decl.shape = tuple(shape)
            decl.dtype = dtype
            decl.ir_name = pname
        if seed is not None:
            self.seed_overrides[pname] = seed

    def make_input(self, kind: str, e: S.Call, namer, top):
        dt = dists.get(kind)
        allowed = INPUT_KEYWORDS + tuple(a for a in dt.arg_names if a not in INPUT_KEYWORDS)
        if not e.args:
            raise self.error(f"{kind}() needs the variable it is on, e.g. {kind}(x[0], units=4)", e.pos)
        if len(e.args) > 2:
            raise self.error(
                f"{kind}() takes a variable and optionally units, got {len(e.args)} positional arguments", e.args[2].pos
            )
        var = self.eval(e.args[0], namer)
        kws = self._kwargs(e, allowed, kind, namer)
        if isinstance(var, VarArray):
            raise self.error(
                f"'{var.name}' is an array of {var.size} variables; pick one, e.g. {var.name}[0]", e.args[0].pos
            )
        if not isinstance(var, VarVal):
            raise self.error(f"{kind}() needs a variable as its first argument, not {type_name(var)}", e.args[0].pos)
        units = None
        units_pos = None
        if len(e.args) == 2:
            if "units" in kws:
                raise self.error("units is given twice", kws["units"][1].pos)
            units = self.eval(e.args[1], namer)
            units_pos = e.args[1].pos
        elif "units" in kws:
            units, kw = kws["units"]
            units_pos = self._kpos(kw)
        if units is not None and (not _is_int(units) or units < 1):
            raise self.error(f"units must be a positive integer, got {_show(units)}", units_pos)
        domain = self.b._vars[var.index].domain
        args: dict[str, Any] = {}
        for a in dt.arg_names:
            if a in kws and a not in INPUT_KEYWORDS:
                v, kw = kws[a]
                if not isinstance(v, (int, float, str)) or isinstance(v, bool):
                    raise self.error(
                        f"{kind} argument {a} must be a number or string, not {type_name(v)}", self._kpos(kw)
                    )
                args[a] = v
        defaults = getattr(dt, "default_args", None)
        if callable(defaults):  # a family may derive its arguments from the domain
            for k, v in dict(defaults(domain)).items():
                args.setdefault(k, v)
        elif "k" in dt.arg_names and "k" not in args and domain.is_discrete:
            args["k"] = domain.k  # categorical-like families default to the variable's domain size
        dist = Dist.make(kind, **args)
        msg = dt.check_dist(dist)
        if msg:
            raise self.error(msg, e.pos)
        if not dt.accepts(dist, domain):
            raise self.error(f"{dist} does not fit variable '{var.name}' of domain {domain}", e.pos, _dist_hint(domain))
        dtype = dt.param_dtype(dist)
        npdtype = np.int64 if dtype == "i64" else np.float64
        pval = None
        decl = None
        if "params" in kws:
            v, kw = kws["params"]
            pval, decl = self._param_source(v, kw, "params", npdtype)
            if decl is not None:
                pval = decl.value
            if units is None and pval is not None and pval.ndim >= 1:
                units = int(pval.shape[0])
        if units is None:
            if decl is not None and decl.shape:
                units = decl.shape[0]
            else:
                raise self.error(f"{kind}() needs units=, the number of leaves", e.pos)
        shape = tuple(dt.param_shape(dist, units))
        tie = None
        if decl is not None:
            pval, tie = self._use_declared(decl, shape, dtype, kws["params"][1])
            if pval is not None and dtype == "i64":
                pval = pval.astype(np.int64)
        if pval is not None and tie is None:
            if tuple(pval.shape) != shape:
                raise self.error(
                    f"params have shape {list(pval.shape)}, expected {list(shape)} for {units} {kind} leaves",
                    self._kpos(kws["params"][1]),
                )
            msg = dt.check_params(dist, np.asarray(pval, dtype=npdtype))
            if msg:
                raise self.error(msg, self._kpos(kws["params"][1]))
        if "tie" in kws:
            if "params" in kws:
                raise self.error("give either params= or tie=, not both", self._kpos(kws["tie"][1]))
            tie = self._tie_target(kws["tie"][0], kws["tie"][1], shape, dtype)
        init, seed = self._init_kw(kws, pval is not None or tie is not None)
        name, attrs = self._new_name(namer, top, "in", e.pos)
        self.b.input(
            var.index, units, dist, pval, name=name, tie=tie, init=init, attrs=attrs or None, span=self.span(e.pos)
        )
        self._after_param(name, decl, seed, shape, dtype)
        return GroupVal(name, units, "input")

    def call_template(self, tmpl: Template, e: S.Call, namer: Namer | None, top: bool):
        f = self.frame
        assert f is not None
        node = tmpl.node
        if f.library:
            raise self.error("an imported file may only define templates and constants, not call them", e.pos)
        if len(e.args) > len(node.params):
            raise self.error(
                f"template '{node.name}' takes {len(node.params)} arguments, got {len(e.args) + len(e.kwargs)}",
                e.pos,
                f"def {node.name}({', '.join(node.params)})",
            )
        bound: dict[str, Any] = {}
        for p, a in zip(node.params, e.args, strict=False):
            bound[p] = self.eval(a, namer)
        for kw in e.kwargs:
            if kw.name not in node.params:
                raise self.error(
                    f"template '{node.name}' has no parameter '{kw.name}'",
                    kw.pos,
                    suggest(kw.name, node.params) or f"def {node.name}({', '.join(node.params)})",
                )
            if kw.name in bound:
                raise self.error(f"argument '{kw.name}' is given twice", kw.pos)
            bound[kw.name] = self.eval(kw.value, namer)
        missing = [p for p in node.params if p not in bound]
        if missing:
            raise self.error(
                f"template '{node.name}' is missing argument '{missing[0]}'",
                e.pos,
                f"def {node.name}({', '.join(node.params)})",
            )
        if self.template_depth >= MAX_TEMPLATE_DEPTH:
            raise self.error(f"templates nested more than {MAX_TEMPLATE_DEPTH} deep (runaway recursion?)", e.pos)
        # the instance's name: the statement's target when this call is the whole right-hand side
        if namer is None:
            namer = Namer(self._unique(f.prefix + "anon"))
        if top and not namer.used_top:
            inst = namer.base
            ret_namer = namer
        else:
            n = namer.counters.get(node.name, 0)
            namer.counters[node.name] = n + 1
            inst = self._unique(f"{namer.base}.{node.name}{n}")
            ret_namer = Namer(inst)
        scope = Scope(tmpl.scope, function=True)
        for p in node.params:
            scope.names[p] = (bound[p], node.pos)
        saved = self.frame
        self.frame = Frame(
            scope,
            prefix=inst + ".",
            calls=f.calls + [(node.name, e.pos)],
            source=node.pos.source if node.pos else f.source,
            in_template=True,
        )
        self.template_depth += 1
        try:
            self.exec_block(node.body)
            result = None
        except _Return as r:
            result = self.eval(r.value, ret_namer, top=True)
        finally:
            self.template_depth -= 1
            self.frame = saved
        if result is None:
            raise self.error(f"template '{node.name}' returned nothing", e.pos, "end its body with 'return ...'")
        return result

    # ---- builtins ------------------------------------------------------------------------
    def _plain_args(self, e: S.Call, name: str, lo: int, hi: int, namer) -> list[Any]:
        if e.kwargs and name != "permutation":
            raise self.error(f"{name}() takes no keyword arguments", e.kwargs[0].pos)
        if not lo <= len(e.args) <= hi:
            n = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise self.error(f"{name}() takes {n} arguments, got {len(e.args)}", e.pos)
        return [self.eval(a, namer) for a in e.args]

    def _b_load(self, e: S.Call, namer, top):
        args = self._plain_args(e, "load", 1, 2, namer)
        rel = args[0]
        if not isinstance(rel, str):
            raise self.error(f"load() needs a file name string, not {type_name(rel)}", e.args[0].pos)
        key = args[1] if len(args) > 1 else None
        if key is not None and not isinstance(key, str):
            raise self.error(f"the array name must be a string, not {type_name(key)}", e.args[1].pos)
        path = self.resolve_path(rel, e.pos)
        if not path.is_file():
            raise self._missing_file("weights file", path, rel, e.args[0].pos)
        arrays = self._load_file(path, rel, e.args[0].pos)
        if key is None:
            if len(arrays) != 1:
                raise self.error(
                    f'\'{rel}\' holds {len(arrays)} arrays; name one: load("{rel}", "NAME")',
                    e.pos,
                    "arrays: " + ", ".join(sorted(arrays)[:8]),
                )
            key = next(iter(arrays))
        if key not in arrays:
            raise self.error(
                f"'{rel}' has no array named '{key}'",
                e.args[1].pos,
                suggest(key, arrays) or ("arrays: " + ", ".join(sorted(arrays)[:8])),
            )
        a = np.asarray(arrays[key])
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise self.error(f"array '{key}' in '{rel}' does not hold numbers ({a.dtype})", e.pos)
        return ArrayVal(a, f"{rel}:{key}")

    def _load_file(self, path: Path, rel: str, pos) -> dict[str, np.ndarray]:
        key = str(path.resolve())
        if key in self.file_cache:
            return self.file_cache[key]
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                arrays = {"": np.load(path, allow_pickle=False)}
            elif suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            elif suffix == ".safetensors":
                from safetensors.numpy import load_file

                arrays = dict(load_file(str(path)))
            else:
                raise self.error(f"cannot load '{rel}': weights files are .npy, .npz or .safetensors", pos)
        except PcirError:
            raise
        except Exception as ex:  # noqa: BLE001 - any reader failure is a bad file, reported as such
            raise self.error(f"cannot read weights file '{rel}': {type(ex).__name__}: {ex}"[:300], pos) from None
        if suffix == ".npy":
            arrays = {path.stem: arrays[""]}
        self.file_cache[key] = arrays
        return arrays

    def _b_len(self, e, namer, top):
        (v,) = self._plain_args(e, "len", 1, 1, namer)
        if isinstance(v, (list, range)):
            return len(v)
        if isinstance(v, VarArray):
            return v.size
        if isinstance(v, GroupArray):
            return len(v.items)
        if isinstance(v, ArrayView):
            return len({k[len(v.prefix)] for k in v.array.keys_with_prefix(v.prefix)})
        if isinstance(v, ArrayVal):
            return int(v.value.shape[0]) if v.value.ndim else 1
        if isinstance(v, GroupVal):
            raise self.error("len() of a group: use units(...)? groups have units, not a length", e.pos)
        raise self.error(f"len() needs a list, range or array, not {type_name(v)}", e.args[0].pos)

    def _b_range(self, e, namer, top):
        args = self._plain_args(e, "range", 1, 3, namer)
        for a, x in zip(args, e.args, strict=True):
            if not _is_int(a):
                raise self.error(f"range() needs integers, not {type_name(a)}", x.pos)
        if len(args) == 3 and args[2] == 0:
            raise self.error("range() step must not be zero", e.args[2].pos)
        return range(*args)

    def _b_reversed(self, e, namer, top):
        (v,) = self._plain_args(e, "reversed", 1, 1, namer)
        seq = self.iterable(v, e.args[0].pos, "reversed()")
        self.check_len(seq, e.pos)
        return list(reversed(seq))

    def check_len(self, seq, pos: S.Pos | None) -> None:
        n = len(seq)
        if n > MAX_LIST:
            raise self.error(f"list too long ({n} items)", pos)
        self.steps += n
        if self.steps > self.max_steps:
            raise self.error(f"the program runs too long (more than {self.max_steps} steps); is a list too big?", pos)

    def _minmax(self, e, namer, name, fn):
        args = self._plain_args(e, name, 1, 1_000_000, namer)
        if len(args) == 1:
            seq = self.iterable(args[0], e.args[0].pos, f"{name}()")
            self.check_len(seq, e.pos)
            args = list(seq)
        if not args:
            raise self.error(f"{name}() of an empty list", e.pos)
        if not all(_is_num(a) for a in args):
            raise self.error(f"{name}() needs numbers", e.pos)
        return fn(args)

    def _b_min(self, e, namer, top):
        return self._minmax(e, namer, "min", min)

    def _b_max(self, e, namer, top):
        return self._minmax(e, namer, "max", max)

    def _b_abs(self, e, namer, top):
        (v,) = self._plain_args(e, "abs", 1, 1, namer)
        if not _is_num(v):
            raise self.error(f"abs() needs a number, not {type_name(v)}", e.args[0].pos)
        return abs(v)

    def _b_int(self, e, namer, top):
        (v,) = self._plain_args(e, "int", 1, 1, namer)
        if not _is_num(v) or (isinstance(v, float) and not math.isfinite(v)):
            raise self.error(f"int() needs a finite number, not {type_name(v)}", e.args[0].pos)
        return int(v)

    def _b_permutation(self, e, namer, top):
        seed = 0
        for kw in e.kwargs:
            if kw.name != "seed":
                raise self.error(f"permutation() has no argument '{kw.name}'", kw.pos, "permutation(n, seed=0)")
            seed = self.eval(kw.value, namer)
            if not _is_int(seed) or seed < 0:
                raise self.error(f"seed must be a non-negative integer, got {_show(seed)}", kw.value.pos)
        args = [self.eval(a, namer) for a in e.args]
        if len(args) == 2 and "seed" not in [k.name for k in e.kwargs]:
            seed = args.pop()
            if not _is_int(seed) or seed < 0:
                raise self.error(f"seed must be a non-negative integer, got {_show(seed)}", e.args[1].pos)
        if len(args) != 1:
            raise self.error("permutation(n, seed=0) takes the size n and a seed", e.pos)
        n = args[0]
        if not _is_int(n) or n < 0 or n > MAX_LIST:
            raise self.error(f"permutation() needs a size between 0 and {MAX_LIST}, got {_show(n)}", e.args[0].pos)
        self.check_len(range(n), e.pos)
        return [int(i) for i in np.random.default_rng(seed).permutation(n)]

    def _b_children(self, e, namer, top):
        parent, v = self._plain_args(e, "children", 2, 2, namer)
        seq = self.iterable(parent, e.args[0].pos, "children()")
        self.check_len(seq, e.pos)
        return [i for i, p in enumerate(seq) if _same(p, v)]


# ---- small helpers ------------------------------------------------------------------------------
def did_you_mean(name: str, candidates) -> str | None:
    """``suggest`` plus names one edit away (short names such as S1/S3 are below difflib's cutoff)."""
    cands = sorted(set(candidates))
    hint = suggest(name, cands)
    if hint:
        return hint
    for c in cands:
        if _one_edit(name, c):
            return f"did you mean '{c}'?"
    return None


def _one_edit(a: str, b: str) -> bool:
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    if len(a) > len(b):
        a, b = b, a
    return any(b[:i] + b[i + 1 :] == a for i in range(len(b)))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_dist(name: str) -> bool:
    return name in dists.names()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, (GroupArray,)) or isinstance(b, GroupArray):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values are unequal
        return False


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, range):
        return f"{v.start}..{v.stop}" if v.step == 1 else f"range({v.start}, {v.stop}, {v.step})"
    if isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (int, float, str, bool)) for x in v):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, GroupVal):
        return v.name
    if isinstance(v, VarVal):
        return v.name
    return type_name(v)


def _src_name(e: S.Expr) -> str:
    if isinstance(e, S.Name):
        return f"'{e.id}'"
    return "the list"


def _index_hint(arr: GroupArray) -> str | None:
    if not arr.items:
        return None
    keys = sorted(arr.items)
    if all(len(k) == 1 for k in keys):
        vals = [k[0] for k in keys]
        if vals == list(range(vals[0], vals[-1] + 1)):
            return f"{arr.display or arr.name} has indices {vals[0]}..{vals[-1]}"
        return (
            f"{arr.display or arr.name} has indices "
            + ", ".join(map(str, vals[:8]))
            + (", ..." if len(vals) > 8 else "")
        )
    return f"{arr.display or arr.name} has {len(keys)} items, e.g. [" + ", ".join(map(str, keys[0])) + "]"


def _dist_hint(domain: Domain) -> str:
    ok = []
    for n in dists.names():
        dt = dists.get(n)
        try:
            args = {"k": domain.k} if "k" in dt.arg_names and domain.is_discrete else {}
            if dt.check_dist(Dist.make(n, **args)) is None and dt.accepts(Dist.make(n, **args), domain):
                ok.append(n)
        except Exception:  # noqa: BLE001 - a family that cannot even be probed is just not suggested
            continue
    return f"distributions for a {domain} variable: " + ", ".join(ok) if ok else "no distribution fits this domain"


def _flatten_mul(e: S.Expr) -> list[S.Expr]:
    if isinstance(e, S.BinOp) and e.op == "*":
        return _flatten_mul(e.left) + _flatten_mul(e.right)
    return [e]


def _plain_numbers(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, (list, range)):
        return [_plain_numbers(x) for x in v]
    if isinstance(v, ArrayVal):
        return v.value.tolist()
    raise TypeError("not a number")


def _array_to_list(a: np.ndarray) -> list:
    return [x.item() if np.ndim(x) == 0 else ArrayVal(np.asarray(x), "") for x in a]


def lower_module(
    module: S.Module, base_dir: Path | None = None, path: str | None = None, max_steps: int = DEFAULT_MAX_STEPS
) -> Circuit:
    """Run a parsed module and return its circuit."""
    lw = Lowerer(base_dir, max_steps)
    lw._root_name = module.source.name
    if base_dir is not None:
        lw.source_dirs[module.source.name] = base_dir
    try:
        return lw.run_module(module, path)
    except RecursionError:
        raise PcSyntaxError("the program nests too deeply (templates or expressions)", None) from None
