"""Hypothesis strategies for random *valid* circuits and matching data.

``circuits(...)`` draws a small, smooth, decomposable, normalised circuit:

* a random variable set (binary, categorical(k) and, with ``allow_real``, real variables);
* every scope is a *region* built once and cached, so regions are shared by several parents (DAG);
* leaves: categorical / bernoulli / gaussian / indicator input groups (whatever fits the domain and
  is allowed by ``dists``), sometimes tied to an earlier input group of the same shape;
* products over a random split of a scope, ``aligned``, ``outer`` or ``explicit``;
* sums ``dense``, ``block`` (random block shape and mask) or ``explicit`` (random edge list),
  sometimes tied to an earlier sum of the same structure (same parameter name);
* parameters concrete (f64; sometimes f32 with ``f32=True``) or lazily initialised
  (``init(random|uniform, seed)``);
* sometimes attributes (bs/layer/slot/fuse and odd values), quoted names and several roots.

Every sum node's weights sum to 1 (to float64 precision; to ~1e-7 with ``f32=True``) and every leaf is a normalised distribution over its domain, so
the probability of all assignments is 1 for each root (marginalise real variables with the missing
mask to check circuits that have some).

``data_for(circuit, n)`` draws ``(x, missing)``; ``random_data(circuit, n, rng)`` is the numpy
version for use outside hypothesis.

Usage::

    @given(circuits(max_vars=3), st.data())
    def test_something(c, data):
        x, missing = data.draw(data_for(c, 5))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from pcir.ir import Circuit, Dist, Domain, InputGroup, Param, ProductGroup, SumGroup, Variable, make_attrs
from pcir.ir import distributions as dists_registry

ALL_DISTS = ("categorical", "bernoulli", "gaussian", "indicator")
# Families registered later; opt in with e.g. ``circuits(dists=ALL_DISTS + EXTRA_DISTS)``.
EXTRA_DISTS = ("binomial", "discrete_logistic", "literal")

# Names that need quoting in .pcir text: exercises the printer's and parser's string handling.
ODD_NAMES = ("my group", 'a"b', "back\\slash", "tab\tname", "ünï", "%pct", "1digit", "x-y z", "")
ODD_ATTR_VALUES = (
    "fused",
    "scratch",
    'with "quotes"',
    "",
    "new\nline",
    -3,
    0,
    7,
    2.5,
    -0.0,
    1e-300,
    1e300,
    True,
    False,
    (1, 2),
    ("a", 3),
)

# Outer products multiply unit counts; keep them small so enumeration stays cheap.
MAX_OUTER_UNITS = 16


@dataclass
class _Gen:
    draw: object
    rng: np.random.Generator
    max_units: int
    dists: tuple[str, ...]
    lazy: bool
    f32: bool
    attrs: bool
    variables: list[Variable] = field(default_factory=list)
    groups: list = field(default_factory=list)
    params: dict[str, Param] = field(default_factory=dict)
    regions: dict[frozenset, list[str]] = field(default_factory=dict)
    units: dict[str, int] = field(default_factory=dict)
    input_ties: dict[tuple, str] = field(default_factory=dict)
    sum_ties: dict[tuple, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    # ---- small helpers -------------------------------------------------------------------
    def d(self, strategy):
        return self.draw(strategy)  # type: ignore[operator]

    def fresh(self, prefix: str) -> str:
        i = self.counters.get(prefix, 0)
        self.counters[prefix] = i + 1
        return f"{prefix}{i}"

    def n_units(self) -> int:
        return self.d(st.integers(1, self.max_units))

    def group_attrs(self):
        if not self.attrs or not self.d(st.booleans()):
            return ()
        keys = self.d(
            st.lists(st.sampled_from(["bs", "layer", "slot", "fuse", "note", "weird key.1"]), max_size=3, unique=True)
        )
        out = {}
        for k in keys:
            if k in ("bs", "layer", "slot"):
                out[k] = self.d(st.integers(0, 64))
            elif k == "fuse":
                out[k] = self.d(st.sampled_from(["fused", "scratch"]))
            else:
                out[k] = self.d(st.sampled_from(ODD_ATTR_VALUES))
        return make_attrs(out)

    def add_param(self, name: str, shape: tuple[int, ...], dtype: str, value: np.ndarray | None) -> str:
        if value is None:
            init = self.d(st.sampled_from(["random", "uniform"]))
            self.params[name] = Param(shape, dtype, None, init, self.d(st.integers(0, 2**31 - 1)))
        else:
            self.params[name] = Param(shape, dtype, value)
        return name

    def want_lazy(self) -> bool:
        return self.lazy and self.d(st.booleans())

    def float_dtype(self) -> str:
        return "f32" if self.f32 and self.d(st.integers(0, 4)) == 4 else "f64"

    # ---- leaves --------------------------------------------------------------------------
    def leaf_dists(self, dom: Domain) -> list[Dist]:
        out = []
        if dom.is_discrete:
            if "categorical" in self.dists:
                out.append(Dist.make("categorical", k=dom.k))
            if "bernoulli" in self.dists and dom.k == 2:
                out.append(Dist.make("bernoulli"))
            if "indicator" in self.dists:
                out.append(Dist.make("indicator"))
            # normalised over the domain only when the family's support is exactly 0..k-1
            if "binomial" in self.dists:
                out.append(Dist.make("binomial", n=dom.k - 1))
            if "discrete_logistic" in self.dists:
                out.append(Dist.make("discrete_logistic", n=dom.k))
            if "literal" in self.dists:
                out.append(Dist.make("literal", value=self.d(st.integers(0, dom.k - 1))))
        elif "gaussian" in self.dists:
            out.append(Dist.make("gaussian") if self.d(st.booleans()) else Dist.make("gaussian", min_std=0.01))
        return out

    def input_group(self, v: int) -> str | None:
        dom = self.variables[v].domain
        options = self.leaf_dists(dom)
        if not options:
            return None
        dist = self.d(st.sampled_from(options))
        units = self.n_units()
        name = self.fresh("in")
        key = (dist, units, dom)
        if key in self.input_ties and self.d(st.booleans()):
            pname = self.input_ties[key]
        else:
            pname = self.input_param(name + ".w", dist, dom, units)
            self.input_ties.setdefault(key, pname)
        self.groups.append(InputGroup(name, v, units, dist, pname, self.group_attrs()))
        self.units[name] = units
        return name

    def input_param(self, pname: str, dist: Dist, dom: Domain, units: int) -> str:
        r = self.rng
        if dist.kind == "indicator":
            # a lazy indicator init is arange(units): only valid while every value is in the domain
            if units <= dom.k and self.want_lazy():
                return self.add_param(pname, (units,), "i64", None)
            return self.add_param(pname, (units,), "i64", r.integers(0, dom.k, size=units))
        if dist.kind not in ALL_DISTS:  # a later family: its own shape and initialisation
            dt = dists_registry.get(dist.kind)
            shape, dtype = dt.param_shape(dist, units), dt.param_dtype(dist)
            if self.want_lazy():
                return self.add_param(pname, shape, dtype, None)
            value = np.asarray(dt.init_params(dist, units, r, "random")).reshape(shape)
            return self.add_param(pname, shape, dtype, value)
        if self.want_lazy():
            shape = (
                (units, dom.k) if dist.kind == "categorical" else (units, 2) if dist.kind == "gaussian" else (units,)
            )
            return self.add_param(pname, shape, "f64", None)
        dtype = self.float_dtype()
        if dist.kind == "categorical":
            v = r.uniform(0.05, 1.0, size=(units, dom.k))
            v = v / v.sum(axis=1, keepdims=True)
        elif dist.kind == "bernoulli":
            v = r.uniform(0.05, 0.95, size=units)
        else:
            v = np.stack([r.normal(0.0, 1.5, size=units), r.uniform(0.5, 2.0, size=units)], axis=1)
        return self.add_param(pname, v.shape, dtype, _cast(v, dtype))

    # ---- inner groups --------------------------------------------------------------------
    def product(self, parts: list[list[str]]) -> str:
        """One product group over one child chosen from each part (disjoint scopes)."""
        name = self.fresh("p")
        kind = self.d(st.sampled_from(["aligned", "outer", "explicit"]))
        children = None
        if kind == "aligned":
            by_units = [{self.units[g] for g in part} for part in parts]
            common = sorted(set.intersection(*by_units))
            if common:
                u = self.d(st.sampled_from(common))
                children = [self.d(st.sampled_from([g for g in part if self.units[g] == u])) for part in parts]
                units, edges = u, None
            else:
                kind = "explicit"
        if children is None:
            children = [self.d(st.sampled_from(part)) for part in parts]
        cu = [self.units[c] for c in children]
        if kind == "outer" and int(np.prod(cu)) > MAX_OUTER_UNITS:
            kind = "explicit"
        if kind == "outer":
            units, edges = int(np.prod(cu)), None
        elif kind == "explicit":
            units = self.n_units()
            edges = np.stack([self.rng.integers(0, n, size=units) for n in cu], axis=1)
        self.groups.append(ProductGroup(name, tuple(children), kind, units, edges, self.group_attrs()))
        self.units[name] = units
        return name

    def sum_group(self, children: list[str], units: int | None = None, like: SumGroup | None = None) -> str:
        name = self.fresh("s")
        k = sum(self.units[c] for c in children)
        if like is not None:  # a tied sibling: same structure, same parameter
            g = SumGroup(
                name,
                like.units,
                tuple(children),
                like.pattern,
                like.params,
                like.mask,
                like.block,
                like.edges,
                self.group_attrs(),
            )
            self.groups.append(g)
            self.units[name] = like.units
            return name
        units = units or self.n_units()
        pattern = self.d(st.sampled_from(["dense", "block", "explicit"]))
        mask = block = edges = None
        r = self.rng
        if pattern == "block":
            bm = self.d(st.sampled_from([b for b in range(1, units + 1) if units % b == 0]))
            bk = self.d(st.sampled_from([b for b in range(1, k + 1) if k % b == 0]))
            mask = r.random((units // bm, k // bk)) < 0.6
            mask[np.arange(mask.shape[0]), r.integers(0, mask.shape[1], size=mask.shape[0])] = True
            block = (bm, bk)
            shape: tuple[int, ...] = (units, k)
            emask = np.kron(mask, np.ones(block, dtype=bool)).astype(bool)
        elif pattern == "explicit":
            dense = r.random((units, k)) < 0.5
            dense[np.arange(units), r.integers(0, k, size=units)] = True
            edges = np.argwhere(dense)
            edges = edges[r.permutation(len(edges))]
            shape = (len(edges),)
        else:
            shape = (units, k)
            emask = np.ones((units, k), dtype=bool)
        key = (
            pattern,
            units,
            k,
            None if mask is None else (mask.tobytes(), mask.shape, block),
            None if edges is None else edges.tobytes(),
        )
        if key in self.sum_ties and self.d(st.booleans()):
            pname = self.sum_ties[key]
        elif self.want_lazy():
            pname = self.add_param(name + ".w", shape, "f64", None)
        else:
            raw = r.uniform(0.05, 1.0, size=shape)
            if pattern == "explicit":
                tot = np.bincount(edges[:, 0], weights=raw, minlength=units)
                v = raw / tot[edges[:, 0]]
            else:
                raw = raw * emask
                v = raw / raw.sum(axis=1, keepdims=True)
            dtype = self.float_dtype()
            pname = self.add_param(name + ".w", shape, dtype, _cast(v, dtype))
        self.sum_ties.setdefault(key, pname)
        self.groups.append(
            SumGroup(name, units, tuple(children), pattern, pname, mask, block, edges, self.group_attrs())
        )
        self.units[name] = units
        return name

    def sums_over(self, pool: list[str], units: int | None = None, max_sums: int = 2) -> list[str]:
        """1..max_sums sum groups over subsets of ``pool`` (all of one scope), maybe one tied."""
        out = []
        for i in range(self.d(st.integers(1, max_sums))):
            children = self.d(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
            if i > 0 and self.d(st.booleans()):
                first = next(g for g in self.groups if g.name == out[0])
                sig = [self.units[c] for c in first.children]
                # same unit layout from the pool when it has one, else the same children
                alt = [c for c in pool if self.units[c] == sig[0]] if len(sig) == 1 else []
                chosen = [self.d(st.sampled_from(alt))] if alt else list(first.children)
                out.append(self.sum_group(chosen, like=first))
            else:
                out.append(self.sum_group(children, units))
        return out

    # ---- regions -------------------------------------------------------------------------
    def region(self, scope: frozenset) -> list[str]:
        """Groups whose every node is a normalised distribution over ``scope`` (cached: shared)."""
        if scope in self.regions:
            return self.regions[scope]
        if len(scope) == 1:
            (v,) = scope
            leaves = [n for n in (self.input_group(v) for _ in range(self.d(st.integers(1, 2)))) if n is not None]
            if not leaves:
                raise AssertionError(f"no allowed distribution for {self.variables[v].domain}")
            out = list(leaves)
            if self.d(st.booleans()):
                out += self.sums_over(leaves, max_sums=1)
        else:
            prods = []
            items = sorted(scope)
            for _ in range(self.d(st.integers(1, 2))):
                nparts = self.d(st.integers(2, min(3, len(items))))
                labels = self.d(st.lists(st.integers(0, nparts - 1), min_size=len(items), max_size=len(items)))
                labels[:nparts] = list(range(nparts))  # every part non-empty
                perm = self.d(st.permutations(items))
                parts = [frozenset(v for v, lab in zip(perm, labels, strict=True) if lab == p) for p in range(nparts)]
                prods.append(self.product([self.region(p) for p in parts]))
            out = self.sums_over(prods)
            if self.d(st.booleans()):
                out = out + prods  # products feed products higher up, too
        self.regions[scope] = out
        return out


def _cast(v: np.ndarray, dtype: str) -> np.ndarray:
    return v.astype(np.float32 if dtype == "f32" else np.float64)


def _domain_strategy(allow_real: bool, dists: tuple[str, ...]):
    options = []
    if any(d in dists for d in ("categorical", "bernoulli", "indicator") + EXTRA_DISTS):
        options += [Domain.binary(), Domain.categorical(3)]
        if any(d in dists for d in ("categorical", "indicator") + EXTRA_DISTS):
            options.append(Domain.categorical(4))
    if allow_real and "gaussian" in dists:
        options.append(Domain.real())
    if not options:
        raise ValueError(f"no variable domain fits the distributions {dists}")
    return st.sampled_from(options)


@st.composite
def circuits(
    draw,
    max_vars: int = 4,
    max_units: int = 4,
    dists: tuple[str, ...] = ALL_DISTS,
    allow_real: bool = True,
    *,
    min_vars: int = 1,
    lazy: bool = True,
    f32: bool = False,
    attrs: bool = True,
    odd_names: bool = True,
    multi_root: bool = True,
) -> Circuit:
    """A random valid, normalised circuit (see the module docstring)."""
    n = draw(st.integers(min_vars, max_vars))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    g = _Gen(draw, rng, max_units, tuple(dists), lazy, f32, attrs)
    dom = _domain_strategy(allow_real, tuple(dists))
    for i in range(n):
        d = draw(dom)
        if "bernoulli" in dists and not any(x in dists for x in ("categorical", "indicator")) and d.is_discrete:
            d = Domain.binary()
        g.variables.append(Variable(f"x{i}", d))
    top = g.region(frozenset(range(n)))
    roots = g.sums_over(top, units=1, max_sums=2 if multi_root else 1)
    circuit = _prune(g, roots)
    if odd_names and draw(st.integers(0, 3)) == 3:
        circuit = _rename_odd(circuit, draw)
    if attrs and draw(st.integers(0, 3)) == 3:
        circuit = circuit.replace(
            attrs=make_attrs(pipeline="collapse-nodes,partition-blocks{bs=32}", seed=draw(st.integers(0, 9)))
        )
    return circuit


def _prune(g: _Gen, roots: list[str]) -> Circuit:
    """Drop groups no root reaches (and parameters no group uses): the verifier forbids them."""
    by_name = {x.name: x for x in g.groups}
    live: set[str] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(by_name[n].children)
    groups = [x for x in g.groups if x.name in live]
    used = {x.params for x in groups if hasattr(x, "params")}
    params = {k: v for k, v in g.params.items() if k in used}
    return Circuit(g.variables, groups, params, roots)


def _rename_odd(c: Circuit, draw) -> Circuit:
    """Give one group, one parameter and one variable names that must be quoted."""
    names = list(c.groups)
    target = draw(st.sampled_from(names))
    new = draw(st.sampled_from([n for n in ODD_NAMES if n not in c and n not in c.params]))

    def ren(n: str) -> str:
        return new if n == target else n

    groups = []
    for x in c:
        x = x.renamed(ren(x.name))
        if not isinstance(x, InputGroup):
            x = replace(x, children=tuple(ren(ch) for ch in x.children))
        groups.append(x)
    pnames = list(c.params)
    ptarget = draw(st.sampled_from(pnames))
    pnew = draw(st.sampled_from([n for n in ODD_NAMES if n not in c.params]))

    def pren(n: str) -> str:
        return pnew if n == ptarget else n

    groups = [replace(x, params=pren(x.params)) if hasattr(x, "params") else x for x in groups]
    params = {pren(k): v for k, v in c.params.items()}
    variables = list(c.variables)
    vi = draw(st.integers(0, len(variables) - 1))
    variables[vi] = Variable(
        draw(st.sampled_from([n for n in ODD_NAMES if n not in {v.name for v in variables}])), variables[vi].domain
    )
    return Circuit(variables, groups, params, [ren(r) for r in c.roots], c.attrs)


# ---- data ----------------------------------------------------------------------------------
def random_data(circuit: Circuit, n: int, rng: np.random.Generator, missing_rate: float = 0.0):
    """Valid ``(x, missing)`` for ``circuit``: float64 [n, V] and bool [n, V]."""
    x = np.empty((n, circuit.num_vars))
    for v, var in enumerate(circuit.variables):
        if var.domain.is_discrete:
            x[:, v] = rng.integers(0, var.domain.k, size=n)
        else:
            x[:, v] = rng.normal(0.0, 1.5, size=n)
    missing = rng.random(x.shape) < missing_rate
    return x, missing


def data_for(circuit: Circuit, n: int, missing: bool = True):
    """Strategy for ``(x, missing)`` of ``n`` rows (no entry missing when ``missing`` is false)."""
    rate = st.sampled_from([0.0, 0.3, 0.7]) if missing else st.just(0.0)
    return st.tuples(st.integers(0, 2**32 - 1), rate).map(
        lambda t: random_data(circuit, n, np.random.default_rng(t[0]), t[1])
    )


def discrete_total(circuit: Circuit, root: str | None = None) -> float:
    """Sum of probabilities over every assignment of the discrete variables (reals marginalised)."""
    from pcir.ir.evaluator import log_likelihood

    disc = [v for v in circuit.variables if v.domain.is_discrete]
    ks = [v.domain.k for v in disc]
    grids = np.meshgrid(*[np.arange(k) for k in ks], indexing="ij") if ks else []
    combos = np.stack([g.reshape(-1) for g in grids], axis=1) if ks else np.zeros((1, 0))
    x = np.zeros((len(combos), circuit.num_vars))
    miss = np.zeros(x.shape, dtype=bool)
    j = 0
    for v, var in enumerate(circuit.variables):
        if var.domain.is_discrete:
            x[:, v] = combos[:, j]
            j += 1
        else:
            miss[:, v] = True
    return float(np.exp(log_likelihood(circuit, x, miss, root=root)).sum())


def at_least(n: int):
    """``@settings`` with at least ``n`` examples (more when the loaded profile asks for more)."""
    from hypothesis import settings

    return settings(max_examples=max(n, settings.default.max_examples))
