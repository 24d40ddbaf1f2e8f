"""Input distributions: the IR-level (numpy, float64) definition of each leaf family.

A distribution family is registered once here with everything the reference side needs:
its parameter shape, default initialisation, which variable domains it accepts, its
log-probability, its EM update from expected counts (flows) and a sampler. The backend keeps a
parallel registry keyed by the same name for its kernels.

Parameter layouts (``units`` nodes in the group):

=============  =====================  ==========================================
family         parameter shape        meaning
=============  =====================  ==========================================
categorical    (units, k)             probs[u, c] = P(x = c), rows sum to 1
bernoulli      (units,)               p[u] = P(x = 1)
gaussian       (units, 2)             [mean, std]
indicator      (units,)               value[u]: node u is 1 iff x == value[u]
=============  =====================  ==========================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .diagnostics import VerifyError

ArgValue = int | float | str


@dataclass(frozen=True)
class Domain:
    """The set of values a variable takes: ``categorical`` (k values 0..k-1) or ``real``."""

    kind: str  # "categorical" | "real"
    k: int = 0

    @staticmethod
    def categorical(k: int) -> Domain:
        return Domain("categorical", int(k))

    @staticmethod
    def binary() -> Domain:
        return Domain("categorical", 2)

    @staticmethod
    def real() -> Domain:
        return Domain("real", 0)

    @property
    def is_discrete(self) -> bool:
        return self.kind == "categorical"

    def __str__(self) -> str:
        if self.kind == "categorical":
            return "binary" if self.k == 2 else f"categorical({self.k})"
        return "real"


@dataclass(frozen=True)
class Dist:
    """A distribution family with its static arguments, e.g. ``Dist("categorical", (("k", 4),))``."""

    kind: str
    args: tuple[tuple[str, ArgValue], ...] = ()

    def arg(self, key: str, default: ArgValue | None = None) -> ArgValue | None:
        for k, v in self.args:
            if k == key:
                return v
        return default

    @staticmethod
    def make(kind: str, **args: ArgValue) -> Dist:
        return Dist(kind, tuple(sorted(args.items())))

    def __str__(self) -> str:
        if not self.args:
            return self.kind
        inner = ", ".join(f"{k}={_fmt_arg(v)}" for k, v in self.args)
        return f"{self.kind}({inner})"


def _fmt_arg(v: ArgValue) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


class DistType(Protocol):
    """What a distribution family provides to the IR and the reference evaluator."""

    name: str
    arg_names: tuple[str, ...]
    learnable: bool

    def param_shape(self, dist: Dist, units: int) -> tuple[int, ...]: ...

    def param_dtype(self, dist: Dist) -> str: ...

    def check_dist(self, dist: Dist) -> str | None: ...

    def accepts(self, dist: Dist, domain: Domain) -> bool: ...

    def init_params(self, dist: Dist, units: int, rng: np.random.Generator, init: str) -> np.ndarray: ...

    def check_params(self, dist: Dist, value: np.ndarray) -> str | None: ...

    def log_prob(self, dist: Dist, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``x``: float64 [N] values of the variable; returns float64 [N, units]."""
        ...

    def em_update(
        self, dist: Dist, params: np.ndarray, x: np.ndarray, flows: np.ndarray, pseudocount: float
    ) -> np.ndarray:
        """Closed-form M-step from flows [N, units] (expected counts) of the observed samples."""
        ...

    def sample(self, dist: Dist, params: np.ndarray, units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One value for each entry of ``units`` (int [M]) -> float64 [M]."""
        ...


_REGISTRY: dict[str, DistType] = {}


def register(dist_type: DistType) -> DistType:
    """Register a distribution family under ``dist_type.name``."""
    _REGISTRY[dist_type.name] = dist_type
    return dist_type


def get(kind: str) -> DistType:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise VerifyError(f"unknown distribution '{kind}' (known: {', '.join(sorted(_REGISTRY))})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def _normalize_rows(a: np.ndarray) -> np.ndarray:
    s = a.sum(axis=-1, keepdims=True)
    return a / np.where(s > 0, s, 1.0)


class Categorical:
    name = "categorical"
    arg_names = ("k",)
    learnable = True

    def param_shape(self, dist, units):
        return (units, int(dist.arg("k")))

    def param_dtype(self, dist):
        return "f64"

    def check_dist(self, dist):
        k = dist.arg("k")
        if not isinstance(k, int) or k < 1:
            return "categorical needs an integer argument k >= 1"
        return None

    def accepts(self, dist, domain):
        return domain.is_discrete and domain.k <= int(dist.arg("k"))

    def init_params(self, dist, units, rng, init):
        k = int(dist.arg("k"))
        if init == "uniform":
            return np.full((units, k), 1.0 / k)
        return _normalize_rows(rng.uniform(0.05, 1.0, size=(units, k)))

    def check_params(self, dist, value):
        if np.any(value < 0) or not np.all(np.isfinite(value)):
            return "categorical probabilities must be finite and non-negative"
        if not np.allclose(value.sum(axis=-1), 1.0, atol=1e-4):
            return "categorical probabilities must sum to 1 in each row"
        return None

    def log_prob(self, dist, params, x):
        idx = x.astype(np.int64)
        with np.errstate(divide="ignore"):
            return np.log(params[:, idx].T)

    def em_update(self, dist, params, x, flows, pseudocount):
        k = params.shape[1]
        counts = np.zeros_like(params)
        idx = x.astype(np.int64)
        for c in range(k):
            counts[:, c] = flows[idx == c].sum(axis=0)
        return (counts + pseudocount / k) / (counts.sum(axis=1, keepdims=True) + pseudocount)

    def sample(self, dist, params, units, rng):
        p = params[units]
        u = rng.random(len(units))[:, None]
        return (np.cumsum(p, axis=1) < u).sum(axis=1).clip(0, p.shape[1] - 1).astype(np.float64)


class Bernoulli:
    name = "bernoulli"
    arg_names = ()
    learnable = True

    def param_shape(self, dist, units):
        return (units,)

    def param_dtype(self, dist):
        return "f64"

    def check_dist(self, dist):
        return None

    def accepts(self, dist, domain):
        return domain.is_discrete and domain.k <= 2

    def init_params(self, dist, units, rng, init):
        if init == "uniform":
            return np.full((units,), 0.5)
        return rng.uniform(0.1, 0.9, size=(units,))

    def check_params(self, dist, value):
        if np.any(value < 0) or np.any(value > 1) or not np.all(np.isfinite(value)):
            return "bernoulli probabilities must lie in [0, 1]"
        return None

    def log_prob(self, dist, params, x):
        with np.errstate(divide="ignore"):
            return np.where(x[:, None] > 0.5, np.log(params)[None, :], np.log1p(-params)[None, :])

    def em_update(self, dist, params, x, flows, pseudocount):
        ones = flows[x > 0.5].sum(axis=0)
        total = flows.sum(axis=0)
        return (ones + pseudocount / 2) / (total + pseudocount)

    def sample(self, dist, params, units, rng):
        return (rng.random(len(units)) < params[units]).astype(np.float64)


class Gaussian:
    """Normal leaves. EM: weighted mean and std; the pseudocount pulls towards the old
    parameters (``pseudocount`` virtual samples drawn from them) and std is floored at ``min_std``."""

    name = "gaussian"
    arg_names = ("min_std",)
    learnable = True

    def param_shape(self, dist, units):
        return (units, 2)

    def param_dtype(self, dist):
        return "f64"

    def check_dist(self, dist):
        return None

    def accepts(self, dist, domain):
        return True

    def init_params(self, dist, units, rng, init):
        p = np.empty((units, 2))
        p[:, 0] = 0.0 if init == "uniform" else rng.normal(0.0, 1.0, size=units)
        p[:, 1] = 1.0
        return p

    def check_params(self, dist, value):
        if not np.all(np.isfinite(value)) or np.any(value[:, 1] <= 0):
            return "gaussian parameters must be finite with std > 0"
        return None

    def log_prob(self, dist, params, x):
        mu, sd = params[:, 0][None, :], params[:, 1][None, :]
        z = (x[:, None] - mu) / sd
        return -0.5 * z * z - np.log(sd) - 0.5 * math.log(2 * math.pi)

    def em_update(self, dist, params, x, flows, pseudocount):
        mu0, sd0 = params[:, 0], params[:, 1]
        w = flows.sum(axis=0) + pseudocount
        s1 = (flows * x[:, None]).sum(axis=0) + pseudocount * mu0
        s2 = (flows * x[:, None] ** 2).sum(axis=0) + pseudocount * (sd0**2 + mu0**2)
        mu = s1 / np.where(w > 0, w, 1.0)
        var = s2 / np.where(w > 0, w, 1.0) - mu**2
        min_std = float(dist.arg("min_std", 1e-3))
        sd = np.sqrt(np.maximum(var, min_std**2))
        mu = np.where(w > 0, mu, mu0)
        sd = np.where(w > 0, sd, sd0)
        return np.stack([mu, sd], axis=1)

    def sample(self, dist, params, units, rng):
        return rng.normal(params[units, 0], params[units, 1])


class Indicator:
    """Literals: node u is 1 when the variable equals ``value[u]``, else 0. Not learnable."""

    name = "indicator"
    arg_names = ()
    learnable = False

    def param_shape(self, dist, units):
        return (units,)

    def param_dtype(self, dist):
        return "i64"

    def check_dist(self, dist):
        return None

    def accepts(self, dist, domain):
        return domain.is_discrete

    def init_params(self, dist, units, rng, init):
        return np.arange(units, dtype=np.int64)

    def check_params(self, dist, value):
        if np.any(value < 0):
            return "indicator values must be non-negative"
        return None

    def log_prob(self, dist, params, x):
        hit = x.astype(np.int64)[:, None] == params[None, :]
        return np.where(hit, 0.0, -np.inf)

    def em_update(self, dist, params, x, flows, pseudocount):
        return params

    def sample(self, dist, params, units, rng):
        return params[units].astype(np.float64)


for _t in (Categorical(), Bernoulli(), Gaussian(), Indicator()):
    register(_t)
