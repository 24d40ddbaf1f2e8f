"""Helpers shared by the generators: input-distribution specs, block sizes, argument checks."""

from __future__ import annotations

import re

from ..ir import distributions as dists
from ..ir.diagnostics import PcirError
from ..ir.distributions import Dist, Domain

_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$")


def _arg_value(text: str):
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return t.strip("\"'")


def parse_dist(spec: str | Dist) -> Dist:
    """``"categorical(k=256)"`` (or a :class:`Dist`) -> Dist; the family must be registered."""
    if isinstance(spec, Dist):
        return spec
    m = _SPEC.match(spec)
    if not m:
        raise PcirError(f"cannot read the distribution '{spec}' (expected e.g. categorical(k=256))")
    kind, inner = m.group(1), m.group(2)
    if kind not in dists.names():
        from ..ir.diagnostics import suggest

        raise PcirError(f"unknown distribution '{kind}'", hint=suggest(kind, dists.names()))
    args = {}
    if inner and inner.strip():
        for part in inner.split(","):
            if "=" not in part:
                raise PcirError(f"distribution argument '{part.strip()}' in '{spec}' needs the form name=value")
            k, v = part.split("=", 1)
            args[k.strip()] = _arg_value(v)
    return Dist.make(kind, **args)


def resolve_input(input_dist: str | Dist | None, num_cats: int | None, domain: Domain | None) -> tuple[Dist, Domain]:
    """The leaf family and the variables' domain of a generated circuit.

    Missing family arguments are completed from ``num_cats`` (the number of values a variable
    takes): ``categorical`` gets ``k``, ``binomial`` ``n = num_cats - 1``, ``discrete_logistic``
    ``n = num_cats``. The domain defaults to what the family covers.
    """
    if input_dist is None:
        input_dist = "categorical"
    dist = parse_dist(input_dist)
    if num_cats is None and domain is not None and domain.is_discrete:
        num_cats = domain.k
    fill = {}
    if dist.kind == "categorical" and dist.arg("k") is None:
        fill["k"] = num_cats if num_cats is not None else 256
    elif dist.kind == "binomial" and dist.arg("n") is None:
        fill["n"] = (num_cats if num_cats is not None else 256) - 1
    elif dist.kind == "discrete_logistic" and dist.arg("n") is None:
        fill["n"] = num_cats if num_cats is not None else 256
    if fill:
        dist = Dist.make(dist.kind, **dict(dist.args), **fill)
    dt = dists.get(dist.kind)
    if dt.name in ("indicator", "literal"):
        raise PcirError(
            f"'{dt.name}' cannot be the input distribution of a generated structure (its nodes are not latent states)"
        )
    msg = dt.check_dist(dist)
    if msg:
        raise PcirError(f"input distribution {dist}: {msg}")
    if domain is None:
        if dist.kind == "categorical":
            domain = Domain.categorical(num_cats if num_cats is not None else int(dist.arg("k")))
        elif dist.kind == "bernoulli":
            domain = Domain.binary()
        elif dist.kind == "binomial":
            domain = Domain.categorical(num_cats if num_cats is not None else int(dist.arg("n")) + 1)
        elif dist.kind == "discrete_logistic":
            domain = Domain.categorical(num_cats if num_cats is not None else int(dist.arg("n")))
        elif dist.kind == "gaussian":
            domain = Domain.real()
        else:
            domain = Domain.categorical(num_cats) if num_cats is not None else Domain.real()
    if not dt.accepts(dist, domain):
        raise PcirError(f"input distribution {dist} does not fit variables of domain {domain}")
    return dist, domain


def pow2_divisor(n: int) -> int:
    """The largest power of two dividing ``n`` (PyJuice's default block-size rule)."""
    n = int(n)
    return n & -n if n > 0 else 1


def check_positive(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PcirError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
