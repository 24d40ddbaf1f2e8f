"""Hidden Chow-Liu Trees (Liu & Van den Broeck, NeurIPS 2021).

A Chow-Liu tree over the observed variables becomes a tree of latent variables z_v with
``num_latents`` states, each emitting its x_v. As a circuit, with the tree rooted at its centre:

* every variable v has an input group ``in{v}`` of ``num_latents`` leaves (p(x_v | z_v));
* a variable without tree children is its input group;
* an inner variable v has a product group ``p{v}`` (aligned, ``num_latents`` units) over its
  children's groups and its own input group, and a dense sum group ``s{v}`` over it
  (``num_latents`` units, p(z_child | z_parent) folded into the weights); the root's sum has
  ``num_root_units`` units (default 1).

This is the layout of PyJuice's ``HCLT`` (product children in the order: tree children, then the
variable's own input), so the same tree gives the same node and edge counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir.builder import CircuitBuilder
from ..ir.circuit import Circuit
from ..ir.diagnostics import DataError, PcirError
from ..ir.distributions import Dist, Domain
from ..ir.verify import verify
from . import chow_liu
from ._common import check_positive, resolve_input


def _tree_from_arg(tree, num_vars: int | None) -> tuple[int, list[tuple[int, int]]]:
    try:
        import networkx as nx

        if isinstance(tree, nx.Graph):
            edges = [(int(a), int(b)) for a, b in tree.edges()]
            n = tree.number_of_nodes() if num_vars is None else num_vars
            return n, edges
    except ImportError:  # pragma: no cover
        pass
    edges = [(int(a), int(b)) for a, b in tree]
    n = (max(max(e) for e in edges) + 1 if edges else 1) if num_vars is None else num_vars
    return n, edges


def hclt(
    data=None,
    num_latents: int = 32,
    *,
    tree: Sequence[tuple[int, int]] | None = None,
    num_vars: int | None = None,
    root: int | None = None,
    input_dist: str | Dist | None = None,
    domain: Domain | None = None,
    tie_inputs: bool = False,
    num_root_units: int = 1,
    seed: int = 0,
    mi_estimator: str = "auto",
    num_bins: int = 32,
    sigma: float = 0.5 / 32,
    chunk_size: int = 64,
    max_rows: int | None = None,
    device: str | None = None,
    mi_pseudocount: float = 0.0,
) -> Circuit:
    """An HCLT circuit, from ``data`` [samples, variables] (Chow-Liu tree learnt here) or ``tree``.

    Args:
        data: integer (or real, for real-valued leaves) array or tensor [N, V]; or a networkx
            tree (then no learning).
        num_latents: units per latent group (PyJuice's ``num_latents``).
        tree: instead of data, the tree's edges (pairs of variable indices) or a networkx graph.
        root: the tree's root variable (default: its centre, as PyJuice).
        input_dist: leaf family, e.g. ``"categorical"`` (default; ``k`` from the data),
            ``"bernoulli"``, ``"binomial"``, ``"discrete_logistic(n=256)"``, ``"gaussian"``.
        domain: the variables' domain (default: from the data and the family).
        tie_inputs: one parameter array shared by every input group.
        mi_estimator, num_bins, sigma, chunk_size, max_rows, device: see
            :func:`pcir.structures.chow_liu.mutual_information`.
        mi_pseudocount: that function's ``pseudocount`` (Laplace smoothing of the exact
            estimator's pairwise counts; 0: the plug-in estimate).

    Parameters are seeded lazy initialisations: building HCLT-512 on 784 variables costs no
    parameter memory until a value is asked for.
    """
    check_positive("num_latents", num_latents)
    check_positive("num_root_units", num_root_units)
    if tree is None and type(data).__module__.startswith("networkx"):
        tree, data = data, None  # hclt(tree_graph, num_latents)
    num_cats = None
    if tree is None:
        if data is None:
            raise PcirError("hclt needs data (to learn a Chow-Liu tree) or a tree")
        x = chow_liu._as_data(data)
        if x.shape[0] < 2:
            raise DataError("hclt needs at least 2 samples to learn a Chow-Liu tree")
        n = x.shape[1]
        if np.all(x == np.floor(x)) and x.min() >= 0:
            num_cats = max(int(x.max()) + 1, 2)
        edges = chow_liu.chow_liu_tree(
            x,
            estimator=mi_estimator,
            num_bins=num_bins,
            sigma=sigma,
            chunk_size=chunk_size,
            max_rows=max_rows,
            device=device,
            seed=seed,
            pseudocount=mi_pseudocount,
        )
    else:
        n, edges = _tree_from_arg(tree, num_vars)
        if len(edges) != n - 1:
            raise PcirError(f"a tree on {n} variables has {n - 1} edges, got {len(edges)}")
        for a, b in edges:
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise PcirError(f"tree edge ({a}, {b}) is not between two of the {n} variables")
    dist, dom = resolve_input(input_dist, num_cats, domain)
    chow_liu.root_tree(n, edges, 0)  # raises unless the edges form one tree
    r = chow_liu.tree_center(n, edges) if root is None else int(root)
    if not 0 <= r < n:
        raise PcirError(f"root variable {r} out of range (0..{n - 1})")
    children = chow_liu.root_tree(n, edges, r)
    return build_hclt(
        children, r, num_latents, dist, dom, tie_inputs=tie_inputs, num_root_units=num_root_units, seed=seed
    )


def _postorder(children: list[list[int]], root: int) -> list[int]:
    out: list[int] = []
    stack = [(root, False)]
    while stack:
        u, done = stack.pop()
        if done:
            out.append(u)
            continue
        stack.append((u, True))
        for c in reversed(children[u]):
            stack.append((c, False))
    return out


def build_hclt(
    children: list[list[int]],
    root: int,
    num_latents: int,
    dist: Dist,
    domain: Domain,
    *,
    tie_inputs: bool = False,
    num_root_units: int = 1,
    seed: int = 0,
) -> Circuit:
    """The HCLT circuit of a rooted tree given as children lists (see the module doc)."""
    n = len(children)
    b = CircuitBuilder(seed=seed)
    b.variables(n, domain)
    b.attrs.update(structure="hclt", num_latents=num_latents)
    region: dict[int, str] = {}
    first_input: str | None = None
    for v in _postorder(children, root):
        name = f"in{v}"
        if tie_inputs and first_input is not None:
            leaf = b.input(v, num_latents, dist, name=name, tie=first_input)
        else:
            leaf = b.input(v, num_latents, dist, name=name)
            first_input = first_input or leaf
        if not children[v] and v != root:
            region[v] = leaf
            continue
        prod = b.product([region[c] for c in children[v]] + [leaf], pattern="aligned", name=f"p{v}")
        units = num_root_units if v == root else num_latents
        region[v] = b.sum([prod], units, name=f"s{v}")
    b.root(region[root])
    return verify(b.build())
