"""Circuit sizes counted the way PyJuice 2.6.3 reports them, for side-by-side tables.

``Circuit.stats()`` counts every PC node (inputs, products and sums) and every edge. PyJuice's
compiled ``TensorCircuit`` reports differently; :func:`pyjuice_counts` reproduces its numbers
from a pcir circuit of the same structure:

* ``num_nodes``: input and sum nodes only (product nodes are its "elements"), plus
  ``max_ele_block_size`` dummy nodes;
* ``num_edges``: product edges (units x children) plus sum edges;
* ``num_sum_params``: sum edges of untied sum groups, plus ``max_node_block_size *
  max_ele_block_size`` dummy parameters;
* a sum over an input group gets a one-child product in between (PyJuice's sums read products);
* its compiler puts every sum in the layer of its deepest child and inserts a pass-through
  (an identity block-diagonal sum plus a one-child product) for each shallower child, adding
  ``units`` sum nodes, ``units * block`` sum edges and parameters and ``units`` product edges.

Block sizes are PyJuice's (the generator's default): sums of one unit have block 1, every
other group ``block_size``.
"""

from __future__ import annotations

from ..ir.circuit import Circuit, InputGroup, ProductGroup, SumGroup
from ..ir.diagnostics import PcirError


def pyjuice_counts(circuit: Circuit, block_size: int) -> dict[str, int]:
    """``{"nodes", "edges", "params"}`` as PyJuice's compiled circuit would report them."""

    def bsize(g) -> int:
        return 1 if isinstance(g, SumGroup) and g.units == 1 else min(block_size, g.units)

    depth: dict[str, int] = {}
    nodes = edges = params = 0
    max_ele = max_node = 0
    seen_params: set[str] = set()
    for g in circuit:
        if isinstance(g, InputGroup):
            depth[g.name] = 0
            nodes += g.units
        elif isinstance(g, ProductGroup):
            for c in g.children:
                if isinstance(circuit.group(c), ProductGroup):
                    raise PcirError(f"'{g.name}': a product over a product has no PyJuice equivalent")
            depth[g.name] = max(depth[c] for c in g.children) + 1
            edges += g.units * len(g.children)
            max_ele = max(max_ele, bsize(g))
        else:
            assert isinstance(g, SumGroup)
            child_depth = []
            for c in g.children:
                cg = circuit.group(c)
                if isinstance(cg, SumGroup):
                    raise PcirError(f"'{g.name}': a sum over a sum has no PyJuice equivalent")
                if isinstance(cg, InputGroup):  # wrapped in a one-child product
                    edges += cg.units
                    max_ele = max(max_ele, bsize(cg))
                    child_depth.append(1)
                else:
                    child_depth.append(depth[c])
            d = max(child_depth)
            depth[g.name] = d
            for c, cd in zip(g.children, child_depth, strict=True):
                if cd < d:  # pass-through sum + one-child product
                    cg = circuit.group(c)
                    nodes += cg.units
                    edges += cg.units * bsize(cg) + cg.units
                    params += cg.units * bsize(cg)
            nodes += g.units
            e = g.num_edges(circuit.num_columns(g.name))
            edges += e
            if g.params not in seen_params:
                seen_params.add(g.params)
                params += e
            max_node = max(max_node, bsize(g))
    return {"nodes": nodes + max_ele, "edges": edges, "params": params + max_node * max_ele}
