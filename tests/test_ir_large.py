"""A big circuit (784 variables, 440 units a group, HCLT-like: ~860K nodes, ~150M edges) builds,
verifies, prints and parses back: groups and lazily initialised parameters keep it to a few
thousand graph nodes and no big arrays. Only that it works is asserted; speed lives in bench/.
"""

from __future__ import annotations

from pcir.ir import CircuitBuilder, Dist, Domain, parse_ir, print_ir, verify

NUM_VARS = 784
UNITS = 440


def hclt_like(num_vars: int = NUM_VARS, units: int = UNITS):
    """A hidden Chow-Liu-tree shape over a binary-heap tree of the variables: at each tree node,
    an aligned product of the variable's leaves and the messages of its children; each message is
    a dense units x units sum; a 1-unit root sum on top."""
    b = CircuitBuilder()
    b.variables(num_vars, Domain.categorical(256))
    children: dict[int, list[int]] = {v: [] for v in range(num_vars)}
    for v in range(1, num_vars):
        children[(v - 1) // 2].append(v)
    message: dict[int, str] = {}
    for v in reversed(range(num_vars)):
        leaf = b.input(v, units, Dist.make("categorical", k=256))
        node = b.product([leaf] + [message[c] for c in children[v]]) if children[v] else leaf
        if v == 0:
            b.root(b.sum([node], 1))
        else:
            message[v] = b.sum([node], units)
    return b.build()


def test_big_circuit_builds_verifies_prints_and_parses():
    c = verify(hclt_like())
    stats = c.stats()
    internal = sum(1 for v in range(NUM_VARS) if 2 * v + 1 < NUM_VARS)
    assert stats["nodes"] == (NUM_VARS + internal + NUM_VARS - 1) * UNITS + 1
    assert stats["edges"] > 150_000_000
    assert stats["groups"] == 2 * NUM_VARS + internal
    text = print_ir(c, summarize=True)
    assert text.count("\n%") == stats["groups"]
    # lazily initialised parameters print exactly (init + seed), so this dump parses back
    assert parse_ir(text) == c
