"""Small utility passes: dead-code removal and stripping pass annotations."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.circuit import Circuit
from .base import Pass, register_pass
from .rewrite import live_groups

ANNOTATIONS = ("bs", "layer", "slot", "fuse", "part", "real_edges")
CIRCUIT_ANNOTATIONS = ("pipeline", "buffer_nodes")


def remove_dead(circuit: Circuit) -> Circuit:
    """Drop groups unreachable from the roots and parameters no group uses."""
    groups = dict(circuit.groups)
    live = live_groups(groups, circuit.roots)
    used = {getattr(g, "params", None) for n, g in groups.items() if n in live}
    if len(live) == len(groups) and used >= set(circuit.params):
        return circuit
    return circuit.replace(
        groups=[g for n, g in groups.items() if n in live],
        params={k: p for k, p in circuit.params.items() if k in used},
    )


@register_pass
@dataclass(frozen=True)
class RemoveDead(Pass):
    """Remove groups that no root reaches and parameters that no group uses."""

    name = "remove-dead"
    summary = "remove groups unreachable from the roots and unused parameters"

    def apply(self, circuit: Circuit) -> Circuit:
        return remove_dead(circuit)


@register_pass
@dataclass(frozen=True)
class StripAnnotations(Pass):
    """Remove the annotations the other passes write (bs, layer, slot, fuse, part, ...)."""

    name = "strip-annotations"
    summary = "remove pass annotations (bs, layer, slot, fuse, part, real_edges, pipeline)"

    def apply(self, circuit: Circuit) -> Circuit:
        none = dict.fromkeys(ANNOTATIONS)
        groups = [g.with_attrs(**none) if any(k in none for k, _ in g.attrs) else g for g in circuit]
        attrs = tuple((k, v) for k, v in circuit.attrs if k not in CIRCUIT_ANNOTATIONS)
        return circuit.replace(groups=groups, attrs=attrs)
