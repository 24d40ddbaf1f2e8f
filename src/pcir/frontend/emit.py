"""IR -> `.pc`: write any circuit as a readable `.pc` file (so circuits built in Python can be saved).

``load(emit(c))`` has the same function and structure as ``c``; it is *equal* to ``c`` whenever
the names can be kept: group names that are identifiers or ``Name[i][j]``, variable names
``x0, x1, ...`` (written ``var x[n]``) or identifiers, parameters named ``<group>.w`` (the
loader's convention) or identifiers (written as ``param NAME``), float64 parameters. Other names
are made into identifiers; float32 parameters come back as float64.

Large arrays (more than ``INLINE_LIMIT`` numbers) are written inline unless a ``weights_file`` is
given, in which case they go there (``.npz``) and the text loads them with ``load(...)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..ir import distributions as dists
from ..ir.circuit import Circuit, InputGroup, Param, ProductGroup, SumGroup
from . import syntax as S
from .fmt import format_stmts
from .parser import KEYWORDS

INLINE_LIMIT = 64
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INDEXED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[-?[0-9]+\])+)$")
_VAR_NUM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*?)([0-9]+)$")
_BUILTINS = {
    "sum",
    "prod",
    "outer",
    "load",
    "len",
    "range",
    "reversed",
    "min",
    "max",
    "abs",
    "int",
    "permutation",
    "children",
}


def _reserved() -> set[str]:
    return set(KEYWORDS) | _BUILTINS | set(dists.names()) | {"binary", "categorical", "real"}


def _sanitize(name: str, used: set[str]) -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "g"
    if not (s[0].isalpha() or s[0] == "_"):
        s = "_" + s
    base = s
    k = 2
    while s in used or s in _reserved():
        s = f"{base}_{k}"
        k += 1
    used.add(s)
    return s


def _num(v) -> S.Expr:
    if isinstance(v, (bool, np.bool_)):
        return S.Bool(bool(v))
    if isinstance(v, (int, np.integer)):
        v = int(v)
        return S.Int(v) if v >= 0 else S.Unary("-", S.Int(-v))
    f = float(v)
    if not np.isfinite(f):
        raise ValueError("cannot write a non-finite number")
    return S.Float(f) if f >= 0 and not (f == 0 and np.signbit(f)) else S.Unary("-", S.Float(-f))


def _lit(a: np.ndarray) -> S.Expr:
    a = np.asarray(a)
    if a.ndim == 0:
        return _num(a.item())
    return S.ListLit(tuple(_lit(x) for x in a))


def _value(v) -> S.Expr:
    if isinstance(v, str):
        return S.Str(v)
    if isinstance(v, tuple):
        return S.ListLit(tuple(_value(x) for x in v))
    return _num(v)


class _Emitter:
    def __init__(self, c: Circuit, weights_file: Path | None):
        self.c = c
        self.weights_file = weights_file
        self.arrays: dict[str, np.ndarray] = {}
        self.used: set[str] = set()
        self.stmts: list[S.Stmt] = []
        self.var_ref: list[S.Expr] = []
        self.group_ref: dict[str, S.Expr] = {}
        self.group_target: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.loaded_name: dict[str, str] = {}  # group -> IR name the loader will give it

    # ---- names -----------------------------------------------------------------------------
    def variables(self) -> None:
        vs = self.c.variables
        i = 0
        while i < len(vs):
            m = _VAR_NUM.match(vs[i].name)
            if m and int(m.group(2)) == 0 and m.group(2) == "0":
                prefix = m.group(1)
                j = i
                while j < len(vs) and vs[j].name == f"{prefix}{j - i}" and vs[j].domain == vs[i].domain:
                    j += 1
                if prefix not in self.used and prefix not in _reserved() and _IDENT.match(prefix):
                    self.used.add(prefix)
                    self.stmts.append(S.VarDecl(prefix, (S.Int(j - i),), *_domain(vs[i].domain)))
                    self.var_ref += [S.Index(S.Name(prefix), (S.Int(k),)) for k in range(j - i)]
                    i = j
                    continue
            v = vs[i]
            name = v.name if (_IDENT.match(v.name) and v.name not in self.used and v.name not in _reserved()) else None
            if name is None:
                name = _sanitize(v.name, self.used)
            else:
                self.used.add(name)
            self.stmts.append(S.VarDecl(name, (), *_domain(v.domain)))
            self.var_ref.append(S.Name(name))
            i += 1

    def group_names(self) -> None:
        arrays: dict[str, int] = {}  # array base -> number of indices
        scalars: set[str] = set()
        plan: dict[str, tuple[str, tuple[int, ...]] | None] = {}
        for g in self.c:
            m = _INDEXED.match(g.name)
            if _IDENT.match(g.name):
                plan[g.name] = (g.name, ())
            elif m:
                key = tuple(int(k) for k in re.findall(r"-?[0-9]+", m.group(2)))
                plan[g.name] = (m.group(1), key)
            else:
                plan[g.name] = None
        # a base used both plain and indexed, or with different index counts, cannot be kept
        for _n, p in plan.items():
            if p is None:
                continue
            base, key = p
            if key:
                arrays.setdefault(base, len(key))
            else:
                scalars.add(base)
        bad = {b for b in arrays if b in scalars} | {
            b for b, p in ((p[0], p) for p in plan.values() if p is not None and p[1]) if arrays.get(b) != len(p[1])
        }
        bases = {p[0] for p in plan.values() if p is not None}
        clash = {b for b in bases if b in self.used or b in _reserved()}
        taken_bases: set[str] = set()
        for g in self.c:
            p = plan[g.name]
            if p is not None and p[0] not in bad and p[0] not in clash:
                base, key = p
                self.group_target[g.name] = (base, key)
                self.group_ref[g.name] = S.Index(S.Name(base), tuple(_num(k) for k in key)) if key else S.Name(base)
                self.loaded_name[g.name] = base + "".join(f"[{k}]" for k in key)
                taken_bases.add(base)
        self.used |= taken_bases
        for g in self.c:
            if g.name not in self.group_target:
                name = _sanitize(g.name, self.used)
                self.group_target[g.name] = (name, ())
                self.group_ref[g.name] = S.Name(name)
                self.loaded_name[g.name] = name

    # ---- arrays ----------------------------------------------------------------------------
    def array_expr(self, key: str, a: np.ndarray) -> S.Expr:
        a = np.asarray(a)
        if a.size > INLINE_LIMIT and self.weights_file is not None:
            k = re.sub(r"[^A-Za-z0-9_.\[\]-]+", "_", key)
            while k in self.arrays:
                k += "_"
            self.arrays[k] = a
            return S.Call(S.Name("load"), (S.Str(self.weights_file.name), S.Str(k)), ())
        return _lit(a)

    # ---- groups ----------------------------------------------------------------------------
    def emit(self) -> list[S.Stmt]:
        c = self.c
        self.variables()
        self.group_names()
        for k, v in c.attrs:
            self.stmts.append(S.AttrStmt(k, _value(v)))
        users: dict[str, list[str]] = {}
        for g in c:
            pn = getattr(g, "params", None)
            if pn is not None:
                users.setdefault(pn, []).append(g.name)
        # parameters that keep their names only as 'param NAME'
        declared: dict[str, str] = {}
        used_params: set[str] = set()
        for pn, us in users.items():
            owner = us[0]
            if pn in (f"{owner}.w", f"{self.loaded_name[owner]}.w"):
                continue  # the loader names it after its first user again
            name = (
                pn if (_IDENT.match(pn) and pn not in self.used and pn not in _reserved()) else _sanitize(pn, self.used)
            )
            self.used.add(name)
            declared[pn] = name
            p = c.params.get(pn)
            value = None if p is None or p.value is None else self.array_expr(pn, p.value)
            self.stmts.append(S.ParamDecl(name, value))
        created = 0  # params the loader has created so far (its default seed is this count)
        for g in c:
            kwargs: list[S.KwArg] = []
            pn = getattr(g, "params", None)
            param_kw = "params" if isinstance(g, InputGroup) else "weights"
            if pn is not None:
                p: Param | None = c.params.get(pn)
                first = pn not in used_params
                used_params.add(pn)
                if pn in declared:
                    kwargs_p = [S.KwArg(param_kw, S.Name(declared[pn]))]
                    if first and p is not None and p.value is None:
                        kwargs_p += _init_kwargs(p, created)
                    if first:
                        created += 1
                elif not first:
                    kwargs_p = [S.KwArg("tie", self.group_ref[users[pn][0]])]
                else:
                    created_before = created
                    created += 1
                    if p is None:
                        kwargs_p = []
                    elif p.value is not None:
                        kwargs_p = [S.KwArg(param_kw, self.array_expr(pn, p.value))]
                    else:
                        kwargs_p = _init_kwargs(p, created_before)
            else:
                kwargs_p = []
            if isinstance(g, InputGroup):
                call = self.input_call(g, kwargs_p)
            elif isinstance(g, ProductGroup):
                call = self.product_call(g)
            else:
                assert isinstance(g, SumGroup)
                call = self.sum_call(g, kwargs_p)
            base, key = self.group_target[g.name]
            attrs = tuple(S.KwArg(k, _value(v)) for k, v in g.attrs)
            self.stmts.append(S.Assign(base, ((tuple(_num(k) for k in key)),) if key else (), call, attrs))
            del kwargs
        if c.roots:
            self.stmts.append(S.Root(tuple(self.group_ref[r] for r in c.roots)))
        return self.stmts

    def input_call(self, g: InputGroup, pkw: list[S.KwArg]) -> S.Expr:
        dom = self.c.variables[g.var].domain if 0 <= g.var < self.c.num_vars else None
        kws = [S.KwArg("units", _num(g.units))]
        for k, v in g.dist.args:
            if k == "k" and dom is not None and dom.is_discrete and v == dom.k:
                continue  # the loader's default
            kws.append(S.KwArg(k, _value(v)))
        ref = self.var_ref[g.var] if 0 <= g.var < len(self.var_ref) else _num(g.var)
        return S.Call(S.Name(g.dist.kind), (ref,), tuple(kws + pkw))

    def product_call(self, g: ProductGroup) -> S.Expr:
        kids = [self.group_ref[ch] for ch in g.children]
        if g.pattern == "aligned":
            if len(kids) == 1:
                return S.Call(S.Name("prod"), tuple(kids), ())
            e = kids[0]
            for k in kids[1:]:
                e = S.BinOp("*", e, k)
            return e
        if g.pattern == "outer":
            return S.Call(S.Name("outer"), tuple(kids), ())
        assert g.edges is not None
        return S.Call(S.Name("prod"), tuple(kids), (S.KwArg("edges", self.array_expr(f"{g.name}.edges", g.edges)),))

    def sum_call(self, g: SumGroup, pkw: list[S.KwArg]) -> S.Expr:
        kids = tuple(self.group_ref[ch] for ch in g.children)
        kws = [S.KwArg("units", _num(g.units))]
        if g.pattern == "block":
            assert g.mask is not None and g.block is not None
            kws.append(S.KwArg("mask", self.array_expr(f"{g.name}.mask", g.mask.astype(np.int64))))
            kws.append(S.KwArg("block", S.ListLit((_num(g.block[0]), _num(g.block[1])))))
        elif g.pattern == "explicit":
            assert g.edges is not None
            kws.append(S.KwArg("edges", self.array_expr(f"{g.name}.edges", g.edges)))
        return S.Call(S.Name("sum"), kids, tuple(kws + pkw))


def _init_kwargs(p: Param, default_seed: int) -> list[S.KwArg]:
    out = []
    if p.init != "random":
        out.append(S.KwArg("init", S.Str(p.init)))
    if p.seed != default_seed:
        out.append(S.KwArg("seed", _num(p.seed)))
    return out


def _domain(d) -> tuple[str, S.Expr | None]:
    if d.kind == "real":
        return "real", None
    if d.k == 2:
        return "binary", None
    return "categorical", _num(d.k)


def emit_pc(
    circuit: Circuit, *, weights_file: str | Path | None = None, header: str | None = None
) -> tuple[str, dict[str, np.ndarray]] | str:
    """The `.pc` text of ``circuit``.

    With ``weights_file`` (a ``.npz`` name, relative to where the text will be saved), arrays
    larger than ``INLINE_LIMIT`` are referenced with ``load(...)`` and the function returns
    ``(text, arrays)``; write ``arrays`` with ``numpy.savez`` to that file (:func:`save_pc` does).
    """
    wf = Path(weights_file) if weights_file is not None else None
    em = _Emitter(circuit, wf)
    stmts = em.emit()
    s = circuit.stats()
    head = (
        header
        if header is not None
        else f"# written by pcir: {circuit.num_vars} variables, {s['groups']} groups, {s['nodes']} nodes"
    )
    text = format_stmts(tuple(stmts))
    if head:
        text = (
            "\n".join("# " + ln.lstrip("# ") if not ln.startswith("#") else ln for ln in head.splitlines())
            + "\n"
            + text
        )
    if wf is not None:
        return text, em.arrays
    return text


def save_pc(circuit: Circuit, path: str | Path) -> Path:
    """Write ``circuit`` to ``path`` (a `.pc` file) and its large arrays to ``<stem>.npz`` beside it."""
    p = Path(path)
    npz = p.with_suffix(".npz")
    text, arrays = emit_pc(circuit, weights_file=npz.name)  # type: ignore[misc]
    if arrays:
        np.savez(npz, **arrays)
    p.write_text(text)
    return p
