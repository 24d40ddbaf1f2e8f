"""Input distributions: the IR-level (numpy, float64) definition of each leaf family.

A distribution family is registered once here with everything the reference side needs:
its parameter shape, default initialisation, which variable domains it accepts, its
log-probability, its EM update from expected counts (flows) and a sampler. The backend keeps a
parallel registry keyed by the same name for its kernels.

Parameter layouts (``units`` nodes in the group):

=================  =================  =====================================================
family             parameter shape    meaning
=================  =================  =====================================================
categorical(k)     (units, k)         probs[u, c] = P(x = c), rows sum to 1
bernoulli          (units,)           p[u] = P(x = 1)
gaussian           (units, 2)         [mean, std]
indicator          (units,) i64       value[u]: node u is 1 iff x == value[u]
binomial(n)        (units,)           p[u]: x ~ Binomial(n, p[u]) on 0..n
discrete_logistic  (units, 2)         [mean, log_scale] of a logistic discretised into n
(n)                                   unit-width bins 0..n-1 (8-bit pixels: n=256)
literal(value)     (0,)               no parameters: every node is 1 iff x == value
=================  =================  =====================================================

``literal`` vs ``indicator``: both are deterministic 0/1 leaves. An indicator group carries one
value *per node* in its (not learnable) parameter array, the way a one-hot encoding of a
categorical variable needs ``k`` nodes on one variable; a literal group has its value in the
family arguments (``literal(value=1)`` is the logical literal x, ``literal(value=0)`` is not-x) and
stores nothing, which is what the logic-circuit formats (PSDD, ``.jpc``) import to.

Protocol beyond log-probability, EM and sampling: ``mode(dist, params, domain)`` gives the most
likely value of each node (MAP queries); discrete families get it by enumerating the domain.
Marginalising a variable is the evaluator's job (a missing value makes every leaf on it 1), so a
family only has to be normalised over its domain.
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

    def mode(self, dist: Dist, params: np.ndarray, domain: Domain) -> np.ndarray:
        """The most likely value of every node within ``domain`` -> float64 [units] (MAP queries)."""
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


def _mode_by_enumeration(dt: DistType, dist: Dist, params: np.ndarray, domain: Domain) -> np.ndarray:
    """argmax over the domain's values of each node's log-probability (ties: smallest value)."""
    if not domain.is_discrete:
        raise VerifyError(f"{dt.name} has no mode on a {domain} variable")
    lp = np.asarray(dt.log_prob(dist, params, np.arange(domain.k, dtype=np.float64)))
    return np.argmax(lp, axis=0).astype(np.float64)


def _int_arg_problem(dist: Dist, key: str, minimum: int) -> str | None:
    """The message for an argument ``key`` that is not an integer >= ``minimum``, else None."""
    v = dist.arg(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        return f"{dist.kind} needs an integer argument {key} >= {minimum}"
    return None


def _normalize_rows(a: np.ndarray) -> np.ndarray:
    """``a`` with each row divided by its sum, in place (``a`` is a fresh array: big tables, e.g.
    an HMM's 2048 x 33279 emissions, are not copied)."""
    s = a.sum(axis=-1, keepdims=True)
    a /= np.where(s > 0, s, 1.0)
    return a


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

    def mode(self, dist, params, domain):
        return np.argmax(params[:, : domain.k], axis=1).astype(np.float64)


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

    def mode(self, dist, params, domain):
        # a tie (p = 0.5) goes to 0, like argmax over [1 - p, p]
        return (params > 0.5).astype(np.float64)


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

    def mode(self, dist, params, domain):
        return np.asarray(params[:, 0], dtype=np.float64).copy()


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

    def mode(self, dist, params, domain):
        return np.asarray(params, dtype=np.float64).copy()


class Binomial:
    """x ~ Binomial(n, p) on 0..n (counts, or pixel intensities with n = 255).

    EM is closed form: ``p = (sum_b f_b x_b + pc * n / 2) / (n * (sum_b f_b + pc))``, i.e. the
    pseudocount adds ``pc`` virtual samples at ``x = n / 2``.
    """

    name = "binomial"
    arg_names = ("n",)
    learnable = True

    def param_shape(self, dist, units):
        return (units,)

    def param_dtype(self, dist):
        return "f64"

    def check_dist(self, dist):
        return _int_arg_problem(dist, "n", 1)

    def accepts(self, dist, domain):
        return domain.is_discrete and domain.k <= int(dist.arg("n")) + 1

    def init_params(self, dist, units, rng, init):
        if init == "uniform":
            return np.full((units,), 0.5)
        return rng.uniform(0.1, 0.9, size=(units,))

    def check_params(self, dist, value):
        if np.any(value < 0) or np.any(value > 1) or not np.all(np.isfinite(value)):
            return "binomial probabilities must lie in [0, 1]"
        return None

    def log_prob(self, dist, params, x):
        n = int(dist.arg("n"))
        k = x[:, None]
        log_choose = _log_choose(n, x)[:, None]
        p = params[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            # x log p and (n - x) log(1 - p) with 0 * log 0 = 0 at the ends
            a = np.where(k > 0, k * np.log(p), 0.0)
            b = np.where(k < n, (n - k) * np.log1p(-p), 0.0)
        out = log_choose + a + b
        return np.where((k < 0) | (k > n), -np.inf, out)

    def em_update(self, dist, params, x, flows, pseudocount):
        n = int(dist.arg("n"))
        total = flows.sum(axis=0)
        s1 = (flows * x[:, None]).sum(axis=0)
        denom = n * (total + pseudocount)
        with np.errstate(invalid="ignore", divide="ignore"):
            upd = (s1 + pseudocount * n / 2.0) / denom
        return np.where(denom > 0, upd, params)

    def sample(self, dist, params, units, rng):
        return rng.binomial(int(dist.arg("n")), params[units]).astype(np.float64)

    def mode(self, dist, params, domain):
        return _mode_by_enumeration(self, dist, params, domain)


def _log_choose(n: int, x: np.ndarray) -> np.ndarray:
    xs = np.clip(x, 0, n)
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    return lg(n + 1.0) - lg(xs + 1.0) - lg(n - xs + 1.0)


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


_PI_OVER_SQRT3 = math.pi / math.sqrt(3.0)


class DiscreteLogistic:
    """A logistic(mean, scale) on the real line discretised into ``n`` unit-width bins.

    Value ``c`` in 0..n-1 owns the interval [c - 0.5, c + 0.5], the first and last bins extend to
    -inf and +inf (as in PixelCNN++), so the ``n`` probabilities sum to 1 exactly. Parameters are
    ``[mean, log_scale]`` in units of bins (8-bit pixels: n = 256, mean in [0, 255]).

    EM has no closed form; the update is moment matching (documented approximation): mean and
    variance of the flow-weighted bin values, ``scale = std * sqrt(3) / pi`` (a logistic's std is
    ``scale * pi / sqrt(3)``), std floored at ``min_std`` (default 0.01 bins); the pseudocount adds
    ``pc`` virtual samples drawn from the old parameters. It ignores the discretisation, which is
    exact in the limit of a scale much wider than one bin.
    """

    name = "discrete_logistic"
    arg_names = ("n", "min_std")
    learnable = True

    def param_shape(self, dist, units):
        return (units, 2)

    def param_dtype(self, dist):
        return "f64"

    def check_dist(self, dist):
        problem = _int_arg_problem(dist, "n", 2)
        if problem:
            return problem
        ms = dist.arg("min_std", 0.01)
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not ms > 0:
            return "discrete_logistic's min_std must be a number > 0"
        return None

    def accepts(self, dist, domain):
        return domain.is_discrete and domain.k <= int(dist.arg("n"))

    def init_params(self, dist, units, rng, init):
        n = int(dist.arg("n"))
        p = np.empty((units, 2))
        # centred, spread over the range: std n/4 (two standard deviations cover the bins)
        p[:, 0] = (n - 1) / 2.0 if init == "uniform" else rng.normal((n - 1) / 2.0, n / 4.0, size=units)
        jitter = 0.0 if init == "uniform" else rng.uniform(-0.1, 0.0, size=units)
        p[:, 1] = math.log(n / 4.0 / _PI_OVER_SQRT3) + jitter
        return p

    def check_params(self, dist, value):
        if not np.all(np.isfinite(value)):
            return "discrete_logistic parameters must be finite"
        return None

    def log_prob(self, dist, params, x):
        n = int(dist.arg("n"))
        mu, s = params[:, 0][None, :], np.exp(params[:, 1])[None, :]
        c = x[:, None]
        lo = np.where(c <= 0, -np.inf, (c - 0.5 - mu) / s)
        hi = np.where(c >= n - 1, np.inf, (c + 0.5 - mu) / s)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            # log(sigmoid(hi) - sigmoid(lo)), reflected to the lower tail when the bin lies above
            # the mean so that the difference of two numbers close to 1 never cancels
            flip = (lo + hi) > 0
            a = np.where(flip, -hi, lo)
            b = np.where(flip, -lo, hi)
            lb = _log_sigmoid(b)
            out = lb + np.log1p(-np.exp(_log_sigmoid(a) - lb))
        out = np.where(np.isnan(out), -np.inf, out)
        return np.where((c < 0) | (c > n - 1), -np.inf, out)

    def em_update(self, dist, params, x, flows, pseudocount):
        mu0 = params[:, 0]
        sd0 = np.exp(params[:, 1]) * _PI_OVER_SQRT3
        w = flows.sum(axis=0) + pseudocount
        s1 = (flows * x[:, None]).sum(axis=0) + pseudocount * mu0
        s2 = (flows * x[:, None] ** 2).sum(axis=0) + pseudocount * (sd0**2 + mu0**2)
        safe = np.where(w > 0, w, 1.0)
        mu = s1 / safe
        var = s2 / safe - mu**2
        min_std = float(dist.arg("min_std", 0.01))
        sd = np.sqrt(np.maximum(var, min_std**2))
        log_scale = np.log(sd / _PI_OVER_SQRT3)
        return np.stack([np.where(w > 0, mu, mu0), np.where(w > 0, log_scale, params[:, 1])], axis=1)

    def sample(self, dist, params, units, rng):
        n = int(dist.arg("n"))
        u = rng.random(len(units)).clip(1e-300, 1.0 - 1e-16)
        z = params[units, 0] + np.exp(params[units, 1]) * (np.log(u) - np.log1p(-u))
        return np.clip(np.floor(z + 0.5), 0, n - 1).astype(np.float64)

    def mode(self, dist, params, domain):
        return _mode_by_enumeration(self, dist, params, domain)


class Literal:
    """A fixed literal: every node of the group is 1 iff the variable equals ``value``.

    The value lives in the family arguments (``literal(value=0)`` is the negative literal of a
    binary variable), so the group stores no numbers: its parameter has shape (units, 0), which
    only records how many nodes there are. Not learnable.
    """

    name = "literal"
    arg_names = ("value",)
    learnable = False

    def param_shape(self, dist, units):
        return (units, 0)

    def param_dtype(self, dist):
        return "i64"

    def check_dist(self, dist):
        return _int_arg_problem(dist, "value", 0)

    def accepts(self, dist, domain):
        return domain.is_discrete and int(dist.arg("value")) < domain.k

    def init_params(self, dist, units, rng, init):
        return np.zeros((units, 0), dtype=np.int64)

    def check_params(self, dist, value):
        if value.ndim != 2 or value.shape[1] != 0:
            return "literal parameters must have shape (units, 0)"
        return None

    def log_prob(self, dist, params, x):
        hit = x.astype(np.int64) == int(dist.arg("value"))
        return np.repeat(np.where(hit, 0.0, -np.inf)[:, None], params.shape[0], axis=1)

    def em_update(self, dist, params, x, flows, pseudocount):
        return params

    def sample(self, dist, params, units, rng):
        return np.full(len(units), float(dist.arg("value")))

    def mode(self, dist, params, domain):
        return np.full(params.shape[0], float(dist.arg("value")))


for _t in (Categorical(), Bernoulli(), Gaussian(), Indicator(), Binomial(), DiscreteLogistic(), Literal()):
    register(_t)
