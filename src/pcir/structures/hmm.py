"""Hidden Markov models as circuits (the layout of PyJuice's ``HMM``).

Variables x_0..x_{T-1} (the observed tokens, domain ``categorical(vocab_size)``). From the end of
the sequence backwards:

* ``in{T-1}``: ``num_states`` emission leaves p(x_{T-1} | z_{T-1} = i);
* ``s{t}`` (t = T-2..0): a dense sum of ``num_states`` units over the group of step t+1, the
  transitions p(z_{t+1} | z_t = i);
* ``p{t}``: aligned product of ``in{t}`` (emissions of step t) and ``s{t}``;
* root: one unit over ``p0``, the initial distribution p(z_0).

``homogeneous=True`` ties every emission group to one parameter array and every transition sum
to another (one HMM, shared over time); ``False`` gives each step its own.
"""

from __future__ import annotations

from ..ir.builder import CircuitBuilder
from ..ir.circuit import Circuit
from ..ir.distributions import Dist, Domain
from ..ir.verify import verify
from ._common import check_positive, resolve_input


def hmm(
    seq_length: int,
    num_states: int,
    vocab_size: int,
    *,
    homogeneous: bool = True,
    input_dist: str | Dist | None = None,
    domain: Domain | None = None,
    seed: int = 0,
) -> Circuit:
    """An HMM of ``seq_length`` steps, ``num_states`` hidden states and ``vocab_size`` tokens."""
    check_positive("seq_length", seq_length)
    check_positive("num_states", num_states)
    check_positive("vocab_size", vocab_size)
    dist, dom = resolve_input(input_dist, vocab_size, domain)
    b = CircuitBuilder(seed=seed)
    b.variables(seq_length, dom)
    b.attrs.update(structure="hmm", num_states=num_states, homogeneous=bool(homogeneous))
    last = seq_length - 1
    emit = b.input(last, num_states, dist, name=f"in{last}")
    cur = emit
    trans: str | None = None
    for t in range(seq_length - 2, -1, -1):
        tie_e = emit if homogeneous else None
        xs = b.input(t, num_states, dist, name=f"in{t}", tie=tie_e)
        s = b.sum([cur], num_states, name=f"s{t}", tie=trans if homogeneous else None)
        trans = trans or s
        cur = b.product([xs, s], pattern="aligned", name=f"p{t}")
    b.root(b.sum([cur], 1, name="root"))
    return verify(b.build())
