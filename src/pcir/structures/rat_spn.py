"""Random and tensorised sum-product networks (RAT-SPN; Peharz et al., UAI 2019).

The layout of PyJuice's ``RAT_SPN``: every repetition splits the variables at random, recursively,
into ``num_pieces`` parts of (nearly) equal size, ``depth`` times; a part that is not split further
is an aligned product of its variables' input groups under a dense sum of ``num_latents`` units;
each inner part is an aligned product of its parts' sums under a dense sum; the whole set of a
repetition is a product only, and the root is one sum unit over the products of all repetitions.
The ``num_latents`` input units of each variable are shared by all repetitions. The random
splits come from ``seed`` (numpy), so a seed gives one structure.
"""

from __future__ import annotations

import numpy as np

from ..ir.builder import CircuitBuilder
from ..ir.circuit import Circuit
from ..ir.diagnostics import PcirError
from ..ir.distributions import Dist, Domain
from ..ir.verify import verify
from ._common import check_positive, resolve_input


def rat_spn(
    num_vars: int,
    num_latents: int,
    depth: int,
    num_repetitions: int,
    *,
    num_pieces: int = 2,
    input_dist: str | Dist | None = None,
    domain: Domain | None = None,
    seed: int = 0,
) -> Circuit:
    """A RAT-SPN over ``num_vars`` variables (see the module doc)."""
    check_positive("num_vars", num_vars)
    check_positive("num_latents", num_latents)
    check_positive("depth", depth, minimum=0)
    check_positive("num_repetitions", num_repetitions)
    check_positive("num_pieces", num_pieces, minimum=2)
    if num_vars < 2 and depth > 0:
        raise PcirError("rat_spn needs at least 2 variables to split")
    dist, dom = resolve_input(input_dist, None, domain)
    rng = np.random.default_rng(seed)
    b = CircuitBuilder(seed=seed)
    b.variables(num_vars, dom)
    b.attrs.update(structure="rat_spn", num_latents=num_latents, depth=depth, num_repetitions=num_repetitions)
    inputs = [b.input(v, num_latents, dist, name=f"in{v}") for v in range(num_vars)]

    def region(scope: list[int], level: int, rep: int, path: str) -> str:
        """The product group of a part; its caller puts a sum on it (or the root does)."""
        if level >= depth or len(scope) < num_pieces:
            return b.product([inputs[v] for v in sorted(scope)], pattern="aligned", name=f"p{rep}.{path}")
        order = rng.permutation(scope).tolist()
        q, r = divmod(len(order), num_pieces)
        parts, start = [], 0
        for i in range(num_pieces):
            size = q + (i < r)
            parts.append(order[start : start + size])
            start += size
        sums = []
        for i, part in enumerate(parts):
            prod = region(part, level + 1, rep, f"{path}{i}")
            sums.append(b.sum([prod], num_latents, name=f"s{rep}.{path}{i}"))
        return b.product(sums, pattern="aligned", name=f"p{rep}.{path}")

    tops = [region(list(range(num_vars)), 0, rep, "r") for rep in range(num_repetitions)]
    b.root(b.sum(tops, 1, name="root"))
    return verify(b.build())
