"""Structure generators: HCLT, PD, RAT-SPN and HMM circuits built as node groups.

Every generator returns a verified :class:`pcir.ir.Circuit` whose groups are whole regions
(``num_latents`` units each, never one group per PC node) and whose parameters are seeded lazy
initialisations, so the largest benchmark structures build in about a second. Sizes follow
PyJuice 2.6.3's generators of the same name (see ``docs/structures.md`` and
:func:`pcir.structures.counts.pyjuice_counts`).
"""

from .chow_liu import chow_liu_tree, maximum_spanning_tree, mutual_information, tree_center
from .counts import pyjuice_counts
from .hclt import build_hclt, hclt
from .hmm import hmm
from .pd import pd
from .rat_spn import rat_spn

__all__ = [
    "build_hclt",
    "chow_liu_tree",
    "hclt",
    "hmm",
    "maximum_spanning_tree",
    "mutual_information",
    "pd",
    "pyjuice_counts",
    "rat_spn",
    "tree_center",
]
